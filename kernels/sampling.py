"""Triton kernels of masked, logit-scaled, epsilon-exploring action sampling.

A program owns BLOCK_R rows and one chunk of their columns, walked in tiles of BLOCK_P column
*pairs*: one Philox block (row, pair) feeds both columns of a pair (words 0/1 the even column,
2/3 the odd one), so each tile is processed as an even half and an odd half. Per row the program
keeps a streaming max / sum of exponentials / entropy tilt, the Gumbel-max argmax of the policy
branch and the uint32-key argmax of the uniform branch (ties to the smallest index, NaN keys as
-inf: the rules of gfn_fast/reference/sampling.py). Narrow rows finish in the same program;
rows wider than one chunk are split over several programs that write partials, combined by
gfn_fast.reference.sampling.finish_partials (a handful of [N, S] torch ops, no host sync).

action_log_prob uses the same layout without randomness; its backward re-reads the logits once
and writes per-chunk partial sums of the scale gradient.
"""

import torch
import triton
import triton.language as tl
from gfn_fast.kernels._common import accumulator, interpret, log1p
from gfn_fast.kernels._philox import gumbel, philox4x32, seed_key

from gfn_fast.reference import sampling as reference

# Force a column chunk (in pairs for sampling, columns for log-prob) in tests; None = automatic.
MAX_CHUNK = None
_TARGET_PROGRAMS = 264  # about two programs per SM of an H100


@triton.jit
def _load_allowed(mask_ptr, rows, cols, row_ok, width, stride_mr, stride_ma,
                  HAS_MASK: tl.constexpr, PACKED: tl.constexpr):
    inside = row_ok[:, None] & (cols < width)
    if HAS_MASK:
        if PACKED:
            byte = tl.load(mask_ptr + rows[:, None] * stride_mr
                           + (cols >> 3).to(tl.int64) * stride_ma,
                           mask=inside, other=0).to(tl.int32)
            allowed = inside & (((byte >> (cols & 7)) & 1) != 0)
        else:
            allowed = inside & (tl.load(mask_ptr + rows[:, None] * stride_mr
                                        + cols.to(tl.int64) * stride_ma,
                                        mask=inside, other=0) != 0)
    else:
        allowed = inside
    return allowed


@triton.jit
def _scaled(logits_ptr, rows, cols, allowed, stride_r, stride_a, scale, inv_t, lo, hi,
            ACC: tl.constexpr):
    """clip(scale * x) * inv_t, rounded step by step like the CPU backends (NaN kept)."""
    x = tl.load(logits_ptr + rows[:, None] * stride_r + cols.to(tl.int64) * stride_a,
                mask=allowed, other=0.0).to(ACC)
    y = scale[:, None] * x
    y = tl.where(y < lo, lo, tl.where(y > hi, hi, y))
    return y * inv_t[:, None], x


@triton.jit
def _row_params(scale_ptr, inv_t_ptr, rows, row_ok, stride_scale, stride_inv_t,
                HAS_SCALE: tl.constexpr, HAS_TEMP: tl.constexpr, ACC: tl.constexpr):
    if HAS_SCALE:
        scale = tl.load(scale_ptr + rows * stride_scale, mask=row_ok, other=1.0).to(ACC)
    else:
        scale = tl.full(rows.shape, 1.0, ACC)
    if HAS_TEMP:
        inv_t = tl.load(inv_t_ptr + rows * stride_inv_t, mask=row_ok, other=1.0).to(ACC)
    else:
        inv_t = tl.full(rows.shape, 1.0, ACC)
    return scale, inv_t


@triton.jit
def _logsumexp_step(z, allowed, m, s):
    """Online max / sum of exp over allowed entries; NaN propagates into s, never into m."""
    neg = float("-inf")
    new_m = tl.maximum(m, tl.max(tl.where(allowed & (z == z), z, neg), axis=1))
    live = allowed & (z != neg)
    delta = z - new_m[:, None]
    e = tl.where(live, tl.exp(delta), 0.0)
    alpha = tl.where(m != neg, tl.exp(m - new_m), 0.0)
    return new_m, alpha * s + tl.sum(e, axis=1), delta, e, live, alpha


