"""The machine and software a measurement was taken on, as flat record fields.

A latency figure means nothing without the machine: INT8 speed-ups on x86 depend on whether the
CPU has AVX-512 VNNI (one-instruction u8 x s8 dot products) or AMX, and FP32 speed on AVX-512,
so every latency record carries the CPU model, its core count, the ISA flags that matter for
these kernels, and the versions of torch / ONNX Runtime and torch's quantized engine.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["ISA_FLAGS", "hardware_info", "describe"]

#: /proc/cpuinfo flag -> record column. AMX is reported if any of its three flags is present.
ISA_FLAGS: dict[str, str] = {
    "avx2": "isa_avx2",
    "avx512f": "isa_avx512f",
    "avx512_vnni": "isa_avx512_vnni",
    "avx512_bf16": "isa_avx512_bf16",
    "amx": "isa_amx",
}


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo; ('', empty) where it does not exist (macOS, Windows)."""
    path = Path("/proc/cpuinfo")
    model, flags = "", set()
    try:
        text = path.read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
        if model and flags:
            break
    return model, flags


@functools.lru_cache(maxsize=1)
def _static_info() -> dict[str, Any]:
    import torch

    model, flags = _cpuinfo()
    info: dict[str, Any] = {
        "cpu_model": model or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    # Cores this process may run on (cgroups / taskset can give fewer than os.cpu_count()).
    info["cpu_affinity"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for flag, column in ISA_FLAGS.items():
        info[column] = any(f.startswith("amx") for f in flags) if flag == "amx" else flag in flags
    info["torch_cpu_capability"] = _safe(lambda: torch.backends.cpu.get_cpu_capability())
    info["torch_version"] = torch.__version__
    try:
        import onnxruntime

        info["onnxruntime_version"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime_version"] = None
    info["python_version"] = platform.python_version()
    info["os"] = f"{platform.system()} {platform.release()}"
    info["gpu"] = _safe(lambda: torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    return info


def _safe(fn: Any) -> Any:
    try:
        return fn()
    except Exception:  # a probe must never break a measurement
        return None


def hardware_info() -> dict[str, Any]:
    """Flat fields describing this machine and software, for every latency record.

    ``cpu_model``, ``cpu_count``, ``cpu_affinity``, ``isa_avx2``, ``isa_avx512f``,
    ``isa_avx512_vnni``, ``isa_avx512_bf16``, ``isa_amx`` (bools from /proc/cpuinfo; False where it
    cannot be read), ``torch_cpu_capability`` (the SIMD level torch dispatches to),
    ``torch_version``, ``quantized_engine`` (``torch.backends.quantized.engine`` now: the INT8
    kernels in use), ``onnxruntime_version``, ``python_version``, ``os``, ``gpu``.
    """
    import torch

    info = dict(_static_info())
    # Read each time: the engine is process state that loading an INT8 model may change.
    info["quantized_engine"] = torch.backends.quantized.engine
    return info


def describe(info: dict[str, Any] | None = None) -> str:
    """One line for a report header, e.g. ``AMD EPYC, 2 cores (avx2 avx512f avx512_vnni), torch 2.14.1``."""
    info = info or hardware_info()
    isa = " ".join(flag for flag, column in ISA_FLAGS.items() if info.get(column))
    ort = f", onnxruntime {info['onnxruntime_version']}" if info.get("onnxruntime_version") else ""
    return (f"{info['cpu_model']}, {info['cpu_count']} cores ({isa or 'no AVX2'}), "
            f"torch {info['torch_version']} (quantized engine {info['quantized_engine']}){ort}, "
            f"Python {info['python_version']} on {info['os']}"
            f"{', GPU ' + info['gpu'] if info.get('gpu') else ''}")
