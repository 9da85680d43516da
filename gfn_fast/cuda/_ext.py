"""Tensor -> integer arguments for gfn_fast._C."""

import torch

from gfn_fast import _C  # noqa: F401  (import error = backend unavailable)

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def ext():
    return _C


def dtype_code(tensor: torch.Tensor) -> int:
    return DTYPE_CODES[tensor.dtype]


def launch_dtype(acc: torch.dtype, step: torch.dtype) -> torch.dtype:
    """The element type of a launch's per-step tensors (log-probs, flows and their gradients)
    whose per-trajectory tensors (log_reward, log_z, beta, the outputs) are in `acc`. The
    launchers' element-type dispatch (csrc/include/gfn_fast/launch.cuh) pairs float32, float16
    and bfloat16 elements with a float32 accumulator and reads every per-trajectory buffer as
    the accumulator, so float64 ones beside narrower per-step tensors (a float64 log_reward
    with float32 log-probs) were read as float32: such launches run in float64."""
    return acc if acc == torch.float64 else step


def widened(acc: torch.dtype, *steps):
    """The per-step tensors in their launch dtype: one copy, in the mixed case only."""
    return tuple(s if s is None or s.dtype == launch_dtype(acc, s.dtype) else s.to(acc)
                 for s in steps)


def narrowed(dtype: torch.dtype, *grads):
    """Per-step gradients computed in a widened launch, back in the inputs' `dtype`."""
    return tuple(g if g is None or g.dtype == dtype else g.to(dtype) for g in grads)


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
