"""Deploy artifacts: save a pipeline's final model, load it in a fresh process without pickled code.

A deploy file is one ``torch.save`` of plain data -- architecture spec, form (``"fp32"`` or
``"int8"``), quantization settings, state dict (quantized tensors included) and metadata -- and
:func:`load_deploy` reads it with ``torch.load(..., weights_only=True)``, so loading runs no code
from the file. The module is rebuilt instead:

* FP32: ``models.build(**arch)`` (or the caller's `build_fn`), then ``load_state_dict``; pruning
  masks were folded into the weights before saving, so the zeros are in the weights themselves.
* INT8 of the FX reference engine: the same FP32 architecture is put through the same FX prepare/convert as stage Q
  (:func:`pqd_lib.stages.quantize.int8_skeleton`, same backend and activation range), which gives
  a converted module of identical structure, and the INT8 state dict (quantized weights, scales,
  zero points, the input quantizer's scale) is loaded into it.

An INT8 file records the activation range the model was trained with (``quantize.reduce_range``,
taken from the converted model itself, :func:`pqd_lib.stages.quantize.int8_settings`). A
full-range (0..255) model computes wrong outputs on an x86 CPU without AVX-512 VNNI (its kernels
saturate 16-bit sums; see :mod:`pqd_lib.stages.quantize`), so :func:`load_deploy` refuses it there
in one line naming the fix, unless the caller passes ``allow_saturation=True``.

Networks outside the registry (e.g. a user's model given to ``pqd_lib.compress``) cannot be rebuilt
from a name: pass ``build_fn`` returning a fresh FP32 instance of the architecture.
This is the loader of the latency measurement's child process; its signature is kept stable.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import train
from ._atomic import atomic_path
from .stages import prune as prune_stage
from .stages import quantize as quantize_stage

__all__ = ["FORMAT", "DeployError", "save_deploy", "load_deploy", "read_deploy_info", "check_range",
           "ArtifactError", "model_form", "save_artifact", "load_artifact", "artifact_form"]

#: Format tag inside every deploy file; bumped if the layout changes.
FORMAT = "pqd-deploy/1"
_FORMS = ("fp32", "int8")


class DeployError(ValueError):
    """A deploy file is missing, unreadable, of another architecture, or does not fit the model."""


def _describe(arch: dict[str, Any]) -> str:
    extra = ", ".join(f"{k} {v}" for k, v in arch.items() if k != "name")
    return f"{arch.get('name')}" + (f" ({extra})" if extra else "")


def save_deploy(model: nn.Module, path: str | os.PathLike, *, arch: dict[str, Any], form: str,
                backend: str | None = None, reduce_range: bool | None = None,
                input_shape: tuple[int, ...] = (1, 3, 32, 32), metadata: dict[str, Any] | None = None) -> Path:
    """Atomically write `model`'s deploy file (plain tensors and data only); return its path.

    Args:
        model: the deploy form from the pipeline: an FP32 module (masks are left out; the zeros are
            in the weights) or a converted INT8 module.
        arch: the architecture spec, e.g. ``train.arch_spec(cfg)`` = ``{"name", "num_classes", "width"}``.
        form: ``"fp32"`` or ``"int8"``; must match `model`.
        backend, reduce_range: the quantized engine and activation range the INT8 model was made
            with; None (the default) takes those :func:`~pqd_lib.stages.quantize.convert` recorded
            on the model. :func:`load_deploy` rebuilds the same structure with them and checks the
            range against the CPU it loads on. Ignored for FP32.
        input_shape: an input shape for FX tracing when rebuilding (values irrelevant).
        metadata: plain values (str, numbers, lists, dicts) stored alongside, e.g. accuracy, run id.

    Raises:
        DeployError: `form` unknown or not the model's (an INT8 file needs a converted model), or an
            INT8 model's range/backend unknown or contradicting what its conversion recorded.
    """
    if form not in _FORMS:
        raise DeployError(f"form: {form!r} is not allowed; choose 'fp32' or 'int8'")
    is_int8 = quantize_stage.is_int8(model)
    if quantize_stage.is_fake_quant(model):
        raise DeployError("save_deploy: the model is QAT-prepared (fake-quant); convert it first "
                          "(pipeline.deploy_form or stages.quantize.convert)")
    if is_int8 != (form == "int8"):
        raise DeployError(f"save_deploy: form {form!r} but the model is {'INT8' if is_int8 else 'FP32'}")
    if is_int8 and (quantize_stage.int8_settings(model) or {}).get("engine") == "pt2e":
        raise DeployError("save_deploy: a PT2E INT8 graph (quantize.engine pt2e) is saved as a torch.export "
                          "program (deploy.save_artifact) or ONNX (measure.onnx_runtime.export_qat_onnx)")
    quantize = {"backend": None, "reduce_range": None}
    if is_int8:
        quantize = _int8_settings(model, path, backend=backend, reduce_range=reduce_range)
    state = prune_stage.without_masks(model.state_dict())
    payload = {"format": FORMAT, "arch": dict(arch), "form": form,
               "quantize": {**quantize, "input_shape": [int(s) for s in input_shape]},
               "state_dict": state, "metadata": dict(metadata or {}), "torch_version": str(torch.__version__)}
    return train.atomic_save(payload, path)


def _int8_settings(model: nn.Module, path: str | os.PathLike, *, backend: str | None,
                   reduce_range: bool | None) -> dict[str, Any]:
    """The backend and activation range to store for an INT8 model: what its conversion recorded,
    or the caller's (which must agree with the record)."""
    recorded = quantize_stage.int8_settings(model) or {}
    given = {"backend": backend, "reduce_range": None if reduce_range is None else bool(reduce_range)}
    out = {}
    for key, value in given.items():
        known = recorded.get(key)
        if value is not None and known is not None and value != known:
            raise DeployError(f"{path}: {key}={value!r} given, but the INT8 model was converted with {key}={known!r}")
        out[key] = value if value is not None else known
        if out[key] is None:
            raise DeployError(f"{path}: the INT8 model does not record its {key} (not made by "
                              f"stages.quantize.convert); pass {key}= to save_deploy")
    return out


