"""Philox4x32-10 and its bits -> float transforms for the Numba kernels.

The contract (key/counter layout, which words feed what, float resolution) is documented in
gfn_fast/reference/_philox.py; this file must stay bit-identical to it. Words travel as uint64
holding a uint32 value (Numba widens uint32 arithmetic to 64 bits anyway); every constant is a
np.uint64 or np.float32 so no operation is silently promoted to float64.
"""

import math

import numba
import numpy as np

from gfn_fast.cpu import _vmath as vm

_U64 = np.uint64
M0, M1 = _U64(0xD2511F53), _U64(0xCD9E8D57)
W0, W1 = _U64(0x9E3779B9), _U64(0xBB67AE85)
MASK32 = _U64(0xFFFFFFFF)
SHIFT32 = _U64(32)
SHIFT9 = _U64(9)
COIN_COL = _U64(0xFFFFFFFF)

F32_ONE = np.float32(1.0)
F32_TWO = np.float32(2.0)
TWO_M24 = np.float32(2.0 ** -24)
TWO_M32 = np.float32(2.0 ** -32)
TWO_M33 = np.float32(2.0 ** -33)
ONE_MINUS_TWO_M24 = np.float32(1.0 - 2.0 ** -24)
TWO_PI = np.float32(2.0 * math.pi)


@numba.njit(inline="always", cache=True)
def philox4x32(k0, k1, c0, c1, c2, c3):
    """One Philox4x32-10 block: key (k0, k1), counter (c0..c3), all uint64 < 2^32."""
    for _ in range(10):
        p0 = M0 * c0
        p1 = M1 * c2
        c0, c1, c2, c3 = ((p1 >> SHIFT32) ^ c1 ^ k0, p1 & MASK32,
                          (p0 >> SHIFT32) ^ c3 ^ k1, p0 & MASK32)
        k0 = (k0 + W0) & MASK32
        k1 = (k1 + W1) & MASK32
    return c0, c1, c2, c3


@numba.njit(inline="always", cache=True)
def uniform(bits):
    """float32 (2 (x >> 9) + 1) * 2^-24 in [2^-24, 1 - 2^-24]."""
    return np.float32((bits >> SHIFT9) * _U64(2) + _U64(1)) * TWO_M24


@numba.njit(inline="always", cache=True)
def open_unit(bits):
    return np.float32(bits) * TWO_M32 + TWO_M33


@numba.njit(inline="always", cache=True)
def log1p_neg(v):
    """log(1 - v), float32 v in [0, 1), by log(w) * t / (w - 1) with t = -v, w = 1 + t."""
    t = -v
    w = F32_ONE + t
    if w == F32_ONE:
        return t
    return np.float32(math.log(w)) * t / (w - F32_ONE)


@numba.njit(inline="always", cache=True)
def exponential(bits):
    v = min(open_unit(bits), ONE_MINUS_TWO_M24)
    return -log1p_neg(v)


@numba.njit(inline="always", cache=True)
def gumbel(bits):
    return -np.float32(math.log(exponential(bits)))


@numba.njit(inline="always", cache=True)
def normal_pair(bits0, bits1):
    """Box-Muller in float32 (gfn_fast.cpu._vmath.box_muller: polynomial log and cos/sin, so
    loops over this vectorise)."""
    return vm.box_muller(open_unit(bits0), uniform(bits1) * TWO_PI)


@numba.njit(parallel=True, cache=True)
def fill_words(k0, k1, off_lo, off_hi, rows, cols, out):
    """out[i, :] = the 4 words of block (rows[i], cols[i]) (testing and debugging helper)."""
    for i in numba.prange(rows.shape[0]):
        w0, w1, w2, w3 = philox4x32(_U64(k0), _U64(k1), _U64(cols[i]), _U64(rows[i]),
                                    _U64(off_lo), _U64(off_hi))
        out[i, 0] = w0
        out[i, 1] = w1
        out[i, 2] = w2
        out[i, 3] = w3


@numba.njit(parallel=True, cache=True)
def fill_transforms(words, out):
    """out[i] = (uniform(w0), exponential(w0), gumbel(w0), normal_pair(w0, w1)) for testing."""
    for i in numba.prange(words.shape[0]):
        w0 = _U64(words[i, 0])
        w1 = _U64(words[i, 1])
        out[i, 0] = uniform(w0)
        out[i, 1] = exponential(w0)
        out[i, 2] = gumbel(w0)
        n0, n1 = normal_pair(w0, w1)
        out[i, 3] = n0
        out[i, 4] = n1