@triton.jit
def _consume(z, allowed, cols, gbits, ubits, m, s, t, g_key, g_idx, g_z, u_key, u_idx, u_z,
             count, width):
    """Fold one half-tile [BLOCK_R, BLOCK_P] into the per-row state."""
    neg = float("-inf")
    old_m = m
    m, s_new, delta, e, live, alpha = _logsumexp_step(z, allowed, m, s)
    te = tl.where(live, e * delta, 0.0)
    t = tl.where(old_m != neg, alpha * (t + (old_m - m) * s), 0.0) + tl.sum(te, axis=1)
    s = s_new
    key = z + gumbel(gbits).to(z.dtype)
    key = tl.where(allowed & (key == key), key, neg)
    best = tl.max(key, axis=1)
    idx = tl.min(tl.where(allowed & (key == best[:, None]), cols, width), axis=1)
    z_at = tl.sum(tl.where(cols == idx[:, None], z, 0.0), axis=1)
    take = (best > g_key) | ((best == g_key) & (idx < g_idx))
    g_key = tl.where(take, best, g_key)
    g_idx = tl.where(take, idx, g_idx)
    g_z = tl.where(take, z_at, g_z)
    ukey = tl.where(allowed, ubits.to(tl.int64), -1)
    ubest = tl.max(ukey, axis=1)
    uidx = tl.min(tl.where(allowed & (ukey == ubest[:, None]), cols, width), axis=1)
    uz = tl.sum(tl.where(cols == uidx[:, None], z, 0.0), axis=1)
    take = (ubest > u_key) | ((ubest == u_key) & (uidx < u_idx))
    u_key = tl.where(take, ubest, u_key)
    u_idx = tl.where(take, uidx, u_idx)
    u_z = tl.where(take, uz, u_z)
    count += tl.sum(allowed.to(tl.int32), axis=1)
    return m, s, t, g_key, g_idx, g_z, u_key, u_idx, u_z, count


