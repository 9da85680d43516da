"""Philox4x32-10 in plain PyTorch: the executable contract of gfn_fast's counter-based randomness.

Every backend (Numba gfn_fast/cpu/_philox.py, Triton kernels/_philox.py, CUDA
csrc/include/gfn_fast/philox.cuh) implements exactly this, and the tests compare their uint32
words bit for bit with this file.

Block function: Philox4x32 with 10 rounds (Salmon, Moraes, Dror, Shaw, SC'11), multipliers
0xD2511F53 / 0xCD9E8D57, Weyl key increments 0x9E3779B9 / 0xBB67AE85.

Key and counter (the whole contract; nothing else enters a draw):
    key     = (seed mod 2^32, (seed >> 32) mod 2^32)          seed: any Python int, taken mod 2^64
    counter = (col, row, offset mod 2^32, (offset >> 32) mod 2^32)
A draw for (seed, offset, row, col) is the 4 uint32 words of one block, so it never depends on
block sizes, thread counts or backend. A flat element index i is addressed as
(row, col) = (i >> 32, i mod 2^32). Consumers document which words they use:
  * gfn_fast.sample_actions: element (r, a) reads block (row=r, col=a >> 1), words
    2(a & 1) (policy Gumbel) and 2(a & 1) + 1 (uniform-branch key); the per-row epsilon coin
    is word 0 of block (row=r, col=COIN_COL).
  * flat normal noise (BFN): normal i is output i & 3 of block j = i >> 2, read at
    (j >> 32, j mod 2^32): (cos, sin) of `normal_pair` on words (0, 1), then on words (2, 3).
    Uniforms of the BFN discrete step come from blocks with bit 31 of the row set (layout:
    gfn_fast/reference/bfn.py, "noise").
A torch.Generator advances `offset` between calls (see gfn_fast._rng).

Bits -> floats (float32 everywhere, so every backend rounds the same operations):
  * uniform(x): (2k + 1) / 2^24 with k = x >> 9: 23 random bits, values in [2^-24, 1 - 2^-24],
    exact in float32, symmetric (u and 1 - u are both values), mean exactly 1/2.
  * exponential(x): E = -log1p(-v), v = float32(x) * 2^-32 + 2^-33 clamped to <= 1 - 2^-24.
    v resolves 2^-33 near 0, so small E (the Gumbel upper tail that decides an argmax) has
    32-bit resolution: E in [2^-33, 16.64]. log1p is computed as log(w) * t / (w - 1), w = 1 + t
    (exact when w = 1), the same formula on every backend.
  * gumbel(x) = -log(exponential(x)): range [-2.81, 22.87] (P(G < -2.81) = 6e-8, harmless for an
    argmax).
  * normal_pair(x0, x1): Box-Muller, r = sqrt(-2 log u1), u1 = float32(x0) * 2^-32 + 2^-33 in
    (0, 1]; theta = 2 pi uniform(x1). |n| <= r <= sqrt(66 ln 2) = 6.764 (u1 >= 2^-33; the tail
    beyond 6.764 sigma, 1.3e-11, is cut).
The uint32 words are bit-identical across backends; the floats agree to a few ulps (log, cos,
sin differ in their last bits between libm, NumPy, libdevice and CUDA's math library).
"""

import math

import torch

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF
ROUNDS = 10
COIN_COL = MASK32

TWO_M24 = 2.0 ** -24
TWO_M32 = 2.0 ** -32
TWO_M33 = 2.0 ** -33
ONE_MINUS_TWO_M24 = 1.0 - 2.0 ** -24


def split_seed(seed: int) -> tuple[int, int]:
    seed &= (1 << 64) - 1
    return seed & MASK32, seed >> 32


def split_offset(offset: int) -> tuple[int, int]:
    offset &= (1 << 64) - 1
    return offset & MASK32, offset >> 32


def _mulhilo(a: torch.Tensor, multiplier: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of a * multiplier for int64 tensors holding uint32 values,
    in 16-bit pieces so that no int64 product overflows."""
    m_lo, m_hi = multiplier & 0xFFFF, multiplier >> 16
    a_lo, a_hi = a & 0xFFFF, a >> 16
    lo_lo = a_lo * m_lo
    mid = a_lo * m_hi + a_hi * m_lo + (lo_lo >> 16)
    low = ((mid & 0xFFFF) << 16) | (lo_lo & 0xFFFF)
    high = a_hi * m_hi + (mid >> 16)
    return high & MASK32, low


def philox4x32(seed: int, offset: int, row, col) -> torch.Tensor:
    """The 4 uint32 words (as int64, last dim 4) of the block for every (row, col) pair.
    `row` and `col` are int64 tensors (broadcast together) or ints, each in [0, 2^32)."""
    # an int on the tensor's device (not torch's default device, which may be another)
    device = row.device if torch.is_tensor(row) else col.device if torch.is_tensor(col) else "cpu"
    row = torch.as_tensor(row, dtype=torch.int64, device=device)
    col = torch.as_tensor(col, dtype=torch.int64, device=device)
    row, col = torch.broadcast_tensors(row, col)
    k0, k1 = split_seed(seed)
    off_lo, off_hi = split_offset(offset)
    c0 = col & MASK32
    c1 = row & MASK32
    c2 = torch.full_like(c0, off_lo)
    c3 = torch.full_like(c0, off_hi)
    for _ in range(ROUNDS):
        hi0, lo0 = _mulhilo(c0, M0)
        hi1, lo1 = _mulhilo(c2, M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + W0) & MASK32
        k1 = (k1 + W1) & MASK32
    return torch.stack((c0, c1, c2, c3), dim=-1)


def uniform(bits: torch.Tensor) -> torch.Tensor:
    """float32 in [2^-24, 1 - 2^-24]: (2 (x >> 9) + 1) * 2^-24 (exact)."""
    return ((bits >> 9) * 2 + 1).to(torch.float32) * TWO_M24


def _open_unit(bits: torch.Tensor) -> torch.Tensor:
    """float32(x) * 2^-32 + 2^-33, each step rounded in float32 like the kernels do."""
    return bits.to(torch.float32) * TWO_M32 + TWO_M33


def log1p_neg(v: torch.Tensor) -> torch.Tensor:
    """log(1 - v) for float32 v in [0, 1): log(w) * t / (w - 1) with t = -v, w = 1 + t."""
    t = -v
    w = 1.0 + t
    exact = w == 1.0
    ratio = torch.log(w) * t / torch.where(exact, torch.ones_like(w), w - 1.0)
    return torch.where(exact, t, ratio)


def exponential(bits: torch.Tensor) -> torch.Tensor:
    """Exponential(1) float32 in [2^-33, 16.64] with 32-bit resolution near 0."""
    v = torch.clamp(_open_unit(bits), max=ONE_MINUS_TWO_M24)
    return -log1p_neg(v)


def gumbel(bits: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel float32: -log(exponential(x))."""
    return -torch.log(exponential(bits))


def normal_pair(bits0: torch.Tensor, bits1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent standard normals (Box-Muller) from two words."""
    u1 = _open_unit(bits0)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    theta = uniform(bits1) * (2.0 * math.pi)
    return radius * torch.cos(theta), radius * torch.sin(theta)


def normal(seed: int, offset: int, index: torch.Tensor) -> torch.Tensor:
    """Standard normal float32 for each flat element index (int64 tensor, >= 0)."""
    words = philox4x32(seed, offset, index >> 32, index & MASK32)
    return normal_pair(words[..., 0], words[..., 1])[0]
