"""Philox4x32-10 and its bits -> float transforms for the Numba kernels.

The contract (key/counter layout, which words feed what, float resolution) is documented in
gfn_fast/reference/_philox.py; the words here must stay bit-identical to it, and the floats
within a few ulps (their logarithms, cosines and sines are _vmath's). Words travel as uint64
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


# The exponential and Gumbel transforms are written so that a loop over them vectorises (the
# sampler draws its Gumbel noise in such a loop, ~1.3 ns a value against ~7.8 with libm's logf
# on the EPYC host): vm.log32 for the logarithms and vm.divide for the quotient (Numba's `/`
# tests the divisor for zero and raises, a branch that kept the loop scalar, and 0 / 0 is
# reached here). The two branches of log1p_neg are one max: written as a conditional
# expression they kept the loop scalar in one build tried (15 ns a value).
@numba.njit(inline="always", cache=True)
def exponential(bits):
    """-log(1 - v), v = min(open_unit(bits), 1 - 2^-24), in float32: -log(w) * t / (w - 1) with
    t = -v, w = 1 + t, or v where w rounds to 1. There log(w) * t / (w - 1) is 0 / 0 = NaN, and
    max(v, NaN) is v; elsewhere the quotient exceeds v (by v^2 / 2 and more, against a few ulps
    of rounding), so the max takes it: the value of the two branches of the reference's
    log1p_neg, exactly, with log32 for the logarithm (tests/test_philox.py checks every word up
    to 2^20, where v approaches 2^-12)."""
    v = min(open_unit(bits), ONE_MINUS_TWO_M24)
    t = -v
    w = F32_ONE + t
    return max(v, -vm.divide(vm.log32(w) * t, w - F32_ONE))


@numba.njit(inline="always", cache=True)
def gumbel(bits):
    """Standard Gumbel float32: -log(exponential(bits))."""
    return -vm.log32(exponential(bits))


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
