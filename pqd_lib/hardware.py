"""The machine and software a measurement was taken on, as flat record fields.

A latency or INT8 figure means nothing without the machine: INT8 speed-ups on x86 depend on whether
the CPU has AVX-512 VNNI (one-instruction u8 x s8 dot products into 32-bit sums) or AMX, FP32 speed
on AVX-512, and even INT8 *correctness* depends on it: without VNNI, the u8 x s8 kernels of torch's
x86 engine add pairs of products in saturating 16-bit registers (``vpmaddubsw``), so a model with
full-range (0..255) activations computes wrong sums (see :mod:`pqd_lib.stages.quantize`).

The CPU's features come from ``torch.cpu.get_capabilities()`` (cpuinfo inside torch: the same
detection the kernels dispatch on, on every OS), not from parsing ``/proc/cpuinfo`` (Linux only).
Records group by :func:`capability_class`, e.g. ``"x86-avx2"`` or ``"x86-avx512-vnni"``.
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Mapping
from typing import Any

__all__ = ["ISA_FLAGS", "CAPABILITY_CLASSES", "capabilities", "capability_class", "record_capability_class",
           "has_int8_vnni", "hardware_info", "describe"]

#: ``torch.cpu.get_capabilities()`` key -> record column (names kept from the first records).
ISA_FLAGS: dict[str, str] = {
    "avx2": "isa_avx2",
    "avx512_f": "isa_avx512f",
    "avx512_vnni": "isa_avx512_vnni",
    "avx_vnni": "isa_avx_vnni",
    "avx512_bf16": "isa_avx512_bf16",
    "amx_int8": "isa_amx",
}

#: x86 capability classes, most capable first: the first whose capability the CPU has names it.
#: They follow what decides INT8 kernels on x86: AMX tiles, AVX-512 VNNI (u8 x s8 into 32 bits:
#: exact for any uint8 activations), AVX-512 without VNNI and AVX2 (16-bit pair sums that saturate).
CAPABILITY_CLASSES: tuple[tuple[str, str], ...] = (
    ("amx_int8", "x86-amx"),
    ("avx512_vnni", "x86-avx512-vnni"),
    ("avx512_f", "x86-avx512"),
    ("avx2", "x86-avx2"),
)
_X86 = ("x86_64", "x86", "amd64", "i386", "i686")


@functools.lru_cache(maxsize=1)
def capabilities() -> dict[str, Any]:
    """This CPU's features as a plain dict, from ``torch.cpu.get_capabilities()``; ``{}`` where torch lacks it."""
    import torch

    try:
        return dict(torch.cpu.get_capabilities())
    except Exception:  # an older torch or an unknown platform: nothing known
        return {}


def _is_x86(caps: Mapping[str, Any]) -> bool:
    return str(caps.get("architecture", "")).lower() in _X86


def capability_class(caps: Mapping[str, Any] | None = None) -> str:
    """The CPU's class for grouping records and verdicts: ``"x86-amx"``, ``"x86-avx512-vnni"``,
    ``"x86-avx512"``, ``"x86-avx2"``, ``"x86"`` (older), or the architecture name elsewhere
    (e.g. ``"arm64"``); ``"unknown"`` without capabilities.

    AVX-VNNI (the 256-bit client-CPU form) does not lift a CPU out of ``"x86-avx2"``: torch's x86
    engine only routes INT8 convolutions to its VNNI (oneDNN) kernels on AVX-512 VNNI.
    """
    caps = capabilities() if caps is None else caps
    if not caps:
        return "unknown"
    if not _is_x86(caps):
        return str(caps.get("architecture") or "unknown").lower()
    return next((name for key, name in CAPABILITY_CLASSES if caps.get(key)), "x86")


def record_capability_class(record: Mapping[str, Any]) -> str:
    """The capability class of a record: its ``cpu_capability_class``, or derived from its ``isa_*`` columns
    (records written before the class existed); ``"unknown"`` when neither is there."""
    known = record.get("cpu_capability_class")
    if isinstance(known, str) and known:
        return known
    if not any(column in record for column in ISA_FLAGS.values()):
        return "unknown"
    caps = {key: bool(record.get(column)) for key, column in ISA_FLAGS.items()}
    return capability_class({"architecture": "x86_64", **caps})


def has_int8_vnni(caps: Mapping[str, Any] | None = None) -> bool:
    """True where torch's x86 INT8 kernels sum u8 x s8 products exactly for any uint8 input: AVX-512 VNNI
    (every AMX CPU has it) -- and on non-x86 CPUs, whose kernels have no 16-bit pair sums. False on
    x86 without it (AVX2, AVX-512 without VNNI) and where nothing is known."""
    caps = capabilities() if caps is None else caps
    if not caps:
        return False
    if not _is_x86(caps):
        return True
    return bool(caps.get("avx512_vnni") or caps.get("amx_int8"))


@functools.lru_cache(maxsize=1)
def _static_info() -> dict[str, Any]:
    import torch

    caps = capabilities()
    info: dict[str, Any] = {
        "cpu_model": caps.get("cpu_name") or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    # Cores this process may run on (cgroups / taskset can give fewer than os.cpu_count()).
    info["cpu_affinity"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for key, column in ISA_FLAGS.items():
        info[column] = bool(caps.get(key, False))
    info["cpu_capability_class"] = capability_class(caps)
    info["int8_vnni"] = has_int8_vnni(caps)
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
    """Flat fields describing this machine and software, for every latency and INT8 record.

    ``cpu_model`` (cpuinfo's name), ``cpu_count``, ``cpu_affinity``, ``isa_avx2``, ``isa_avx512f``,
    ``isa_avx512_vnni``, ``isa_avx_vnni``, ``isa_avx512_bf16``, ``isa_amx`` (bools from
    ``torch.cpu.get_capabilities()``), ``cpu_capability_class`` (:func:`capability_class`: what
    records and verdicts group by), ``int8_vnni`` (:func:`has_int8_vnni`: full-range INT8 is exact
    here), ``torch_cpu_capability`` (the SIMD level torch dispatches to), ``torch_version``,
    ``quantized_engine`` (``torch.backends.quantized.engine`` now: the INT8 kernels in use),
    ``onnxruntime_version``, ``python_version``, ``os``, ``gpu``.
    """
    import torch

    info = dict(_static_info())
    # Read each time: the engine is process state that loading an INT8 model may change.
    info["quantized_engine"] = torch.backends.quantized.engine
    return info


def describe(info: dict[str, Any] | None = None) -> str:
    """One line for a report header, e.g. ``AMD EPYC, 2 cores (x86-avx512-vnni: avx2 avx512_f avx512_vnni), torch 2.14.1``."""
    info = info or hardware_info()
    isa = " ".join(key for key, column in ISA_FLAGS.items() if info.get(column))
    ort = f", onnxruntime {info['onnxruntime_version']}" if info.get("onnxruntime_version") else ""
    return (f"{info['cpu_model']}, {info['cpu_count']} cores ({record_capability_class(info)}: {isa or 'no AVX2'}), "
            f"torch {info['torch_version']} (quantized engine {info['quantized_engine']}){ort}, "
            f"Python {info['python_version']} on {info['os']}"
            f"{', GPU ' + info['gpu'] if info.get('gpu') else ''}")
