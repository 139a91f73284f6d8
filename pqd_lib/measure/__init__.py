"""Measurement: latency (the stated protocol, isolated process), sizes, proxies (params, MACs), accuracy.

Importing this package loads torch; ONNX and ONNX Runtime (the ``[onnx]`` extra) are imported only
when an ONNX function is called. The public names, re-exported from their submodules:

* :mod:`.latency` -- ``measure_latency`` (one model), ``measure_callable``, ``time_runs``, ``summarize``,
  ``save_artifact``, ``load_artifact``, ``model_form`` (the last three defined in :mod:`pqd_lib.deploy`)
* :mod:`.rounds` -- ``compare`` (the rounds protocol: any comparison of models), ``latency_phase``
* :mod:`.retime` -- ``retime`` (``pqd retime``: old latencies re-timed by deploy signature, architecture only)
* :mod:`.size` -- ``model_sizes``, ``sparse_encoding_bytes``, ``entropy_bound_bytes``, ``mib``
* :mod:`.proxies` -- ``count_params``, ``layer_macs``, ``weight_sparsity`` (``proxies`` the function
  is imported from :mod:`pqd_lib.measure.proxies`: the package attribute is the module)
* :mod:`.accuracy` -- ``accuracy``, likewise from :mod:`pqd_lib.measure.accuracy`
* :mod:`.onnx_runtime` -- ``export_onnx``, ``export_qat_onnx``, ``quantize_static_onnx``, ``session``
* :mod:`pqd_lib.hardware` (re-exported here) -- ``hardware_info``, ``describe``
* :mod:`.sparse_kernels` -- ``to_csr_kernels``
"""

from __future__ import annotations

from ..hardware import describe, hardware_info
from .latency import (
    ArtifactError,
    load_artifact,
    measure_callable,
    measure_latency,
    model_form,
    save_artifact,
    summarize,
    time_runs,
)
from .onnx_runtime import export_onnx, export_qat_onnx, quantize_static_onnx
from .rounds import compare, latency_phase
from .proxies import count_params, layer_macs, weight_sparsity
from .size import entropy_bound_bytes, mib, model_sizes, sparse_encoding_bytes
from .sparse_kernels import to_csr_kernels

__all__ = ["measure_latency", "measure_callable", "time_runs", "summarize", "save_artifact", "load_artifact",
           "model_form", "ArtifactError", "compare", "latency_phase", "model_sizes", "sparse_encoding_bytes", "entropy_bound_bytes", "mib",
           "count_params", "layer_macs", "weight_sparsity", "export_onnx", "export_qat_onnx", "quantize_static_onnx",
           "hardware_info", "describe", "to_csr_kernels"]
