"""Triton kernels of the Bayesian Flow Network ops.

Inputs are contiguous [B, D] (continuous) or [B, D, K] (discrete) tensors. Per-sample losses are
reduced by one program per sample walking its D elements in BLOCK-sized chunks (deterministic,
no atomics); elementwise ops and backward passes use one program per BLOCK elements (or rows of
K classes). Schedule constants that depend only on sigma_1 / n_steps are folded on the host.
Phi is computed from erf (absolute accuracy to rounding; far-tail bin probabilities are less
precise relatively than the Numba/CUDA erfc forms). Signatures mirror gfn_fast.cpu.bfn.
"""

import math

import torch
import triton
import triton.language as tl
from gfn_fast.kernels import _philox as px
from gfn_fast.kernels._common import accumulator, expm1, interpret, scalar

_SIGMA_MIN, _SIGMA_MAX = 1e-3, 10.0
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@triton.jit
def _output_coefficients(t, log_s, t_min):
    """(a, c) with x_hat = a mu - c eps_hat; 0 below t_min (t clamped first so no inf/NaN)."""
    safe_t = tl.maximum(t, t_min)
    g = -expm1(2.0 * safe_t * log_s)
    a = tl.where(t < t_min, 0.0, 1.0 / g)
    c = tl.where(t < t_min, 0.0, tl.sqrt(tl.exp(2.0 * safe_t * log_s) / g))
    return a, c


@triton.jit
def _x_hat(mu, eps_hat, a, c):
    """a mu - c eps_hat, exactly 0 below t_min (a = c = 0 there) whatever eps_hat holds (the
    spec's x_hat = 0: an inf or NaN network output must not turn 0 * eps_hat into NaN)."""
    return tl.where(a == 0.0, 0.0, a * mu - c * eps_hat)


@triton.jit
def _clamp(x, low, high):
    """min(max(x, low), high) keeping NaN (tl.maximum / tl.minimum return the other operand)."""
    return tl.where(x != x, x, tl.minimum(tl.maximum(x, low), high))