def check_range(path: str | os.PathLike, *, allow_saturation: bool = False) -> None:
    """Raise :class:`DeployError` if the deploy file is a full-range INT8 model that this CPU computes wrongly.

    One line naming the file and the fix (retrain with ``quantize.reduce_range=true`` or run on a
    CPU with AVX-512 VNNI); `allow_saturation` skips the check. FP32 files always pass.
    """
    payload = _read(Path(path))
    _check_payload_range(payload, Path(path), allow_saturation)


def _check_payload_range(payload: dict[str, Any], path: Path, allow_saturation: bool) -> None:
    if payload["form"] != "int8":
        return
    q = payload.get("quantize") or {}
    try:
        quantize_stage.check_activation_range(bool(q.get("reduce_range")), q.get("backend") or "x86",
                                              allow_saturation=allow_saturation, where=str(path))
    except quantize_stage.ActivationRangeError as exc:
        raise DeployError(str(exc)) from None


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DeployError(f"{path}: deploy file not found")
    try:
        with warnings.catch_warnings():
            # Restoring quantized tensors goes through torch's own TypedStorage path.
            warnings.filterwarnings("ignore", message=r"TypedStorage is deprecated")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or corrupt files raise several types
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        # weights_only refusals put the reason on a later line.
        reason = next((ln for ln in lines if ln.startswith("WeightsUnpickler error")), lines[0] if lines else "")
        raise DeployError(f"{path}: not a readable pqd deploy file ({type(exc).__name__}: {reason[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("form") not in _FORMS:
        raise DeployError(f"{path}: not a pqd deploy file (expected format {FORMAT!r})")
    return payload


def read_deploy_info(path: str | os.PathLike) -> dict[str, Any]:
    """The deploy file's arch, form, quantize settings and metadata, without building the model."""
    payload = _read(Path(path))
    return {k: payload.get(k) for k in ("arch", "form", "quantize", "metadata", "torch_version")}


def load_deploy(path: str | os.PathLike, *, build_fn: Callable[[], nn.Module] | None = None,
                arch: dict[str, Any] | None = None, allow_saturation: bool = False) -> nn.Module:
    """Rebuild the deploy model saved by :func:`save_deploy` (eval mode, CPU); no code is unpickled.

    Args:
        path: the deploy file.
        build_fn: returns a fresh FP32 instance of the architecture; needed for networks outside
            ``pqd_lib.models`` (registry models are rebuilt from the file's ``arch``).
        arch: the architecture the caller expects; a file of another architecture is an error.
        allow_saturation: load a full-range INT8 model even on a CPU without AVX-512 VNNI, whose
            kernels then give wrong outputs wherever 16-bit pair sums saturate.

    Raises:
        DeployError: missing or corrupt file, another architecture than `arch`, a non-registry
            architecture without `build_fn`, or a state dict that does not fit the built model
            (the message names the path and both architectures), or a full-range INT8 model on
            a CPU without AVX-512 VNNI (the message names the fix).
    """
    from . import models

    path = Path(path)
    payload = _read(path)
    _check_payload_range(payload, path, allow_saturation)
    saved = payload.get("arch") or {}
    if arch is not None and dict(arch) != saved:
        raise DeployError(f"{path}: deploy file is for {_describe(saved)}, but {_describe(dict(arch))} was expected")
    model = models.rebuild(saved, build_fn)
    if model is None:
        raise DeployError(f"{path}: architecture {_describe(saved)} is not in pqd_lib.models; "
                          "pass build_fn returning a fresh instance of it")
    built = _describe(arch if arch is not None else train.arch_spec(model))
    if payload["form"] == "int8":
        q = payload.get("quantize") or {}
        try:
            # The range was checked above (with the path in the message).
            model = quantize_stage.int8_skeleton(model, backend=q.get("backend") or "x86",
                                                 reduce_range=bool(q.get("reduce_range")),
                                                 input_shape=tuple(q.get("input_shape", (1, 3, 32, 32))),
                                                 allow_saturation=True)
        except quantize_stage.BackendError as exc:
            raise DeployError(f"{path}: {exc}") from None
    state = payload["state_dict"]
    # Quantized modules load weights of any shape without complaint: compare shapes first.
    mismatch = _first_mismatch(_shapes(model.state_dict()), _shapes(state))
    if mismatch is None:
        try:
            model.load_state_dict(state)
        except (RuntimeError, KeyError) as exc:
            mismatch = str(exc).splitlines()[0][:160]
    if mismatch is not None:
        raise DeployError(f"{path}: deploy file holds {_describe(saved)} and does not fit the built model {built} "
                          f"({mismatch})")
    return model.cpu().eval()


def _shapes(state: dict[str, Any]) -> dict[str, Any]:
    def shape(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return tuple(v.shape)
        if isinstance(v, (tuple, list)):
            return tuple(shape(x) for x in v)
        return type(v).__name__

    return {k: shape(v) for k, v in state.items()}


def _first_mismatch(expected: dict[str, Any], got: dict[str, Any]) -> str | None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        return f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}"
    for k in expected:
        if expected[k] != got[k]:
            return f"{k}: shape {got[k]} in the file, {expected[k]} in the model"
    return None


# ---------------------------------------------------------------------------
# Latency artifacts: what a latency child process loads (moved from measure/latency.py)
# ---------------------------------------------------------------------------
#: An FP32 model with at least this fraction of exactly-zero conv/linear weights is "fp32-sparse"
#: (freshly initialised weights have none; any pruning gives far more).
SPARSE_FORM_THRESHOLD = 0.01


class ArtifactError(ValueError):
    """A model artifact is missing, unreadable or of an unknown kind; the message names the path."""


def model_form(model: nn.Module) -> str:
    """``"int8"`` (quantized conv/linear weights), ``"fp32-sparse"`` (>= 1 % exact-zero weights) or ``"fp32"``."""
    from .measure.proxies import weight_sparsity

    if quantize_stage.is_int8(model):
        return "int8"
    return "fp32-sparse" if weight_sparsity(model) >= SPARSE_FORM_THRESHOLD else "fp32"


def save_artifact(model: nn.Module, path: str | os.PathLike, *, arch: dict[str, Any] | None = None,
                  backend: str | None = None, reduce_range: bool | None = None,
                  input_shape: tuple[int, ...] = (3, 32, 32)) -> Path:
    """Save `model` so that a latency child can load it; return the path actually written.

    * With `arch` (``{"name", "num_classes", "width"}`` of ``pqd_lib.models``), or a model carrying
      ``pqd_arch``: a pqd deploy file (``pqd_lib.deploy.save_deploy``), FP32 or INT8. For INT8,
      `backend`/`reduce_range` are those it was quantized with (default: what
      ``stages.quantize.convert`` recorded on the model; the deploy file stores them).
    * FP32 without an architecture name: a ``torch.export`` program; the suffix becomes ``.pt2``.
      It loads anywhere without pickled code, but it is *not* the same program as the eager module:
      measured 15-60 % slower than eager for ResNet-18 CIFAR (decomposed aten graph), so
      :func:`measure_latency` does not use it for the modules it is given (see there).
    * A PT2E INT8 graph (``quantize.engine: pt2e``), with or without `arch`: its ``torch.export``
      program (``.pt2``, :func:`pqd_lib.stages.quantize_pt2e.save_program`) with the activation range
      stored beside it; time it under ``torch-compile`` (``quantize.compile_for_cpu``), eager it is a
      slow FP32-arithmetic reference.

    Raises:
        ValueError: an FX INT8 model without `arch` (it can only be rebuilt from its architecture).
    """
    path = Path(path)
    arch = arch or getattr(model, "pqd_arch", None)
    int8 = quantize_stage.is_int8(model)
    settings = quantize_stage.int8_settings(model) or {}
    if int8 and settings.get("engine") == "pt2e":
        # A PT2E INT8 graph needs no rebuilding: its torch.export program is the artifact (no pickled code).
        from .stages import quantize_pt2e

        return quantize_pt2e.save_program(model, path.with_suffix(".pt2"), input_shape=(1, *input_shape),
                                          settings=settings)
    if arch is not None:
        return save_deploy(model, path, arch=dict(arch), form="int8" if int8 else "fp32",
                           backend=backend, reduce_range=reduce_range,
                           input_shape=(1, *input_shape))
    if int8:
        raise ValueError("save_artifact: an INT8 model is rebuilt from its architecture in the child; pass "
                         "arch={'name', 'num_classes', 'width'} (torch.export cannot save FX-converted INT8 models)")
    path = path.with_suffix(".pt2")
    model = model.cpu().eval()
    with torch.no_grad():
        # Batch 2 in the example: with 1 the exporter specialises the batch axis to a constant.
        program = torch.export.export(model, (torch.zeros(2, *input_shape),),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    with atomic_path(path, keep_suffix=True) as tmp:  # torch.export wants the .pt2 suffix
        torch.export.save(program, str(tmp))
    return path


#: Suffix of the whole-module pickle that measure_latency writes for its own child process only.
PICKLE_SUFFIX = ".module.pt"


def artifact_kind(path: Path) -> str:
    """``"pickle"``, ``"onnx"``, ``"export"`` (``.pt2``) or ``"deploy"``, from the file name."""
    if path.name.endswith(PICKLE_SUFFIX):
        return "pickle"
    return {".onnx": "onnx", ".pt2": "export"}.get(path.suffix.lower(), "deploy")


def save_pickled_module(model: nn.Module, path: Path) -> Path:
    """The whole module, code references included (``torch.save(model)``), for this run's child only.

    The faithful artifact for a module that cannot be rebuilt from a registry name: the child runs
    the very same eager module. Written into a private temporary directory and loaded only by a child
    told so (``--trusted-pickle``); user-supplied files are never unpickled.
    """
    torch.save(model.cpu().eval(), path)
    return path


def artifact_form(path: str | os.PathLike) -> str:
    """The form of a saved artifact without building the model (reads metadata / the state dict).

    Raises:
        ArtifactError: missing or unreadable file (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: model file not found")
    kind = artifact_kind(path)
    if kind == "onnx":
        from .measure.onnx_runtime import OnnxError, onnx_form

        try:
            return onnx_form(path)
        except OnnxError as exc:
            raise ArtifactError(str(exc)) from None
    if kind in ("export", "pickle"):
        # A path reaching here comes from the caller: a whole-module pickle is refused (it would
        # run code); only measure_latency's own temporary pickles are loaded, in its child process.
        return model_form(load_artifact(path))
    try:
        info = read_deploy_info(path)
    except DeployError as exc:
        raise ArtifactError(str(exc)) from None
    return info["form"]


def load_artifact(path: str | os.PathLike, *, trusted: bool = False, allow_saturation: bool = False) -> nn.Module:
    """Load a torch artifact written by :func:`save_artifact` (CPU, eval mode); no pickled code runs.

    `trusted` allows the whole-module pickle (``*.module.pt``) that :func:`measure_latency` writes
    for its own child process; never set it for files from elsewhere. A full-range INT8 model
    (PT2E program or deploy file) is refused on a CPU without AVX-512 VNNI unless `allow_saturation`.

    Raises:
        ArtifactError: missing file, corrupt file, an untrusted pickle, or an ONNX file (run by ONNX
            Runtime, not torch); the message names the path.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: model file not found")
    kind = artifact_kind(path)
    if kind == "onnx":
        raise ArtifactError(f"{path}: an ONNX model runs with runtime='onnxruntime', not in torch")
    if kind == "pickle":
        if not trusted:
            raise ArtifactError(f"{path}: a pickled module runs code when loaded; only measure_latency's own "
                                "temporary files are loaded this way")
        try:
            return torch.load(path, map_location="cpu", weights_only=False).eval()
        except Exception as exc:
            raise ArtifactError(f"{path}: could not load the pickled module ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if kind == "export":
        from .stages.quantize_pt2e import load_with_settings

        try:
            # Exported in eval mode; the unlifted module refuses .eval()/.train() calls.
            program, settings = load_with_settings(str(path))
        except Exception as exc:
            raise ArtifactError(f"{path}: not a readable torch.export program ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
        if settings.get("reduce_range") is False:  # a PT2E INT8 program trained full-range
            try:
                quantize_stage.check_activation_range(False, settings.get("backend") or "x86",
                                                      allow_saturation=allow_saturation, where=str(path))
            except quantize_stage.ActivationRangeError as exc:
                raise ArtifactError(str(exc)) from None
        return program.module()
    try:
        return load_deploy(path, allow_saturation=allow_saturation)
    except DeployError as exc:
        raise ArtifactError(str(exc)) from None
