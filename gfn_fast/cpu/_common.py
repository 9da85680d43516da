"""Helpers shared by the Numba kernels: loss functions and tensor <-> NumPy views."""

import math
import types

import numba
import numpy as np
import torch

SQUARED, HALF_SQUARED, ABSOLUTE, HUBER, SHIFTED_COSH, LINEX = range(6)
_NUMBA_FLOATS = (torch.float32, torch.float64)


@numba.njit(inline="always", cache=True)
def rho(d, loss_id, param):
    if loss_id == SQUARED:
        return d * d
    if loss_id == HALF_SQUARED:
        return 0.5 * d * d
    if loss_id == ABSOLUTE:
        return abs(d)
    if loss_id == HUBER:
        a = abs(d)
        return 0.5 * d * d if a <= param else param * (a - 0.5 * param)
    if loss_id == SHIFTED_COSH:
        return math.exp(d) + math.exp(-d) - 2.0
    ad = param * d
    return (math.exp(ad) - ad - 1.0) / (param * param)


@numba.njit(inline="always", cache=True)
def sign(d):
    if d > 0:
        return 1.0
    if d < 0:
        return -1.0
    return d * 0.0


@numba.njit(inline="always", cache=True)
def rho_grad(d, loss_id, param):
    if loss_id == SQUARED:
        return 2.0 * d
    if loss_id == HALF_SQUARED:
        return d
    if loss_id == ABSOLUTE:
        return sign(d)
    if loss_id == HUBER:
        return d if abs(d) <= param else param * sign(d)
    if loss_id == SHIFTED_COSH:
        return math.exp(d) - math.exp(-d)
    return math.expm1(param * d) / param


def as_numpy(tensor: torch.Tensor, compute: torch.dtype) -> np.ndarray:
    """A NumPy view of a CPU tensor (same strides); half types are widened to `compute`."""
    if tensor.dtype not in _NUMBA_FLOATS and tensor.is_floating_point():
        tensor = tensor.to(compute)
    return (tensor.detach() if tensor.requires_grad else tensor).numpy()


def per_row(tensor: torch.Tensor | None, batch: int, dtype: torch.dtype) -> np.ndarray:
    """[B] view of a scalar-or-[B] tensor (scalars broadcast with stride 0); a dummy when None.
    Built with NumPy directly: the torch route (detach, to, reshape, expand, numpy) cost ~3 us,
    several times per loss call."""
    if tensor is None:
        return np.zeros(1, dtype=np.float64 if dtype == torch.float64 else np.float32)
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    if tensor.dim() == 1 and tensor.shape[0] == batch:
        return tensor.numpy()
    if tensor.numel() == 1:
        value = tensor.numpy()
        return np.ndarray((batch,), value.dtype, value, 0, (0,))
    return tensor.reshape(-1).expand(batch).numpy()


_CONSTANTS: dict = {}


def constant_row(batch: int, dtype: torch.dtype, value: float) -> np.ndarray:
    """[B] copies of `value` in `dtype` (float32 or float64): a stride-0 view of one cached
    element, the same Numba array type as an expanded scalar tensor. The default of a per-row
    factor (beta, scale, temperature, epsilon) that was not given."""
    key = (dtype, value)
    element = _CONSTANTS.get(key)
    if element is None:
        element = _CONSTANTS[key] = torch.full((1,), value, dtype=dtype).numpy()
    return np.ndarray((batch,), element.dtype, element, 0, (0,))


_SERIAL_TWINS: dict = {}


def serial_if(kernel, small: bool):
    """`kernel` (a parallel=True Numba function), or when `small` its twin compiled without
    parallel=True, whose prange loops run on the calling thread. Waking the worker pool costs tens
    of microseconds idle (milliseconds on a loaded machine), more than small calls take; the twin
    avoids that without numba.set_num_threads, whose save-and-restore cost ~3 us per call.

    The twin is a copy of the Python function under its own name: Numba's on-disk cache indexes
    compiled code by the function's qualified name and bytecode, not by its compile flags, so a
    twin of the same name would load the parallel build (or overwrite it)."""
    if not small:
        return kernel
    twin = _SERIAL_TWINS.get(kernel)
    if twin is None:
        fn = kernel.py_func
        copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                  fn.__defaults__, fn.__closure__)
        copy.__qualname__ = fn.__qualname__ + "_serial"
        copy.__module__ = fn.__module__
        options = {key: value for key, value in kernel.targetoptions.items()
                   if key not in ("parallel", "nopython")}
        twin = _SERIAL_TWINS[kernel] = numba.njit(cache=True, **options)(copy)
    return twin
