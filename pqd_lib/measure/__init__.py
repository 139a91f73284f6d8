"""Measurement: latency (the stated protocol, isolated process), sizes, proxies (params, MACs), accuracy.

Importing this package loads torch only; ONNX Runtime is imported when an ONNX function is called.
The public names are re-exported lazily from their submodules:

* :mod:`.latency` -- ``measure_latency`` (one model), ``measure_callable``, ``time_runs``, ``summarize``,
  ``save_artifact``, ``load_artifact``, ``model_form`` (the last three defined in :mod:`pqd_lib.deploy`)
* :mod:`.rounds` -- ``compare`` (the rounds protocol: any comparison of models), ``latency_phase``
* :mod:`.size` -- ``model_sizes``, ``sparse_encoding_bytes``, ``entropy_bound_bytes``, ``mib``
* :mod:`.proxies` -- ``count_params``, ``layer_macs``, ``weight_sparsity`` (and ``proxies``:
  import it from :mod:`pqd_lib.measure.proxies`, since ``pqd_lib.measure.proxies`` is the module)
* :mod:`.accuracy` -- import ``accuracy`` from :mod:`pqd_lib.measure.accuracy` (same reason)
* :mod:`.onnx_runtime` -- ``export_onnx``, ``export_qat_onnx``, ``quantize_static_onnx``, ``session``
* :mod:`.hardware` -- ``hardware_info``, ``describe``
* :mod:`.sparse_kernels` -- ``to_csr_kernels``
"""

from __future__ import annotations

from .._lazy import attach

_LAZY = {
    "measure_latency": "latency",
    "measure_callable": "latency",
    "time_runs": "latency",
    "summarize": "latency",
    "save_artifact": "latency",
    "load_artifact": "latency",
    "model_form": "latency",
    "ArtifactError": "latency",
    "compare": "rounds",
    "latency_phase": "rounds",
    "model_sizes": "size",
    "sparse_encoding_bytes": "size",
    "entropy_bound_bytes": "size",
    "mib": "size",
    "count_params": "proxies",
    "layer_macs": "proxies",
    "weight_sparsity": "proxies",
    "export_onnx": "onnx_runtime",
    "export_qat_onnx": "onnx_runtime",
    "quantize_static_onnx": "onnx_runtime",
    "hardware_info": "hardware",
    "describe": "hardware",
    "to_csr_kernels": "sparse_kernels",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = attach(__name__, _LAZY, globals())
