"""A sparse-kernel execution of a pruned FP32 model on the CPU, built from maintained torch kernels only.

What exists (torch 2.14.1, ONNX Runtime 1.32.0; checked for the latency analysis):

* torch has no sparse *convolution* kernel for the CPU. ``to_sparse_semi_structured`` (2:4) is
  CUDA-only; ``torch.ao.nn.sparse.quantized.Linear`` covers block-sparse INT8 ``Linear`` only.
* torch does have a maintained CPU sparse x dense matrix product: ``torch.sparse.mm`` on a CSR
  tensor (MKL's sparse BLAS in the official wheels).
* ONNX Runtime's CPU provider has no sparse convolution either; sparse initializers are densified
  at load, and its only sparse CPU kernel is the contrib ``SparseToDenseMatMul`` (a matmul).

So the only sparse kernel one can measure for a pruned CNN is a convolution lowered to a matrix
product: im2col (``F.unfold``) and a CSR weight times the column matrix. :func:`to_csr_kernels`
swaps every ``Conv2d`` (groups 1) and ``Linear`` for such a module; everything else (BN, ReLU,
adds) stays as it was, so the comparison with dense eager isolates the kernel. It is a measurement
device for the "does unstructured sparsity buy speed on a CPU?" question, not a deploy path.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CSRConv2d", "CSRLinear", "to_csr_kernels"]


def _csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        # "Sparse CSR tensor support is in beta state": known, and the point of this measurement.
        warnings.filterwarnings("ignore", message=r".*Sparse CSR tensor support is in beta.*")
        return weight.detach().reshape(weight.shape[0], -1).to_sparse_csr()


class CSRConv2d(nn.Module):
    """``Conv2d`` (groups 1) as im2col + CSR(weight) @ columns, the weight stored in CSR format."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1 or isinstance(conv.padding, str):
            raise ValueError("CSRConv2d: only groups=1 convolutions with numeric padding are supported")
        self.out_channels = conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.weight_csr = _csr(conv.weight)
        self.bias = None if conv.bias is None else conv.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same result as the dense convolution (up to float summation order)."""
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        k, length = cols.shape[1], cols.shape[2]
        # One product for the whole batch: (Cout, K) @ (K, N*L).
        cols = cols.transpose(0, 1).reshape(k, n * length) if n > 1 else cols[0]
        out = torch.sparse.mm(self.weight_csr, cols)
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        out = out.reshape(self.out_channels, n, oh, ow).transpose(0, 1)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out.contiguous()


class CSRLinear(nn.Module):
    """``Linear`` as ``(W_csr @ x^T)^T + b`` with the weight in CSR format."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight_csr = _csr(linear.weight)
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same result as the dense linear layer (up to float summation order)."""
        out = torch.sparse.mm(self.weight_csr, x.t()).t()
        return out if self.bias is None else out + self.bias


def to_csr_kernels(model: nn.Module) -> nn.Module:
    """A copy of FP32 `model` (eval, CPU) whose Conv2d/Linear layers run CSR sparse x dense kernels.

    Raises:
        ValueError: `model` is quantized (INT8 weights have no CSR kernel in torch).
    """
    if any(getattr(t, "is_quantized", False) for t in model.state_dict().values() if isinstance(t, torch.Tensor)):
        raise ValueError("to_csr_kernels: the model is INT8; torch has CSR kernels for float weights only")
    model = copy.deepcopy(model).cpu().eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d and child.groups == 1 and not isinstance(child.padding, str):
                setattr(parent, name, CSRConv2d(child))
            elif type(child) is nn.Linear:
                setattr(parent, name, CSRLinear(child))
    return model
