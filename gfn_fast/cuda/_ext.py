"""Tensor -> integer arguments for gfn_fast._C."""

import torch

from gfn_fast import _C  # noqa: F401  (import error = backend unavailable)

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def ext():
    return _C


def dtype_code(tensor: torch.Tensor) -> int:
    return DTYPE_CODES[tensor.dtype]


def ptr(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.data_ptr()


def stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def per_row_stride(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None or tensor.dim() == 0 else tensor.stride(0)


def strides_2d(tensor: torch.Tensor | None, packed: bool) -> tuple[int, int]:
    """(batch stride, time stride) of a [B, T] tensor, or (0, stride) of a packed 1-D one."""
    if tensor is None:
        return 0, 0
    return (0, tensor.stride(0)) if packed else (tensor.stride(0), tensor.stride(1))
