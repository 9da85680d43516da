"""CUDA backend of action sampling (kernels in csrc/include/gfn_fast/sampling.cuh)."""

import math

import torch

from gfn_fast.cuda._ext import dtype_code, ext, per_row_stride, ptr, stream
from gfn_fast.reference import sampling as reference

# Warps in flight that fill an H100 (132 SMs x 16): fewer rows than this split their columns.
_TARGET_WARPS = 2112
_MIN_UNITS_PER_SPLIT = 1024


def _chunking(units: int, rows: int) -> tuple[int, int]:
    """(units per warp, warps per row)."""
    if rows >= _TARGET_WARPS or units <= 2 * _MIN_UNITS_PER_SPLIT:
        return max(units, 1), 1
    splits = min(math.ceil(_TARGET_WARPS / max(rows, 1)), math.ceil(units / _MIN_UNITS_PER_SPLIT))
    chunk = math.ceil(units / splits)
    return chunk, math.ceil(units / chunk)


def _rows_args(logits, mask, packed, scale, inv_temperature, epsilon, clip, chunk, splits):
    if mask is not None and mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    lo, hi = clip if clip is not None else (-math.inf, math.inf)
    return dict(
        logits=ptr(logits), mask=ptr(mask), scale=ptr(scale),
        inv_temperature=ptr(inv_temperature), epsilon=ptr(epsilon), rows=logits.shape[0],
        width=logits.shape[1], stride_r=logits.stride(0), stride_a=logits.stride(1),
        stride_mr=mask.stride(0) if mask is not None else 0,
        stride_ma=mask.stride(1) if mask is not None else 0,
        stride_scale=per_row_stride(scale), stride_inv_t=per_row_stride(inv_temperature),
        stride_eps=per_row_stride(epsilon), clip_lo=float(lo), clip_hi=float(hi),
        packed=packed, chunk=chunk, splits=splits, dtype=dtype_code(logits),
        stream=stream(logits.device))


def sample_forward(logits, mask, packed, scale, inv_temperature, clip, epsilon, seed_words,
                   want_log_mu, want_entropy):
    """Same contract as gfn_fast.cpu.sampling.sample_forward."""
    rows, width = logits.shape
    device = logits.device
    dtype = reference.compute_dtype(logits)
    chunk, splits = _chunking((width + 1) // 2, rows)
    actions = torch.empty(rows, dtype=torch.int64, device=device)
    log_pi = torch.empty(rows, dtype=dtype, device=device)
    log_mu = torch.empty(rows if want_log_mu else 0, dtype=dtype, device=device)
    entropy = torch.empty(rows if want_entropy else 0, dtype=dtype, device=device)
    lse = torch.empty(rows, dtype=dtype, device=device)
    split = splits > 1
    part_f = torch.empty((6, rows, splits), dtype=dtype, device=device) if split else None
    part_i = torch.empty((5, rows, splits), dtype=torch.int64, device=device) if split else None
    seed_lo, seed_hi, off_lo, off_hi = seed_words
    args = _rows_args(logits, mask, packed, scale, inv_temperature, epsilon, clip, chunk, splits)
    args.update(seed=seed_lo | (seed_hi << 32), offset=off_lo | (off_hi << 32),
                actions=ptr(actions), log_pi=ptr(log_pi),
                log_mu=ptr(log_mu) if want_log_mu else 0,
                entropy=ptr(entropy) if want_entropy else 0, lse=ptr(lse), part_f=ptr(part_f),
                part_i=ptr(part_i))
    ext().sample_actions_forward(args)
    if split:
        eps = epsilon if epsilon is not None else torch.zeros((), dtype=dtype, device=device)
        return reference.finish_partials(part_f, part_i, eps, width, want_log_mu, want_entropy)
    return actions, log_pi, log_mu, entropy, lse


def log_prob_forward(logits, actions, mask, packed, scale, inv_temperature, clip):
    """Same contract as gfn_fast.cpu.sampling.log_prob_forward."""
    rows, width = logits.shape
    dtype = reference.compute_dtype(logits)
    chunk, splits = _chunking(width, rows)
    log_pi = torch.empty(rows, dtype=dtype, device=logits.device)
    lse = torch.empty(rows, dtype=dtype, device=logits.device)
    part = torch.empty((3, rows, splits), dtype=dtype, device=logits.device) if splits > 1 \
        else None
    args = _rows_args(logits, mask, packed, scale, inv_temperature, None, clip, chunk, splits)
    args.update(actions=ptr(actions), log_pi=ptr(log_pi), lse=ptr(lse), part=ptr(part))
    ext().action_log_prob_forward(args)
    if splits > 1:
        return reference.finish_log_prob_partials(part)
    return log_pi, lse


def log_prob_backward(grad, logits, actions, mask, packed, scale, inv_temperature, clip, lse,
                      need_logits, need_scale):
    """Same contract as gfn_fast.cpu.sampling.log_prob_backward."""
    rows, width = logits.shape
    chunk, splits = _chunking(width, rows)
    grad = grad.to(lse.dtype).contiguous()
    grad_logits = torch.empty_like(logits) if need_logits else None
    grad_scale = torch.empty((rows, splits), dtype=lse.dtype, device=logits.device) \
        if need_scale else None
    args = _rows_args(logits, mask, packed, scale, inv_temperature, None, clip, chunk, splits)
    args.update(grad=ptr(grad), actions=ptr(actions), lse=ptr(lse), grad_logits=ptr(grad_logits),
                grad_scale=ptr(grad_scale),
                stride_gr=grad_logits.stride(0) if need_logits else 0,
                stride_ga=grad_logits.stride(1) if need_logits else 0)
    ext().action_log_prob_backward(args)
    return grad_logits, (grad_scale.sum(dim=1) if need_scale else None)