@triton.jit
def _log_mixture(log_pi, eps, count):
    """log((1 - eps) exp(log_pi) + eps / count), with log1p as the reference, CUDA and Numba
    (log(1 - eps) and log(1 + e) lost relative accuracy for log mu near 0: 1e-4 at eps = 1e-12)."""
    neg = float("-inf")
    a = tl.where(eps < 1.0, log1p(-eps) + log_pi, neg)
    b = tl.where(eps > 0.0, tl.log(eps) - tl.log(count.to(log_pi.dtype)), neg)
    high = tl.where(a > b, a, b)
    low = tl.where(a > b, b, a)
    return tl.where(low == neg, high, high + log1p(tl.exp(low - high)))


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _sample_kernel(
    logits_ptr, mask_ptr, scale_ptr, inv_t_ptr, eps_ptr, clip_ptr,
    actions_ptr, log_pi_ptr, log_mu_ptr, entropy_ptr, lse_ptr, part_f_ptr, part_i_ptr,
    rows_total, width, stride_r, stride_a, stride_mr, stride_ma, stride_scale, stride_inv_t,
    stride_eps, chunk_pairs, splits, seed_lo, seed_hi, off_lo, off_hi,
    HAS_MASK: tl.constexpr, PACKED: tl.constexpr, HAS_SCALE: tl.constexpr,
    HAS_TEMP: tl.constexpr, HAS_CLIP: tl.constexpr, SPLIT: tl.constexpr,
    WANT_MU: tl.constexpr, WANT_H: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    neg = float("-inf")
    pid_s = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < rows_total
    scale, inv_t = _row_params(scale_ptr, inv_t_ptr, rows, row_ok, stride_scale, stride_inv_t,
                               HAS_SCALE, HAS_TEMP, ACC)
    if HAS_CLIP:
        lo = tl.load(clip_ptr).to(ACC)
        hi = tl.load(clip_ptr + 1).to(ACC)
    else:
        lo = float("-inf")
        hi = float("inf")
    k0, k1 = seed_key(seed_lo, seed_hi)
    row_word = (tl.zeros([BLOCK_R, BLOCK_P], tl.int64) + rows[:, None]).to(tl.uint32)
    c2 = tl.zeros([BLOCK_R, BLOCK_P], tl.uint32) + off_lo.to(tl.uint32)
    c3 = tl.zeros([BLOCK_R, BLOCK_P], tl.uint32) + off_hi.to(tl.uint32)
    m = tl.full([BLOCK_R], neg, ACC)
    s = tl.zeros([BLOCK_R], ACC)
    t = tl.zeros([BLOCK_R], ACC)
    g_key = tl.full([BLOCK_R], neg, ACC)
    g_idx = tl.zeros([BLOCK_R], tl.int32) + width
    g_z = tl.zeros([BLOCK_R], ACC)
    u_key = tl.full([BLOCK_R], -1, tl.int64)
    u_idx = tl.zeros([BLOCK_R], tl.int32) + width
    u_z = tl.zeros([BLOCK_R], ACC)
    count = tl.zeros([BLOCK_R], tl.int32)
    pairs_total = (width + 1) // 2
    pair_lo = pid_s * chunk_pairs
    pair_hi = tl.minimum(pair_lo + chunk_pairs, pairs_total)
    for p0 in range(pair_lo, pair_hi, BLOCK_P):
        pairs = p0 + tl.arange(0, BLOCK_P)
        in_chunk = (pairs < pair_hi)[None, :]
        pair_word = (tl.zeros([BLOCK_R, BLOCK_P], tl.int32) + pairs[None, :]).to(tl.uint32)
        w0, w1, w2, w3 = philox4x32(k0, k1, pair_word, row_word, c2, c3)
        cols = (2 * pairs)[None, :]
        allowed = in_chunk & _load_allowed(mask_ptr, rows, cols, row_ok, width, stride_mr,
                                           stride_ma, HAS_MASK, PACKED)
        z, _ = _scaled(logits_ptr, rows, cols, allowed, stride_r, stride_a, scale, inv_t, lo,
                       hi, ACC)
        m, s, t, g_key, g_idx, g_z, u_key, u_idx, u_z, count = _consume(
            z, allowed, cols, w0, w1, m, s, t, g_key, g_idx, g_z, u_key, u_idx, u_z, count,
            width)
        cols = cols + 1
        allowed = in_chunk & _load_allowed(mask_ptr, rows, cols, row_ok, width, stride_mr,
                                           stride_ma, HAS_MASK, PACKED)
        z, _ = _scaled(logits_ptr, rows, cols, allowed, stride_r, stride_a, scale, inv_t, lo,
                       hi, ACC)
        m, s, t, g_key, g_idx, g_z, u_key, u_idx, u_z, count = _consume(
            z, allowed, cols, w2, w3, m, s, t, g_key, g_idx, g_z, u_key, u_idx, u_z, count,
            width)
    eps = tl.load(eps_ptr + rows * stride_eps, mask=row_ok, other=0.0).to(ACC)
    coin_col = tl.zeros([BLOCK_R], tl.uint32) + 0xFFFFFFFF
    zero = tl.zeros([BLOCK_R], tl.uint32)
    cw, _, _, _ = philox4x32(k0, k1, coin_col, rows.to(tl.uint32), zero + off_lo.to(tl.uint32),
                             zero + off_hi.to(tl.uint32))
    explore = ((cw >> 8).to(tl.float32) * 5.9604644775390625e-08).to(ACC) < eps
    if SPLIT:
        base = rows * splits + pid_s
        plane = rows_total * splits
        tl.store(part_f_ptr + base, m, mask=row_ok)
        tl.store(part_f_ptr + plane + base, s, mask=row_ok)
        tl.store(part_f_ptr + 2 * plane + base, t, mask=row_ok)
        tl.store(part_f_ptr + 3 * plane + base, g_key, mask=row_ok)
        tl.store(part_f_ptr + 4 * plane + base, g_z, mask=row_ok)
        tl.store(part_f_ptr + 5 * plane + base, u_z, mask=row_ok)
        tl.store(part_i_ptr + base, g_idx.to(tl.int64), mask=row_ok)
        tl.store(part_i_ptr + plane + base, u_key, mask=row_ok)
        tl.store(part_i_ptr + 2 * plane + base, u_idx.to(tl.int64), mask=row_ok)
        tl.store(part_i_ptr + 3 * plane + base, count.to(tl.int64), mask=row_ok)
        tl.store(part_i_ptr + 4 * plane + base, explore.to(tl.int64), mask=row_ok)
    else:
        lse = m + tl.log(s)
        chosen = tl.where(explore, u_idx, g_idx)
        z_a = tl.where(explore, u_z, g_z)
        chosen = tl.where(chosen >= width, 0, chosen)
        log_pi = z_a - lse
        tl.store(actions_ptr + rows, chosen.to(tl.int64), mask=row_ok)
        tl.store(log_pi_ptr + rows, log_pi, mask=row_ok)
        tl.store(lse_ptr + rows, lse, mask=row_ok)
        if WANT_MU:
            tl.store(log_mu_ptr + rows, _log_mixture(log_pi, eps, count), mask=row_ok)
        if WANT_H:
            tl.store(entropy_ptr + rows, tl.log(s) - t / s, mask=row_ok)


@triton.jit
def _log_prob_kernel(
    logits_ptr, actions_ptr, mask_ptr, scale_ptr, inv_t_ptr, clip_ptr, log_pi_ptr, lse_ptr,
    part_ptr, rows_total, width, stride_r, stride_a, stride_mr, stride_ma, stride_scale,
    stride_inv_t, chunk, splits,
    HAS_MASK: tl.constexpr, PACKED: tl.constexpr, HAS_SCALE: tl.constexpr,
    HAS_TEMP: tl.constexpr, HAS_CLIP: tl.constexpr, SPLIT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_A: tl.constexpr,
):
    neg = float("-inf")
    pid_s = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < rows_total
    scale, inv_t = _row_params(scale_ptr, inv_t_ptr, rows, row_ok, stride_scale, stride_inv_t,
                               HAS_SCALE, HAS_TEMP, ACC)
    if HAS_CLIP:
        lo = tl.load(clip_ptr).to(ACC)
        hi = tl.load(clip_ptr + 1).to(ACC)
    else:
        lo = float("-inf")
        hi = float("inf")
    m = tl.full([BLOCK_R], neg, ACC)
    s = tl.zeros([BLOCK_R], ACC)
    col_lo = pid_s * chunk
    col_hi = tl.minimum(col_lo + chunk, width)
    for c0 in range(col_lo, col_hi, BLOCK_A):
        cols = (c0 + tl.arange(0, BLOCK_A))[None, :]
        allowed = (cols < col_hi) & _load_allowed(mask_ptr, rows, cols, row_ok, width,
                                                  stride_mr, stride_ma, HAS_MASK, PACKED)
        z, _ = _scaled(logits_ptr, rows, cols, allowed, stride_r, stride_a, scale, inv_t, lo,
                       hi, ACC)
        m, s, _, _, _, _ = _logsumexp_step(z, allowed, m, s)
    action = tl.load(actions_ptr + rows, mask=row_ok, other=0)
    action = tl.minimum(tl.maximum(action, 0), width - 1)[:, None]
    allowed_a = _load_allowed(mask_ptr, rows, action, row_ok, width, stride_mr, stride_ma,
                              HAS_MASK, PACKED)
    z_a, _ = _scaled(logits_ptr, rows, action, allowed_a, stride_r, stride_a, scale, inv_t, lo,
                     hi, ACC)
    z_a = tl.sum(tl.where(allowed_a, z_a, neg), axis=1)
    if SPLIT:
        base = rows * splits + pid_s
        plane = rows_total * splits
        tl.store(part_ptr + base, m, mask=row_ok)
        tl.store(part_ptr + plane + base, s, mask=row_ok)
        tl.store(part_ptr + 2 * plane + base, z_a, mask=row_ok)
    else:
        lse = m + tl.log(s)
        tl.store(lse_ptr + rows, lse, mask=row_ok)
        tl.store(log_pi_ptr + rows, z_a - lse, mask=row_ok)


@triton.jit
def _log_prob_backward_kernel(
    grad_ptr, logits_ptr, actions_ptr, mask_ptr, scale_ptr, inv_t_ptr, clip_ptr, lse_ptr,
    grad_logits_ptr, grad_scale_ptr, rows_total, width, stride_r, stride_a, stride_gr,
    stride_ga, stride_mr, stride_ma, stride_scale, stride_inv_t, chunk, splits,
    HAS_MASK: tl.constexpr, PACKED: tl.constexpr, HAS_SCALE: tl.constexpr,
    HAS_TEMP: tl.constexpr, HAS_CLIP: tl.constexpr, NEED_LOGITS: tl.constexpr,
    NEED_SCALE: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_A: tl.constexpr,
):
    pid_s = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < rows_total
    scale, inv_t = _row_params(scale_ptr, inv_t_ptr, rows, row_ok, stride_scale, stride_inv_t,
                               HAS_SCALE, HAS_TEMP, ACC)
    if HAS_CLIP:
        lo = tl.load(clip_ptr).to(ACC)
        hi = tl.load(clip_ptr + 1).to(ACC)
    else:
        lo = float("-inf")
        hi = float("inf")
    g = tl.load(grad_ptr + rows, mask=row_ok, other=0.0).to(ACC)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0).to(ACC)
    action = tl.load(actions_ptr + rows, mask=row_ok, other=0)
    acc = tl.zeros([BLOCK_R], ACC)
    col_lo = pid_s * chunk
    col_hi = tl.minimum(col_lo + chunk, width)
    for c0 in range(col_lo, col_hi, BLOCK_A):
        cols = (c0 + tl.arange(0, BLOCK_A))[None, :]
        inside = row_ok[:, None] & (cols < col_hi)
        allowed = (cols < col_hi) & _load_allowed(mask_ptr, rows, cols, row_ok, width,
                                                  stride_mr, stride_ma, HAS_MASK, PACKED)
        z, x = _scaled(logits_ptr, rows, cols, allowed, stride_r, stride_a, scale, inv_t, lo,
                       hi, ACC)
        y = scale[:, None] * x
        active = allowed & (y >= lo) & (y <= hi)
        onehot = tl.where(cols == action[:, None], 1.0, 0.0)
        value = tl.where(active, (g * inv_t)[:, None] * (onehot - tl.exp(z - lse[:, None])), 0.0)
        if NEED_SCALE:
            # zero terms skipped: 0 * -inf would be NaN (gfn_fast/cpu/sampling.py)
            acc += tl.sum(tl.where(active & (value != 0.0), value * x, 0.0), axis=1)
        if NEED_LOGITS:
            tl.store(grad_logits_ptr + rows[:, None] * stride_gr
                     + cols.to(tl.int64) * stride_ga,
                     (value * scale[:, None]).to(grad_logits_ptr.dtype.element_ty), mask=inside)
    if NEED_SCALE:
        tl.store(grad_scale_ptr + rows * splits + pid_s, acc, mask=row_ok)


