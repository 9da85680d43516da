"""Philox4x32-10 and its bits -> float transforms as Triton device functions.

The contract (key/counter layout, which words feed what, float resolution) is documented in
gfn_fast/reference/_philox.py; this file must stay bit-identical to it. Words are tl.uint32
(multiplication wraps, tl.umulhi gives the high half). Divisions use div_rn so the float
transforms round like the CPU ones (plain `/` is an approximate division on GPUs).
"""

import torch
import triton
import triton.language as tl

COIN_COL = 0xFFFFFFFF


@triton.jit
def philox4x32(k0, k1, c0, c1, c2, c3):
    """One Philox4x32-10 block for tensors of uint32 counters; k0, k1 uint32 scalars."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def uniform(bits):
    """float32 (2 (x >> 9) + 1) * 2^-24 in [2^-24, 1 - 2^-24]."""
    return ((bits >> 9) * 2 + 1).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def open_unit(bits):
    return bits.to(tl.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10


@triton.jit
def log1p_neg(v):
    """log(1 - v), float32 v in [0, 1), by log(w) * t / (w - 1) with t = -v, w = 1 + t."""
    t = -v
    w = 1.0 + t
    exact = w == 1.0
    ratio = tl.math.div_rn(tl.log(w) * t, tl.where(exact, 1.0, w - 1.0))
    return tl.where(exact, t, ratio)


@triton.jit
def exponential(bits):
    v = tl.minimum(open_unit(bits), 0.99999994039535522)
    return -log1p_neg(v)


@triton.jit
def gumbel(bits):
    return -tl.log(exponential(bits))


@triton.jit
def normal_pair(bits0, bits1):
    u1 = open_unit(bits0)
    radius = tl.sqrt_rn(-2.0 * tl.log(u1))
    theta = uniform(bits1) * 6.2831854820251465
    return radius * tl.cos(theta), radius * tl.sin(theta)


@triton.jit
def seed_key(seed_lo, seed_hi):
    """The Philox key from the two 32-bit halves of the seed, passed as integer arguments."""
    return seed_lo.to(tl.uint32), seed_hi.to(tl.uint32)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _fill_kernel(rows_ptr, cols_ptr, words_ptr, floats_ptr, n, seed_lo, seed_hi, off_lo, off_hi,
                 BLOCK: tl.constexpr):
    """Words and transforms of block (rows[i], cols[i]), for the tests."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = i < n
    rows = tl.load(rows_ptr + i, mask=inside, other=0).to(tl.uint32)
    cols = tl.load(cols_ptr + i, mask=inside, other=0).to(tl.uint32)
    k0, k1 = seed_key(seed_lo, seed_hi)
    c2 = tl.zeros_like(cols) + off_lo.to(tl.uint32)
    c3 = tl.zeros_like(cols) + off_hi.to(tl.uint32)
    w0, w1, w2, w3 = philox4x32(k0, k1, cols, rows, c2, c3)
    tl.store(words_ptr + i * 4, w0.to(tl.int64), mask=inside)
    tl.store(words_ptr + i * 4 + 1, w1.to(tl.int64), mask=inside)
    tl.store(words_ptr + i * 4 + 2, w2.to(tl.int64), mask=inside)
    tl.store(words_ptr + i * 4 + 3, w3.to(tl.int64), mask=inside)
    n0, n1 = normal_pair(w0, w1)
    tl.store(floats_ptr + i * 5, uniform(w0), mask=inside)
    tl.store(floats_ptr + i * 5 + 1, exponential(w0), mask=inside)
    tl.store(floats_ptr + i * 5 + 2, gumbel(w0), mask=inside)
    tl.store(floats_ptr + i * 5 + 3, n0, mask=inside)
    tl.store(floats_ptr + i * 5 + 4, n1, mask=inside)


def fill(seed_lo: int, seed_hi: int, off_lo: int, off_hi: int, rows: torch.Tensor,
         cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(words [n, 4] int64, transforms [n, 5] float32) for int64 rows/cols (testing helper)."""
    n = rows.shape[0]
    words = torch.empty((n, 4), dtype=torch.int64, device=rows.device)
    floats = torch.empty((n, 5), dtype=torch.float32, device=rows.device)
    block = 1024
    _fill_kernel[(triton.cdiv(n, block),)](rows, cols, words, floats, n, seed_lo, seed_hi,
                                           off_lo, off_hi, BLOCK=block)
    return words, floats