@triton.jit
def _continuous_output_kernel(mu_ptr, eps_ptr, t_ptr, out_ptr, n_elements, dims,
                              log_s: tl.float64, t_min: tl.float64, x_min: tl.float64,
                              x_max: tl.float64, CLAMP: tl.constexpr, ACC: tl.constexpr,
                              BLOCK: tl.constexpr):
    log_s = scalar(log_s, ACC)
    t_min = scalar(t_min, ACC)
    x_min = scalar(x_min, ACC)
    x_max = scalar(x_max, ACC)
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = idx < n_elements
    t = tl.load(t_ptr + idx // dims, mask=mask, other=1.0).to(ACC)
    a, c = _output_coefficients(t, log_s, t_min)
    x_hat = _x_hat(tl.load(mu_ptr + idx, mask=mask, other=0.0).to(ACC),
                   tl.load(eps_ptr + idx, mask=mask, other=0.0).to(ACC), a, c)
    if CLAMP:
        x_hat = _clamp(x_hat, x_min, x_max)
    tl.store(out_ptr + idx, x_hat.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _continuous_loss_fwd_kernel(x_ptr, mu_ptr, eps_ptr, t_ptr, out_ptr, unit_ptr, dims,
                                log_s: tl.float64, w_scale: tl.float64, t_min: tl.float64,
                                x_min: tl.float64, x_max: tl.float64, CLAMP: tl.constexpr,
                                UNIT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """out[b] = loss_b; with UNIT also unit[b, d] = d loss_b / d eps_hat[b, d] (zero where x_hat
    is clamped away), so the backward is one multiply by the upstream gradient."""
    log_s = scalar(log_s, ACC)
    w_scale = scalar(w_scale, ACC)
    t_min = scalar(t_min, ACC)
    x_min = scalar(x_min, ACC)
    x_max = scalar(x_max, ACC)
    b = tl.program_id(0).to(tl.int64)
    t = tl.load(t_ptr + b).to(ACC)
    a, c = _output_coefficients(t, log_s, t_min)
    weight = w_scale * tl.exp(-2.0 * t * log_s)
    total = tl.zeros([BLOCK], dtype=ACC)
    row = b * dims
    for d0 in range(0, dims, BLOCK):
        d = d0 + tl.arange(0, BLOCK).to(tl.int64)
        mask = d < dims
        x_hat = _x_hat(tl.load(mu_ptr + row + d, mask=mask, other=0.0).to(ACC),
                       tl.load(eps_ptr + row + d, mask=mask, other=0.0).to(ACC), a, c)
        outside = (x_hat < x_min) | (x_hat > x_max)
        if CLAMP:
            x_hat = _clamp(x_hat, x_min, x_max)
        diff = tl.load(x_ptr + row + d, mask=mask, other=0.0).to(ACC) - x_hat
        total += tl.where(mask, diff * diff, 0.0)
        if UNIT:
            unit = 2.0 * c * weight * diff
            if CLAMP:
                unit = tl.where(outside, 0.0, unit)
            tl.store(unit_ptr + row + d, unit, mask=mask)
    tl.store(out_ptr + b, weight * tl.sum(total, axis=0))


@triton.jit
def _continuous_update_kernel(mu_ptr, rho_ptr, y_ptr, alpha_ptr, out_ptr, n_elements, dims,
                              stride_rho_b, stride_rho_d, ACC: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = idx < n_elements
    b = idx // dims
    d = idx - b * dims
    alpha = tl.load(alpha_ptr + b, mask=mask, other=1.0).to(ACC)
    rho = tl.load(rho_ptr + b * stride_rho_b + d * stride_rho_d, mask=mask, other=1.0).to(ACC)
    mu = tl.load(mu_ptr + idx, mask=mask, other=0.0).to(ACC)
    y = tl.load(y_ptr + idx, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + idx, (mu + alpha / (rho + alpha) * (y - mu)).to(out_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _phi_cdf(z):
    return 0.5 + 0.5 * tl.erf(z * 0.7071067811865476)


@triton.jit
def _discretised_sigma(log_sigma):
    return _clamp(tl.exp(log_sigma), 1e-3, 10.0)


@triton.jit
def _discretised_mean(mu, sigma, n_bins, WANT_GRAD: tl.constexpr):
    """x_hat = k_c(K) - (2/K) sum_{j<K} Phi((e_j - mu)/sigma), e_j = -1 + 2j/K, with
    (2/K) sum phi(z_j) and (2/K) sum phi(z_j) z_j when WANT_GRAD. The width is taken in mu's
    type: 2.0 / n_bins alone is fp32 (an i32 argument), which moved float64 edges of K not a power
    of two by ~1e-8, and bin probabilities at sigma = 1e-3 by ~1e-5."""
    width = 2.0 / tl.full([], n_bins, mu.dtype)
    cdf_sum = tl.zeros_like(mu)
    pdf_sum = tl.zeros_like(mu)
    pdf_z_sum = tl.zeros_like(mu)
    for j in range(1, n_bins):
        z = (j * width - 1.0 - mu) / sigma
        cdf_sum += _phi_cdf(z)
        if WANT_GRAD:
            pdf = 0.3989422804014327 * tl.exp(-0.5 * z * z)
            pdf_sum += pdf
            pdf_z_sum += pdf * z
    return 1.0 - 0.5 * width - width * cdf_sum, width * pdf_sum, width * pdf_z_sum


@triton.jit
def _discretised_loss_fwd_kernel(x_ptr, mu_ptr, log_sigma_ptr, t_ptr, out_ptr, dims, n_bins,
                                 log_s: tl.float64, w_scale: tl.float64, ACC: tl.constexpr,
                                 BLOCK: tl.constexpr):
    log_s = scalar(log_s, ACC)
    w_scale = scalar(w_scale, ACC)
    b = tl.program_id(0).to(tl.int64)
    row = b * dims
    total = tl.zeros([BLOCK], dtype=ACC)
    for d0 in range(0, dims, BLOCK):
        d = d0 + tl.arange(0, BLOCK).to(tl.int64)
        mask = d < dims
        mu = tl.load(mu_ptr + row + d, mask=mask, other=0.0).to(ACC)
        sigma = _discretised_sigma(tl.load(log_sigma_ptr + row + d, mask=mask, other=0.0).to(ACC))
        x_hat, _, _ = _discretised_mean(mu, sigma, n_bins, False)
        diff = tl.load(x_ptr + row + d, mask=mask, other=0.0).to(ACC) - x_hat
        total += tl.where(mask, diff * diff, 0.0)
    t = tl.load(t_ptr + b).to(ACC)
    tl.store(out_ptr + b, w_scale * tl.exp(-2.0 * t * log_s) * tl.sum(total, axis=0))


@triton.jit
def _discretised_loss_bwd_kernel(grad_ptr, x_ptr, mu_ptr, log_sigma_ptr, t_ptr, grad_mu_ptr,
                                 grad_log_sigma_ptr, n_elements, dims, n_bins, log_s: tl.float64,
                                 w_scale: tl.float64, ACC: tl.constexpr, BLOCK: tl.constexpr):
    log_s = scalar(log_s, ACC)
    w_scale = scalar(w_scale, ACC)
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = idx < n_elements
    b = idx // dims
    t = tl.load(t_ptr + b, mask=mask, other=0.0).to(ACC)
    scale = 2.0 * tl.load(grad_ptr + b, mask=mask, other=0.0).to(ACC) * w_scale \
        * tl.exp(-2.0 * t * log_s)
    mu = tl.load(mu_ptr + idx, mask=mask, other=0.0).to(ACC)
    raw_sigma = tl.exp(tl.load(log_sigma_ptr + idx, mask=mask, other=0.0).to(ACC))
    sigma = _clamp(raw_sigma, 1e-3, 10.0)
    x_hat, pdf_sum, pdf_z_sum = _discretised_mean(mu, sigma, n_bins, True)
    g = scale * (x_hat - tl.load(x_ptr + idx, mask=mask, other=0.0).to(ACC))
    inside = (raw_sigma >= 1e-3) & (raw_sigma <= 10.0)
    tl.store(grad_mu_ptr + idx, (g * pdf_sum / sigma).to(grad_mu_ptr.dtype.element_ty),
             mask=mask)
    tl.store(grad_log_sigma_ptr + idx,
             tl.where(inside, g * pdf_z_sum, 0.0).to(grad_log_sigma_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _discretised_probs_kernel(mu_ptr, log_sigma_ptr, out_ptr, n_rows, n_bins, ACC: tl.constexpr,
                              BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_mask = rows < n_rows
    mu = tl.load(mu_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    sigma = _discretised_sigma(tl.load(log_sigma_ptr + rows, mask=row_mask, other=0.0).to(ACC))
    width = 2.0 / tl.full([], n_bins, ACC)  # in ACC, not fp32 (see _discretised_mean)
    for k0 in range(0, n_bins, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        z_left = ((k * width - 1.0)[None, :] - mu[:, None]) / sigma[:, None]
        z_right = (((k + 1) * width - 1.0)[None, :] - mu[:, None]) / sigma[:, None]
        cdf_left = tl.where((k == 0)[None, :], 0.0, _phi_cdf(z_left))
        cdf_right = tl.where((k == n_bins - 1)[None, :], 1.0, _phi_cdf(z_right))
        mask = row_mask[:, None] & (k < n_bins)[None, :]
        tl.store(out_ptr + rows[:, None] * n_bins + k[None, :],
                 (cdf_right - cdf_left).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_tile(logits_ptr, offsets, mask, ACC: tl.constexpr):
    """Probabilities of a [R, BLOCK_K] tile of logit rows (masked classes get 0)."""
    logits = tl.load(logits_ptr + offsets, mask=mask, other=float("-inf")).to(ACC)
    m = tl.max(logits, axis=1)
    m = tl.where(m == float("-inf"), 0.0, m)
    e = tl.where(mask, tl.exp(logits - m[:, None]), 0.0)
    return e / tl.sum(e, axis=1)[:, None]


@triton.jit
def _discrete_loss_fwd_kernel(x_index_ptr, logits_ptr, t_ptr, out_ptr, dims, n_classes,
                              beta_1: tl.float64, ACC: tl.constexpr, BLOCK_D: tl.constexpr,
                              BLOCK_K: tl.constexpr):
    """sum_k (p_k - e_x)^2 = sum_{k != x} p_k^2 + q^2, q = sum_{k != x} p_k: 1 - p_x is never
    formed (it cancels when p_x nears 1; gfn_fast/cpu/bfn.py)."""
    beta_1 = scalar(beta_1, ACC)
    b = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK_K)
    total = tl.zeros([BLOCK_D], dtype=ACC)
    for d0 in range(0, dims, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        row = b * dims + d
        mask = (d < dims)[:, None] & (k < n_classes)[None, :]
        p = _softmax_tile(logits_ptr, row[:, None] * n_classes + k[None, :], mask, ACC)
        target = tl.load(x_index_ptr + row, mask=d < dims, other=-1)
        # (rows past D have 0/0 probabilities: masked out here)
        others = tl.where(mask & (k[None, :] != target[:, None]), p, 0.0)
        q = tl.sum(others, axis=1)
        total += tl.sum(others * others, axis=1) + q * q
    t = tl.load(t_ptr + b).to(ACC)
    tl.store(out_ptr + b, n_classes * beta_1 * t * tl.sum(total, axis=0))


@triton.jit
def _discrete_loss_bwd_kernel(grad_ptr, x_index_ptr, logits_ptr, t_ptr, out_ptr, n_rows, dims,
                              n_classes, beta_1: tl.float64, ACC: tl.constexpr,
                              BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    beta_1 = scalar(beta_1, ACC)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_mask = rows < n_rows
    k = tl.arange(0, BLOCK_K)
    mask = row_mask[:, None] & (k < n_classes)[None, :]
    offsets = rows[:, None] * n_classes + k[None, :]
    p = _softmax_tile(logits_ptr, offsets, mask, ACC)
    b = rows // dims
    c = 2.0 * n_classes * beta_1 * tl.load(t_ptr + b, mask=row_mask, other=0.0).to(ACC) \
        * tl.load(grad_ptr + b, mask=row_mask, other=0.0).to(ACC)
    target = tl.load(x_index_ptr + rows, mask=row_mask, other=-1)
    # c p_j (r_j - sum_k r_k p_k), r = p - e_x, as p_j + q p_x - S (j != x) and -(S + q^2)
    # (j = x), S = sum_{k != x} p_k^2, q = sum_{k != x} p_k (gfn_fast/cpu/bfn.py)
    hot = k[None, :] == target[:, None]
    others = tl.where(hot, 0.0, p)
    q = tl.sum(others, axis=1)
    sum_sq = tl.sum(others * others, axis=1)
    p_x = tl.sum(p - others, axis=1)
    g = tl.where(hot, -(sum_sq + q * q)[:, None], p + (q * p_x - sum_sq)[:, None])
    tl.store(out_ptr + offsets, (c[:, None] * p * g).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _discrete_update_kernel(log_theta_ptr, y_ptr, out_ptr, n_rows, n_classes, ACC: tl.constexpr,
                            BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    k = tl.arange(0, BLOCK_K)
    mask = (rows < n_rows)[:, None] & (k < n_classes)[None, :]
    offsets = rows[:, None] * n_classes + k[None, :]
    z = tl.load(log_theta_ptr + offsets, mask=mask, other=float("-inf")).to(ACC) \
        + tl.load(y_ptr + offsets, mask=mask, other=0.0).to(ACC)
    m = tl.max(z, axis=1)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    lse = m_safe + tl.log(tl.sum(tl.where(mask, tl.exp(z - m_safe[:, None]), 0.0), axis=1))
    tl.store(out_ptr + offsets, (z - lse[:, None]).to(out_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------- noisy ops
# Noise contract: gfn_fast/reference/bfn.py ("noise"). Seeds and offsets arrive as 32-bit halves.

@triton.jit
def _block_words(block, seed_lo, seed_hi, off_lo, off_hi):
    """The four words of Philox block `block` (int64 tensor), at (block >> 32, block mod 2^32)."""
    k0, k1 = px.seed_key(seed_lo, seed_hi)
    c0 = (block & 0xFFFFFFFF).to(tl.uint32)
    c1 = (block >> 32).to(tl.uint32)
    c2 = tl.zeros_like(c0) + off_lo.to(tl.uint32)
    c3 = tl.zeros_like(c0) + off_hi.to(tl.uint32)
    return px.philox4x32(k0, k1, c0, c1, c2, c3)


@triton.jit
def _block_normals(block, seed_lo, seed_hi, off_lo, off_hi):
    """The four normals of each Philox block of `block`: the (cos, sin) Box-Muller pairs of
    words (0, 1) and of words (2, 3)."""
    w0, w1, w2, w3 = _block_words(block, seed_lo, seed_hi, off_lo, off_hi)
    cos_01, sin_01 = px.normal_pair(w0, w1)
    cos_23, sin_23 = px.normal_pair(w2, w3)
    return cos_01, sin_01, cos_23, sin_23


@triton.jit
def _quad_normals(first_block, seed_lo, seed_hi, off_lo, off_hi, QUADS: tl.constexpr):
    """Normals 4 first_block ... 4 (first_block + QUADS) - 1 of the stream as a flat
    [4 QUADS] tensor, each Philox block drawn once and both normals of each Box-Muller pair
    kept (drawing a block and a pair for each normal took ~1.5x the instructions per element
    of the discrete flow, static SASS count for sm_90)."""
    block = first_block + tl.arange(0, QUADS).to(tl.int64)
    cos_01, sin_01, cos_23, sin_23 = _block_normals(block, seed_lo, seed_hi, off_lo, off_hi)
    # [QUADS, pair, cos/sin] flattens to stream order
    return tl.reshape(tl.join(tl.join(cos_01, cos_23), tl.join(sin_01, sin_23)), [4 * QUADS])


@triton.jit
def _row_normals(first_row, offsets, mask, n_classes, seed_lo, seed_hi, off_lo, off_hi,
                 BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, QUADS: tl.constexpr):
    """Normals `offsets` (rows * K + k) of a [BLOCK_R, BLOCK_K] tile whose rows lie in
    [first_row, first_row + BLOCK_R): the QUADS blocks from the one holding normal
    first_row * K (`_quads`) drawn once, then gathered."""
    first_block = (first_row * n_classes) >> 2
    flat = _quad_normals(first_block, seed_lo, seed_hi, off_lo, off_hi, QUADS)
    local = tl.where(mask, offsets - 4 * first_block, 0)
    picked = tl.gather(flat, tl.reshape(local.to(tl.int32), [BLOCK_R * BLOCK_K]), 0)
    return tl.reshape(picked, [BLOCK_R, BLOCK_K])


@triton.jit
def _uniform(row, seed_lo, seed_hi, off_lo, off_hi):
    """The uniform-stream draw of row r: word 0 of block (2^31 | r >> 32, r mod 2^32)."""
    k0, k1 = px.seed_key(seed_lo, seed_hi)
    c0 = (row & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((row >> 32) | 0x80000000).to(tl.uint32)
    c2 = tl.zeros_like(c0) + off_lo.to(tl.uint32)
    c3 = tl.zeros_like(c0) + off_hi.to(tl.uint32)
    w0, _, _, _ = px.philox4x32(k0, k1, c0, c1, c2, c3)
    return px.uniform(w0)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _continuous_flow_kernel(x_ptr, t_ptr, out_ptr, n_elements, dims, log_s: tl.float64, seed_lo,
                            seed_hi, off_lo, off_hi, ACC: tl.constexpr, BLOCK: tl.constexpr):
    log_s = scalar(log_s, ACC)
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = idx < n_elements
    t = tl.load(t_ptr + idx // dims, mask=mask, other=0.0).to(ACC)
    g = -expm1(2.0 * t * log_s)
    spread = tl.sqrt(g * tl.exp(2.0 * t * log_s))
    eps = _quad_normals(tl.program_id(0).to(tl.int64) * (BLOCK // 4), seed_lo, seed_hi, off_lo,
                        off_hi, BLOCK // 4).to(ACC)
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + idx, (g * x + spread * eps).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sender(target, k, alpha, spread, eps, n_classes):
    """y = alpha (K e_target - 1) + sqrt(alpha K) eps for a [R, BLOCK_K] tile."""
    hot = tl.where(k[None, :] == target[:, None], n_classes * 1.0, 0.0)
    return alpha[:, None] * (hot - 1.0) + spread[:, None] * eps


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _discrete_flow_kernel(x_index_ptr, t_ptr, out_ptr, n_rows, dims, n_classes,
                          beta_1: tl.float64, seed_lo, seed_hi, off_lo, off_hi, LOG: tl.constexpr,
                          ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                          QUADS: tl.constexpr):
    beta_1 = scalar(beta_1, ACC)
    first_row = tl.program_id(0).to(tl.int64) * BLOCK_R
    rows = first_row + tl.arange(0, BLOCK_R).to(tl.int64)
    row_mask = rows < n_rows
    k = tl.arange(0, BLOCK_K)
    mask = row_mask[:, None] & (k < n_classes)[None, :]
    offsets = rows[:, None] * n_classes + k[None, :]
    t = tl.load(t_ptr + rows // dims, mask=row_mask, other=0.0).to(ACC)
    beta_t = beta_1 * t * t
    target = tl.load(x_index_ptr + rows, mask=row_mask, other=0)
    eps = _row_normals(first_row, offsets, mask, n_classes, seed_lo, seed_hi, off_lo, off_hi,
                       BLOCK_R, BLOCK_K, QUADS).to(ACC)
    y = _sender(target, k, beta_t, tl.sqrt(beta_t * n_classes), eps, n_classes)
    y = tl.where(mask, y, float("-inf"))
    m = tl.max(y, axis=1)
    m = tl.where(row_mask, m, 0.0)
    lse = m + tl.log(tl.sum(tl.where(mask, tl.exp(y - m[:, None]), 0.0), axis=1))
    if LOG:
        out = y - lse[:, None]
    else:
        out = tl.exp(y - lse[:, None])
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _nstep_tile(x_index_ptr, logits_ptr, first_row, rows, row_mask, k, alpha, n_classes, seed_lo,
                seed_hi, off_lo, off_hi, ACC: tl.constexpr, BLOCK_R: tl.constexpr,
                BLOCK_K: tl.constexpr, QUADS: tl.constexpr):
    """For a tile of (b, d) rows: (p_O [R, BLOCK_K], z = ln p_O + y, logsumexp(z) [R],
    y_target [R])."""
    mask = row_mask[:, None] & (k < n_classes)[None, :]
    offsets = rows[:, None] * n_classes + k[None, :]
    logits = tl.load(logits_ptr + offsets, mask=mask, other=float("-inf")).to(ACC)
    m_l = tl.where(row_mask, tl.max(logits, axis=1), 0.0)
    e = tl.where(mask, tl.exp(logits - m_l[:, None]), 0.0)
    s_l = tl.sum(e, axis=1)
    s_l = tl.where(row_mask, s_l, 1.0)
    p = e / s_l[:, None]
    target = tl.load(x_index_ptr + rows, mask=row_mask, other=0)
    eps = _row_normals(first_row, offsets, mask, n_classes, seed_lo, seed_hi, off_lo, off_hi,
                       BLOCK_R, BLOCK_K, QUADS).to(ACC)
    y = _sender(target, k, alpha, tl.sqrt(alpha * n_classes), eps, n_classes)
    z = tl.where(mask, logits - (m_l + tl.log(s_l))[:, None] + y, float("-inf"))
    m = tl.where(row_mask, tl.max(z, axis=1), 0.0)
    lse = m + tl.log(tl.sum(tl.where(mask, tl.exp(z - m[:, None]), 0.0), axis=1))
    y_target = tl.sum(tl.where(k[None, :] == target[:, None], y, 0.0), axis=1)
    return p, z, lse, y_target


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _discrete_nstep_fwd_kernel(x_index_ptr, logits_ptr, t_ptr, out_ptr, dims, n_classes,
                               beta_1: tl.float64, n_steps: tl.float64, seed_lo, seed_hi,
                               off_lo, off_hi, ACC: tl.constexpr, BLOCK_D: tl.constexpr,
                               BLOCK_K: tl.constexpr, QUADS: tl.constexpr):
    beta_1 = scalar(beta_1, ACC)
    n_steps = scalar(n_steps, ACC)  # a float: as an i32, n_steps * n_steps overflows at 46341
    b = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK_K)
    t = tl.load(t_ptr + b).to(ACC)
    alpha_b = beta_1 * (2.0 * t * n_steps + 1.0) / (n_steps * n_steps)
    total = tl.zeros([BLOCK_D], dtype=ACC)
    for d0 in range(0, dims, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        row_mask = d < dims
        alpha = tl.zeros([BLOCK_D], dtype=ACC) + alpha_b
        _, _, lse, y_target = _nstep_tile(x_index_ptr, logits_ptr, b * dims + d0, b * dims + d,
                                          row_mask, k, alpha, n_classes, seed_lo, seed_hi, off_lo,
                                          off_hi, ACC, BLOCK_D, BLOCK_K, QUADS)
        total += tl.where(row_mask, y_target - lse, 0.0)
    tl.store(out_ptr + b, n_steps * tl.sum(total, axis=0))


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _discrete_nstep_bwd_kernel(grad_ptr, x_index_ptr, logits_ptr, t_ptr, out_ptr, n_rows, dims,
                               n_classes, beta_1: tl.float64, n_steps: tl.float64, seed_lo,
                               seed_hi, off_lo, off_hi, ACC: tl.constexpr, BLOCK_R: tl.constexpr,
                               BLOCK_K: tl.constexpr, QUADS: tl.constexpr):
    beta_1 = scalar(beta_1, ACC)
    n_steps = scalar(n_steps, ACC)  # a float (see the forward)
    first_row = tl.program_id(0).to(tl.int64) * BLOCK_R
    rows = first_row + tl.arange(0, BLOCK_R).to(tl.int64)
    row_mask = rows < n_rows
    k = tl.arange(0, BLOCK_K)
    b = rows // dims
    t = tl.load(t_ptr + b, mask=row_mask, other=0.0).to(ACC)
    alpha = beta_1 * (2.0 * t * n_steps + 1.0) / (n_steps * n_steps)
    p, z, lse, _ = _nstep_tile(x_index_ptr, logits_ptr, first_row, rows, row_mask, k, alpha,
                               n_classes, seed_lo, seed_hi, off_lo, off_hi, ACC, BLOCK_R, BLOCK_K,
                               QUADS)
    scale = n_steps * tl.load(grad_ptr + b, mask=row_mask, other=0.0).to(ACC)
    g = scale[:, None] * (p - tl.exp(z - lse[:, None]))
    mask = row_mask[:, None] & (k < n_classes)[None, :]
    tl.store(out_ptr + rows[:, None] * n_classes + k[None, :],
             g.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _continuous_step_kernel(mu_ptr, rho_ptr, eps_hat_ptr, n_elements, dims, a: tl.float64,
                            c: tl.float64, inv_sqrt_alpha: tl.float64, alpha: tl.float64,
                            x_min: tl.float64, x_max: tl.float64, seed_lo, seed_hi, off_lo,
                            off_hi, CLAMP: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    a = scalar(a, ACC)
    c = scalar(c, ACC)
    inv_sqrt_alpha = scalar(inv_sqrt_alpha, ACC)
    alpha = scalar(alpha, ACC)
    x_min = scalar(x_min, ACC)
    x_max = scalar(x_max, ACC)
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = idx < n_elements
    rho = tl.load(rho_ptr + idx // dims, mask=mask, other=1.0).to(ACC)
    mu = tl.load(mu_ptr + idx, mask=mask, other=0.0).to(ACC)
    x_hat = _x_hat(mu, tl.load(eps_hat_ptr + idx, mask=mask, other=0.0).to(ACC), a, c)
    if CLAMP:
        x_hat = _clamp(x_hat, x_min, x_max)
    eps = _quad_normals(tl.program_id(0).to(tl.int64) * (BLOCK // 4), seed_lo, seed_hi, off_lo,
                        off_hi, BLOCK // 4)
    y = x_hat + inv_sqrt_alpha * eps.to(ACC)
    gain = alpha / (rho + alpha)
    tl.store(mu_ptr + idx, (mu + gain * (y - mu)).to(mu_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _discretised_step_kernel(mu_ptr, rho_ptr, mu_x_ptr, log_sigma_ptr, draw_ptr, n_elements, dims,
                             n_bins, inv_sqrt_alpha: tl.float64, alpha: tl.float64, seed_lo,
                             seed_hi, off_lo, off_hi, UPDATE: tl.constexpr, ACC: tl.constexpr,
                             BLOCK: tl.constexpr):
    inv_sqrt_alpha = scalar(inv_sqrt_alpha, ACC)
    alpha = scalar(alpha, ACC)
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = idx < n_elements
    block = tl.program_id(0).to(tl.int64) * (BLOCK // 2) + tl.arange(0, BLOCK // 2).to(tl.int64)
    cos_01, sin_01, cos_23, sin_23 = _block_normals(block, seed_lo, seed_hi, off_lo, off_hi)
    eps_draw = tl.reshape(tl.join(cos_01, cos_23), [BLOCK])
    eps_send = tl.reshape(tl.join(sin_01, sin_23), [BLOCK])
    sigma = _discretised_sigma(tl.load(log_sigma_ptr + idx, mask=mask, other=0.0).to(ACC))
    value = tl.load(mu_x_ptr + idx, mask=mask, other=0.0).to(ACC) + sigma * eps_draw.to(ACC)
    k = _clamp(tl.floor((value + 1.0) * (0.5 * n_bins)), 0.0, n_bins - 1.0)
    centre = (2.0 * k + 1.0) / n_bins - 1.0
    tl.store(draw_ptr + idx, centre.to(draw_ptr.dtype.element_ty), mask=mask)
    if UPDATE:
        rho = tl.load(rho_ptr + idx // dims, mask=mask, other=1.0).to(ACC)
        mu = tl.load(mu_ptr + idx, mask=mask, other=0.0).to(ACC)
        y = centre + inv_sqrt_alpha * eps_send.to(ACC)
        tl.store(mu_ptr + idx, (mu + alpha / (rho + alpha) * (y - mu)).to(mu_ptr.dtype.element_ty),
                 mask=mask)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _discrete_step_kernel(log_theta_ptr, logits_ptr, draw_ptr, n_rows, n_classes,
                          alpha: tl.float64, spread: tl.float64, seed_lo, seed_hi, off_lo, off_hi,
                          UPDATE: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_K: tl.constexpr, QUADS: tl.constexpr):
    alpha = scalar(alpha, ACC)
    spread = scalar(spread, ACC)
    first_row = tl.program_id(0).to(tl.int64) * BLOCK_R
    rows = first_row + tl.arange(0, BLOCK_R).to(tl.int64)
    row_mask = rows < n_rows
    k = tl.arange(0, BLOCK_K)
    mask = row_mask[:, None] & (k < n_classes)[None, :]
    offsets = rows[:, None] * n_classes + k[None, :]
    logits = tl.load(logits_ptr + offsets, mask=mask, other=float("-inf")).to(ACC)
    m_l = tl.where(row_mask, tl.max(logits, axis=1), 0.0)
    e = tl.where(mask, tl.exp(logits - m_l[:, None]), 0.0)
    # Inverse CDF with the row's uniform: the first k whose running sum exceeds u * total
    # (counted as the number of running sums <= the target).
    u = _uniform(rows, seed_lo, seed_hi, off_lo, off_hi).to(ACC)
    target = u * tl.sum(e, axis=1)
    below = tl.where(mask & (tl.cumsum(e, axis=1) <= target[:, None]), 1, 0)
    chosen = tl.minimum(tl.sum(below, axis=1), n_classes - 1)
    tl.store(draw_ptr + rows, chosen.to(tl.int64), mask=row_mask)
    if UPDATE:
        eps = _row_normals(first_row, offsets, mask, n_classes, seed_lo, seed_hi, off_lo,
                           off_hi, BLOCK_R, BLOCK_K, QUADS)
        hot = tl.where(k[None, :] == chosen[:, None], n_classes * 1.0, 0.0)
        z = tl.load(log_theta_ptr + offsets, mask=mask, other=0.0).to(ACC) \
            + alpha * (hot - 1.0) + spread * eps.to(ACC)
        z = tl.where(mask, z, float("-inf"))
        m = tl.where(row_mask, tl.max(z, axis=1), 0.0)
        lse = m + tl.log(tl.sum(tl.where(mask, tl.exp(z - m[:, None]), 0.0), axis=1))
        tl.store(log_theta_ptr + offsets, (z - lse[:, None]).to(log_theta_ptr.dtype.element_ty),
                 mask=mask)


# --------------------------------------------------------------------------------- launchers

def _acc(*tensors) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _block(n: int, compiled_cap: int = 1024) -> int:
    """Elements per program: more under the interpreter, where each program costs Python time."""
    cap = 16384 if interpret() else compiled_cap
    return min(cap, triton.next_power_of_2(max(n, 1)))


# Elements per program of the [rows, K] kernels when compiled. With 4096 (BLOCK_R = 128 at
# K <= 32), the kernels then drawing a Philox block and a Box-Muller pair per element ran out of
# registers (255 per thread) and spilled 150-3400 bytes per thread to local memory (ptxas -v for
# sm_90a); these sizes spill nothing, which the ahead-of-time compile tests check
# (tests/triton_compile.py). The noise is now drawn once per block (`_row_normals`); the tiles
# await a GPU to retime them.
_ROW_TILE = 2048    # losses and updates without noise
_FLOW_TILE = 1024   # discrete flow
_NOISE_TILE = 512   # n-step loss and generation step: noise plus a K-way mixture or draw
_MAX_BLOCK_K = 1 << 20  # Triton's largest tensor (triton.language.core.TRITON_MAX_TENSOR_NUMEL)


def _row_block(n_classes: int, tile: int = _ROW_TILE) -> tuple[int, int]:
    """(rows, BLOCK_K) of a program over [rows, K] tiles of `tile` elements (compiled). A row
    of K is one tile, within Triton's largest tensor (2^20 elements)."""
    block_k = triton.next_power_of_2(n_classes)
    if block_k > _MAX_BLOCK_K:
        raise ValueError(f"gfn_fast: the triton backend's discrete BFN ops take at most "
                         f"{_MAX_BLOCK_K} classes (a row of K is one tile), got K = {n_classes}; "
                         f"the numba, cuda and reference backends take more")
    return max(1, (16384 if interpret() else tile) // block_k), block_k


def _quads(block_r: int, n_classes: int, aligned: bool | None = None) -> int:
    """Philox blocks covering the normals of block_r consecutive rows of K (`_row_normals`):
    block_r K of them, starting at a block's first normal when `aligned`, else anywhere in it.
    By default the tiles start at rows that are multiples of block_r."""
    if aligned is None:
        aligned = block_r * n_classes % 4 == 0
    return triton.next_power_of_2(triton.cdiv(block_r * n_classes + (0 if aligned else 3), 4))


def loss_weight_scale(sigma_1: float, n_steps: int) -> float:
    """w(t) = scale * sigma_1^(-2t): -ln sigma_1 (continuous time) or (n/2)(sigma_1^(-2/n) - 1)."""
    log_s = math.log(sigma_1)
    return -log_s if n_steps == 0 else 0.5 * n_steps * math.expm1(-2.0 * log_s / n_steps)


def continuous_output(mu, eps_hat, t, sigma_1, t_min, x_min, x_max, clamp):
    out = torch.empty_like(mu)
    n = mu.numel()
    block = _block(n)
    _continuous_output_kernel[(triton.cdiv(n, block),)](
        mu, eps_hat, t, out, n, mu.shape[1], math.log(sigma_1), t_min, x_min, x_max,
        CLAMP=clamp, ACC=accumulator(_acc(mu, eps_hat)), BLOCK=block)
    return out


def continuous_loss_forward(x, mu, eps_hat, t, sigma_1, n_steps, t_min, x_min, x_max, clamp,
                            want_unit):
    acc = _acc(x, mu, eps_hat)
    out = torch.empty(x.shape[0], dtype=acc, device=x.device)
    unit = torch.empty(x.shape if want_unit else (1, 1), dtype=acc, device=x.device)
    _continuous_loss_fwd_kernel[(x.shape[0],)](
        x, mu, eps_hat, t, out, unit, x.shape[1], math.log(sigma_1),
        loss_weight_scale(sigma_1, n_steps), t_min, x_min, x_max, CLAMP=clamp,
        UNIT=bool(want_unit), ACC=accumulator(acc), BLOCK=_block(x.shape[1]))
    return out, (unit if want_unit else None)


def continuous_update(mu, rho, y, alpha):
    out = torch.empty_like(mu)
    n = mu.numel()
    block = _block(n)
    _continuous_update_kernel[(triton.cdiv(n, block),)](
        mu, rho, y, alpha, out, n, mu.shape[1], rho.stride(0), rho.stride(1),
        ACC=accumulator(_acc(mu, rho, y, alpha)), BLOCK=block)
    return out


def discretised_loss_forward(x, mu_x, log_sigma_x, t, sigma_1, n_steps, n_bins):
    acc = _acc(x, mu_x, log_sigma_x)
    out = torch.empty(x.shape[0], dtype=acc, device=x.device)
    _discretised_loss_fwd_kernel[(x.shape[0],)](
        x, mu_x, log_sigma_x, t, out, x.shape[1], n_bins, math.log(sigma_1),
        loss_weight_scale(sigma_1, n_steps), ACC=accumulator(acc),
        BLOCK=min(_block(x.shape[1]), 1024 if interpret() else 256))
    return out


def discretised_loss_backward(grad, x, mu_x, log_sigma_x, t, sigma_1, n_steps, n_bins):
    grad_mu = torch.empty_like(mu_x)
    grad_log_sigma = torch.empty_like(log_sigma_x)
    n = x.numel()
    block = min(_block(n), 1024 if interpret() else 256)
    _discretised_loss_bwd_kernel[(triton.cdiv(n, block),)](
        grad, x, mu_x, log_sigma_x, t, grad_mu, grad_log_sigma, n, x.shape[1], n_bins,
        math.log(sigma_1), loss_weight_scale(sigma_1, n_steps),
        ACC=accumulator(_acc(x, mu_x, log_sigma_x)), BLOCK=block)
    return grad_mu, grad_log_sigma


def discretised_probs(mu_x, log_sigma_x, n_bins):
    acc = _acc(mu_x, log_sigma_x)
    n_rows = mu_x.shape[0]
    out = torch.empty((n_rows, n_bins), dtype=acc, device=mu_x.device)
    block_r, block_k = _row_block(min(n_bins, 256))
    _discretised_probs_kernel[(triton.cdiv(n_rows, block_r),)](
        mu_x, log_sigma_x, out, n_rows, n_bins, ACC=accumulator(acc), BLOCK_R=block_r,
        BLOCK_K=block_k)
    return out


def discrete_loss_forward(x_index, logits, t, beta_1):
    acc = _acc(logits)
    batch, dims, n_classes = logits.shape
    out = torch.empty(batch, dtype=acc, device=logits.device)
    block_d, block_k = _row_block(n_classes)
    _discrete_loss_fwd_kernel[(batch,)](
        x_index, logits, t, out, dims, n_classes, beta_1, ACC=accumulator(acc),
        BLOCK_D=min(block_d, triton.next_power_of_2(max(dims, 1))), BLOCK_K=block_k)
    return out


def discrete_loss_backward(grad, x_index, logits, t, beta_1):
    batch, dims, n_classes = logits.shape
    out = torch.empty_like(logits)
    n_rows = batch * dims
    block_r, block_k = _row_block(n_classes)
    _discrete_loss_bwd_kernel[(triton.cdiv(n_rows, block_r),)](
        grad, x_index, logits, t, out, n_rows, dims, n_classes, beta_1,
        ACC=accumulator(_acc(logits)), BLOCK_R=block_r, BLOCK_K=block_k)
    return out


def discrete_update(log_theta, y):
    n_classes = log_theta.shape[-1]
    n_rows = log_theta.numel() // n_classes
    out = torch.empty_like(log_theta)
    block_r, block_k = _row_block(n_classes)
    _discrete_update_kernel[(triton.cdiv(n_rows, block_r),)](
        log_theta, y, out, n_rows, n_classes, ACC=accumulator(_acc(log_theta, y)),
        BLOCK_R=block_r, BLOCK_K=block_k)
    return out


def _key(seed: int, offset: int) -> tuple[int, int, int, int]:
    """(seed_lo, seed_hi, off_lo, off_hi) 32-bit halves; seed/offset may be signed 64-bit."""
    mask = 0xFFFFFFFF
    return seed & mask, (seed >> 32) & mask, offset & mask, (offset >> 32) & mask


def continuous_flow(x, t, sigma_1, seed, offset):
    out = torch.empty_like(x)
    n = x.numel()
    block = max(4, _block(n))  # whole Philox blocks per program
    _continuous_flow_kernel[(triton.cdiv(n, block),)](
        x, t, out, n, x.shape[1], math.log(sigma_1), *_key(seed, offset),
        ACC=accumulator(_acc(x)), BLOCK=block)
    return out


def discrete_flow(x_index, t, beta_1, n_classes, seed, offset, log):
    batch, dims = x_index.shape
    out = torch.empty((batch, dims, n_classes), dtype=t.dtype, device=t.device)
    n_rows = batch * dims
    block_r, block_k = _row_block(n_classes, _FLOW_TILE)
    _discrete_flow_kernel[(triton.cdiv(n_rows, block_r),)](
        x_index, t, out, n_rows, dims, n_classes, beta_1, *_key(seed, offset), LOG=bool(log),
        ACC=accumulator(t.dtype), BLOCK_R=block_r, BLOCK_K=block_k,
        QUADS=_quads(block_r, n_classes))
    return out


def discrete_nstep_loss_forward(x_index, logits, t, beta_1, n_steps, seed, offset):
    acc = _acc(logits)
    batch, dims, n_classes = logits.shape
    out = torch.empty(batch, dtype=acc, device=logits.device)
    block_d, block_k = _row_block(n_classes, _NOISE_TILE)
    block_d = min(block_d, triton.next_power_of_2(max(dims, 1)))
    # a program's tiles start at rows b dims + d0
    aligned = dims * n_classes % 4 == 0 and block_d * n_classes % 4 == 0
    _discrete_nstep_fwd_kernel[(batch,)](
        x_index, logits, t, out, dims, n_classes, beta_1, float(n_steps), *_key(seed, offset),
        ACC=accumulator(acc), BLOCK_D=block_d, BLOCK_K=block_k,
        QUADS=_quads(block_d, n_classes, aligned))
    return out


def discrete_nstep_loss_backward(grad, x_index, logits, t, beta_1, n_steps, seed, offset):
    batch, dims, n_classes = logits.shape
    out = torch.empty_like(logits)
    n_rows = batch * dims
    block_r, block_k = _row_block(n_classes, _NOISE_TILE)
    _discrete_nstep_bwd_kernel[(triton.cdiv(n_rows, block_r),)](
        grad, x_index, logits, t, out, n_rows, dims, n_classes, beta_1, float(n_steps),
        *_key(seed, offset), ACC=accumulator(_acc(logits)), BLOCK_R=block_r, BLOCK_K=block_k,
        QUADS=_quads(block_r, n_classes))
    return out


def continuous_step(mu, rho, eps_hat, a, c, alpha, x_min, x_max, clamp, seed, offset):
    n = mu.numel()
    # whole Philox blocks per program; 1024 spilled 8 bytes per thread at fp16/bf16 with a clamp
    block = max(4, _block(n, _NOISE_TILE))
    _continuous_step_kernel[(triton.cdiv(n, block),)](
        mu, rho, eps_hat, n, mu.shape[1], a, c, 1.0 / math.sqrt(alpha), alpha, x_min, x_max,
        *_key(seed, offset), CLAMP=bool(clamp), ACC=accumulator(_acc(mu, eps_hat)), BLOCK=block)


def discretised_step(mu, rho, mu_x, log_sigma_x, n_bins, alpha, seed, offset, update, draw):
    n = mu_x.numel()
    block = max(2, _block(n, _NOISE_TILE))  # whole Philox blocks per program
    _discretised_step_kernel[(triton.cdiv(n, block),)](
        mu, rho, mu_x, log_sigma_x, draw, n, mu_x.shape[1], n_bins, 1.0 / math.sqrt(alpha),
        alpha, *_key(seed, offset), UPDATE=bool(update),
        ACC=accumulator(_acc(mu_x, log_sigma_x)), BLOCK=block)


def discrete_step(log_theta, logits, alpha, seed, offset, update, draw):
    n_classes = logits.shape[-1]
    n_rows = logits.numel() // n_classes
    block_r, block_k = _row_block(n_classes, _NOISE_TILE)
    _discrete_step_kernel[(triton.cdiv(n_rows, block_r),)](
        log_theta, logits, draw, n_rows, n_classes, alpha, math.sqrt(alpha * n_classes),
        *_key(seed, offset), UPDATE=bool(update), ACC=accumulator(_acc(logits)),
        BLOCK_R=block_r, BLOCK_K=block_k,
        QUADS=_quads(block_r, n_classes))