def _mask_args(mask):
    if mask is None:
        return None, 0, 0
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    return mask, mask.stride(0), mask.stride(1)


def _row_arg(value):
    return (value, 0 if value.dim() == 0 else value.stride(0)) if value is not None else (None, 0)


def _clip_tensor(clip, dtype, device):
    if clip is None:
        return None
    # two fill kernels rather than a host-to-device copy, which a CUDA graph capture forbids
    bounds = torch.full((2,), clip[0], dtype=dtype, device=device)
    bounds[1:].fill_(clip[1])
    return bounds


def _tiles(width_units: int, rows: int, max_tile: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_UNITS): a [rows, units] tile of about max_tile elements."""
    block = min(triton.next_power_of_2(max(width_units, 1)), max_tile)
    block_r = max(1, min(max_tile // block, triton.next_power_of_2(max(rows, 1))))
    return block_r, block


def _chunking(units: int, block: int, row_programs: int) -> tuple[int, int]:
    """(units per program, number of programs per row): split wide rows when there are too few
    row programs to fill the GPU."""
    if MAX_CHUNK is not None:
        chunk = max(block, triton.cdiv(MAX_CHUNK, block) * block)
    elif interpret() or row_programs >= _TARGET_PROGRAMS or units <= 8 * block:
        chunk = triton.cdiv(units, block) * block
    else:
        splits = min(triton.cdiv(_TARGET_PROGRAMS, row_programs), triton.cdiv(units, 4 * block))
        chunk = triton.cdiv(triton.cdiv(units, splits), block) * block
    return chunk, triton.cdiv(units, chunk)


def _max_tile() -> int:
    return 16384 if interpret() else 1024


def sample_forward(logits, mask, packed, scale, inv_temperature, clip, epsilon, seed_words,
                   want_log_mu, want_entropy):
    """Same contract as gfn_fast.cpu.sampling.sample_forward."""
    rows, width = logits.shape
    device = logits.device
    dtype = reference.compute_dtype(logits)
    pairs = (width + 1) // 2
    block_r, block_p = _tiles(pairs, rows, _max_tile() // 2)
    row_programs = triton.cdiv(rows, block_r)
    chunk_pairs, splits = _chunking(pairs, block_p, row_programs)
    actions = torch.empty(rows, dtype=torch.int64, device=device)
    log_pi = torch.empty(rows, dtype=dtype, device=device)
    log_mu = torch.empty(rows if want_log_mu else 0, dtype=dtype, device=device)
    entropy = torch.empty(rows if want_entropy else 0, dtype=dtype, device=device)
    lse = torch.empty(rows, dtype=dtype, device=device)
    split = splits > 1
    part_f = torch.empty((6, rows, splits) if split else 1, dtype=dtype, device=device)
    part_i = torch.empty((5, rows, splits) if split else 1, dtype=torch.int64, device=device)
    if epsilon is None:
        epsilon = torch.zeros((), dtype=dtype, device=device)
    mask_t, stride_mr, stride_ma = _mask_args(mask)
    scale_t, stride_scale = _row_arg(scale)
    inv_t, stride_inv_t = _row_arg(inv_temperature)
    eps_t, stride_eps = _row_arg(epsilon)
    clip_t = _clip_tensor(clip, dtype, device)
    if rows > 0:
        _sample_kernel[(row_programs, splits)](
            logits, mask_t, scale_t, inv_t, eps_t, clip_t, actions, log_pi, log_mu, entropy,
            lse, part_f, part_i, rows, width, logits.stride(0), logits.stride(1), stride_mr,
            stride_ma, stride_scale, stride_inv_t, stride_eps, chunk_pairs, splits,
            *seed_words,
            HAS_MASK=mask is not None, PACKED=packed, HAS_SCALE=scale is not None,
            HAS_TEMP=inv_temperature is not None, HAS_CLIP=clip is not None, SPLIT=split,
            WANT_MU=want_log_mu, WANT_H=want_entropy, ACC=accumulator(dtype),
            BLOCK_R=block_r, BLOCK_P=block_p,
        )
    if split:
        return reference.finish_partials(part_f, part_i, epsilon, width, want_log_mu,
                                         want_entropy)
    return actions, log_pi, log_mu, entropy, lse


def log_prob_forward(logits, actions, mask, packed, scale, inv_temperature, clip):
    """Same contract as gfn_fast.cpu.sampling.log_prob_forward."""
    rows, width = logits.shape
    device = logits.device
    dtype = reference.compute_dtype(logits)
    block_r, block_a = _tiles(width, rows, _max_tile())
    row_programs = triton.cdiv(rows, block_r)
    chunk, splits = _chunking(width, block_a, row_programs)
    log_pi = torch.empty(rows, dtype=dtype, device=device)
    lse = torch.empty(rows, dtype=dtype, device=device)
    split = splits > 1
    part = torch.empty((3, rows, splits) if split else 1, dtype=dtype, device=device)
    mask_t, stride_mr, stride_ma = _mask_args(mask)
    scale_t, stride_scale = _row_arg(scale)
    inv_t, stride_inv_t = _row_arg(inv_temperature)
    if rows > 0:
        _log_prob_kernel[(row_programs, splits)](
            logits, actions, mask_t, scale_t, inv_t, _clip_tensor(clip, dtype, device), log_pi,
            lse, part, rows, width, logits.stride(0), logits.stride(1), stride_mr, stride_ma,
            stride_scale, stride_inv_t, chunk, splits,
            HAS_MASK=mask is not None, PACKED=packed, HAS_SCALE=scale is not None,
            HAS_TEMP=inv_temperature is not None, HAS_CLIP=clip is not None, SPLIT=split,
            ACC=accumulator(dtype), BLOCK_R=block_r, BLOCK_A=block_a,
        )
    if split:
        return reference.finish_log_prob_partials(part)
    return log_pi, lse


def log_prob_backward(grad, logits, actions, mask, packed, scale, inv_temperature, clip, lse,
                      need_logits, need_scale):
    """Same contract as gfn_fast.cpu.sampling.log_prob_backward."""
    rows, width = logits.shape
    device = logits.device
    dtype = lse.dtype
    block_r, block_a = _tiles(width, rows, _max_tile())
    row_programs = triton.cdiv(rows, block_r)
    chunk, splits = _chunking(width, block_a, row_programs)
    grad_logits = torch.empty_like(logits) if need_logits else None
    grad_scale = torch.empty((rows, splits) if need_scale else 1, dtype=dtype, device=device)
    mask_t, stride_mr, stride_ma = _mask_args(mask)
    scale_t, stride_scale = _row_arg(scale)
    inv_t, stride_inv_t = _row_arg(inv_temperature)
    out = grad_logits if need_logits else logits
    if rows > 0:
        _log_prob_backward_kernel[(row_programs, splits)](
            grad, logits, actions, mask_t, scale_t, inv_t, _clip_tensor(clip, dtype, device),
            lse, out, grad_scale, rows, width, logits.stride(0), logits.stride(1), out.stride(0),
            out.stride(1), stride_mr, stride_ma, stride_scale, stride_inv_t, chunk, splits,
            HAS_MASK=mask is not None, PACKED=packed, HAS_SCALE=scale is not None,
            HAS_TEMP=inv_temperature is not None, HAS_CLIP=clip is not None,
            NEED_LOGITS=need_logits, NEED_SCALE=need_scale, ACC=accumulator(dtype),
            BLOCK_R=block_r, BLOCK_A=block_a,
        )
    return grad_logits, (grad_scale.sum(dim=1) if need_scale else None)
