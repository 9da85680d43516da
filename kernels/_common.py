"""Device functions shared by the Triton kernels: regression losses and launch helpers."""

import os

import torch
import triton
import triton.language as tl

SQUARED, HALF_SQUARED, ABSOLUTE, HUBER, SHIFTED_COSH, LINEX = range(6)


def interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def expm1(x):
    """exp(x) - 1 without cancellation near 0 (Kahan: (u - 1) * x / log(u), u = exp(x)), and
    u - 1 itself where u is outside [1/2, 2] and nothing cancels. Kahan's form everywhere went
    wrong where u underflows (x < -87 in fp32 on a GPU, -745 in fp64): -0 instead of -1, NaN at
    x = -inf, and a drift from -1 where u is subnormal. Written on u, as before, so as few
    values stay live per element (the DB backward's LinEx tile spills otherwise)."""
    u = tl.exp(x)
    um1 = u - 1.0
    far = (u < 0.5) | (u > 2.0)  # u = 0 and u = inf included
    plain = far | (u == 1.0)
    safe_log = tl.where(plain, 1.0, tl.log(u))
    return tl.where(plain, tl.where(far, um1, x), um1 * x / safe_log)


@triton.jit
def log1p(x):
    """log(1 + x) without cancellation near 0 (log(w) * x / (w - 1), w = 1 + x), in any float
    type and under the interpreter (which has no libdevice log1p)."""
    w = 1.0 + x
    plain = (w == 1.0) | (w == float("inf"))
    return tl.where(plain, tl.where(w == 1.0, x, w),
                    tl.log(w) * x / tl.where(plain, 1.0, w - 1.0))


@triton.jit
def sign(d):
    return tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0)).to(d.dtype)


@triton.jit
def rho(d, param, LOSS: tl.constexpr):
    if LOSS == 0:
        out = d * d
    elif LOSS == 1:
        out = 0.5 * d * d
    elif LOSS == 2:
        out = tl.abs(d)
    elif LOSS == 3:
        a = tl.abs(d)
        out = tl.where(a <= param, 0.5 * d * d, param * (a - 0.5 * param))
    elif LOSS == 4:
        out = tl.exp(d) + tl.exp(-d) - 2.0
    else:
        ad = param * d
        out = (tl.exp(ad) - ad - 1.0) / (param * param)
    return out


@triton.jit
def rho_grad(d, param, LOSS: tl.constexpr):
    if LOSS == 0:
        out = 2.0 * d
    elif LOSS == 1:
        out = d
    elif LOSS == 2:
        out = sign(d)
    elif LOSS == 3:
        out = tl.where(tl.abs(d) <= param, d, param * sign(d))
    elif LOSS == 4:
        out = tl.exp(d) - tl.exp(-d)
    else:
        out = expm1(param * d) / param
    return out


@triton.jit
def scalar(value, ACC: tl.constexpr):
    """A float argument in the accumulator type. Kernels annotate float arguments tl.float64:
    unannotated, compiled Triton passes a Python float as fp32, so a float64 kernel would see a
    rounded value (the interpreter keeps the Python float, which tl.full takes exactly)."""
    return tl.full([], value, ACC)


def accumulator(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def trajectory_extent(lengths_ptr, rows, row_mask, steps, PACKED: tl.constexpr):
    """Per trajectory: (first step in the flat packed tensor, or 0 when padded; number of valid
    steps, clamped to the tensor, 0 for rows past the batch)."""
    if PACKED:
        start = tl.load(lengths_ptr + rows, mask=row_mask, other=0)
        end = tl.load(lengths_ptr + rows + 1, mask=row_mask, other=0)
        start = tl.minimum(tl.maximum(start, 0), steps)
        end = tl.minimum(tl.maximum(end, start), steps)
        count = end - start
    else:
        start = tl.zeros_like(rows)
        count = tl.load(lengths_ptr + rows, mask=row_mask, other=0)
        count = tl.minimum(tl.maximum(count, 0), steps)
    return start, tl.where(row_mask, count, 0)
