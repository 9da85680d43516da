"""Numba CPU kernels of the trajectory-balance family, parallel over trajectories.

Padded [B, T] and packed (1-D + cu_seqlens) layouts share one kernel: a packed tensor is viewed
as [1, N] and trajectory b reads row 0 from column cu_seqlens[b]; a padded one reads row b from
column 0. Lengths and offsets are clamped, so bad values cannot index out of bounds.
"""

import numba
import numpy as np
import torch

from gfn_fast.cpu._common import (
    as_numpy,
    output_like,
    per_row,
    rho,
    rho_grad,
    row_or,
    serial_if,
)


@numba.njit(inline="always", cache=True)
def _extent(lengths, b, packed, steps):
    """(row, first column, number of steps) of trajectory b, clamped to the tensor."""
    zero = np.int64(0)
    if packed:
        start = min(max(np.int64(lengths[b]), zero), np.int64(steps))
        end = min(max(np.int64(lengths[b + 1]), start), np.int64(steps))
        return zero, start, end - start
    return np.int64(b), zero, min(max(np.int64(lengths[b]), zero), np.int64(steps))


# Reassociation only (no nnan/ninf): lets LLVM vectorise the sums while NaN and inf still
# propagate. Each trajectory is summed by one thread, so results are run-to-run identical.
_FAST = {"reassoc", "contract"}
# Sums run over a multiple of this many steps (up to the row's end) and select away the steps
# past the trajectory: a loop of exactly n steps (n ~ 32, varying per row) spends most of its
# time in its scalar remainder (measured 2.4x slower). The selected-away values are never used,
# so NaN or garbage in the padding cannot leak in.
_VECTOR = 16


@numba.njit(inline="always", cache=True)
def _vector_end(col, n, steps):
    """End of the summed span: col + n rounded up to a multiple of _VECTOR, within the row."""
    return min(np.int64(steps), col + ((n + _VECTOR - 1) // _VECTOR) * _VECTOR)


# Sentinel of the load-keeping sums below (any value works: it only decides whether a dead
# store to a scratch array happens).
_SENTINEL = -1.2345e37


@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def _rows_forward(log_pf, log_pb, has_pb, lengths, packed, log_reward, log_z, has_log_z, beta,
                  clip_min, loss_id, loss_param, apply_loss, d_out, loss_out, sink):
    batch = d_out.shape[0]
    steps = log_pf.shape[1]
    zero = d_out.dtype.type(0.0)
    # The hot loops hold nothing but the sum: any branch or loss call in the same loop body
    # keeps LLVM from vectorising it (measured 4x slower), so the per-row epilogue is apart.
    # They index a slice from 0: the same loop over range(col, end) on the whole row runs 3x
    # slower (measured), its vectorised form apparently not chosen.
    # `kept` sums every loaded value and is compared with a sentinel (a store to `sink`, never
    # to an output): without a use of the unselected loads, LLVM folds `x if t < n else 0`
    # into AVX-512 masked loads, which ran 1.5-2x slower on data not in cache (TB forward at
    # B=16384 T=64 after a 64 MB sweep: 0.27 -> 0.19 ms; in cache both take 0.06 ms).
    if has_pb:
        for b in numba.prange(batch):
            row, col, n = _extent(lengths, b, packed, steps)
            end = _vector_end(col, n, steps)
            pf, pb = log_pf[row, col:end], log_pb[row, col:end]
            total = kept = zero
            for t in range(end - col):
                x, y = pf[t], pb[t]
                kept += x + y
                total += (x - y) if t < n else zero
            d_out[b] = total
            if kept == _SENTINEL:
                sink[0] = kept
    else:
        for b in numba.prange(batch):
            row, col, n = _extent(lengths, b, packed, steps)
            end = _vector_end(col, n, steps)
            pf = log_pf[row, col:end]
            total = kept = zero
            for t in range(end - col):
                x = pf[t]
                kept += x
                total += x if t < n else zero
            d_out[b] = total
            if kept == _SENTINEL:
                sink[0] = kept
    for b in numba.prange(batch):
        reward = log_reward[b]
        clipped = clip_min if reward < clip_min else reward
        d = d_out[b] - beta[b] * clipped
        if has_log_z:
            d += log_z[b]
        d_out[b] = d
        if apply_loss:
            loss_out[b] = rho(d, loss_id, loss_param)


@numba.njit(parallel=True, cache=True)
def _row_gradients(grad_rows, d, from_residual, weight, loss_id, loss_param, log_reward, beta,
                   clip_min, grad_row, grad_log_reward, need_log_reward, grad_beta, need_beta):
    for b in numba.prange(grad_row.shape[0]):
        if from_residual:
            g = grad_rows[b] * weight * rho_grad(d[b], loss_id, loss_param)
        else:
            g = grad_rows[b]
        grad_row[b] = g
        reward = log_reward[b]
        if need_log_reward:
            grad_log_reward[b] = -g * beta[b] if reward >= clip_min else 0.0 * g
        if need_beta:
            grad_beta[b] = -g * (clip_min if reward < clip_min else reward)


@numba.njit(parallel=True, cache=True)
def _broadcast_rows(grad_row, lengths, packed, grad_pf, grad_pb, has_pb):
    """grad_pf[trajectory b, step t] = grad_row[b] and grad_pb = -grad_row[b] on valid steps.
    Padded rows are written whole (zeros on the padding) by a branch-free select over the full
    row, which LLVM vectorises (6x faster than a fill of the valid prefix plus one of the
    padding); packed trajectories are written only over their own steps."""
    steps = grad_pf.shape[1]
    zero = grad_pf.dtype.type(0.0)
    for b in numba.prange(grad_row.shape[0]):
        row, col, n = _extent(lengths, b, packed, steps)
        value = grad_pf.dtype.type(grad_row[b])
        out_pf = grad_pf[row]
        if packed:
            out_pf[col:col + n] = value
            if has_pb:
                grad_pb[row, col:col + n] = -value
            continue
        for t in range(steps):
            out_pf[t] = value if t < n else zero
        if has_pb:
            out_pb = grad_pb[row]
            for t in range(steps):
                out_pb[t] = -value if t < n else zero


# Below this many log-prob entries the kernels run on the calling thread: a parallel region
# costs ~2.5 us more than the serial loop even with the pool awake, and B*T = 2^15 float32
# entries are summed in ~5 us on one core.
_PARALLEL_MIN_ENTRIES = 1 << 15


# Scratch target of the forward's load-keeping stores (never read; races are harmless).
_SINK = np.zeros(1, dtype=np.float64)


def _small(log_pf: torch.Tensor) -> bool:
    return log_pf.numel() < _PARALLEL_MIN_ENTRIES


def _as_2d(tensor: torch.Tensor, packed: bool) -> torch.Tensor:
    return tensor.unsqueeze(0) if packed else tensor




def rows_forward(log_pf, log_pb, lengths, packed, log_reward, log_z, beta, clip_min, loss_id,
                 loss_param, apply_loss):
    """Per trajectory: d = log_z + sum log_pf - sum log_pb - beta * max(log_reward, clip), and
    rho(d) when apply_loss. Returns (d, rho(d) or None) in the dtype of log_reward."""
    dtype = log_reward.dtype
    batch = log_reward.shape[0]
    d = torch.empty(batch, dtype=dtype, device="cpu")
    loss = torch.empty(batch if apply_loss else 1, dtype=dtype, device="cpu")
    pf = as_numpy(_as_2d(log_pf, packed), dtype)
    pb = as_numpy(_as_2d(log_pb, packed), dtype) if log_pb is not None else pf
    kernel = serial_if(_rows_forward, _small(log_pf))
    kernel(pf, pb, log_pb is not None, lengths.numpy(), packed, log_reward.numpy(),
           # VarGrad's missing log Z as a stride-0 row of zeros, the array type of TB's scalar
           # one: the two share a kernel build (~2 s of a first run's compile)
           row_or(log_z, batch, dtype, 0.0), log_z is not None, row_or(beta, batch, dtype, 1.0),
           float(clip_min), loss_id, float(loss_param), apply_loss, d.numpy(), loss.numpy(),
           _SINK)
    return d, (loss if apply_loss else None)


def rows_backward(grad_rows, d, from_residual, weight, loss_id, loss_param, lengths, packed,
                  log_pf, has_pb, log_reward, beta, clip_min, need_log_reward, need_beta):
    """Gradients of the row sums. g_b = grad_rows_b * weight * rho'(d_b) when from_residual,
    else grad_rows_b. Writes grad_log_pf = g_b on valid steps (0 on padding), grad_log_pb = -g_b,
    and returns (grad_log_pf, grad_log_pb or None, g, grad_log_reward or None, grad_beta or None).
    """
    dtype = d.dtype
    batch = d.shape[0]
    wide = log_pf.dtype if log_pf.dtype in (torch.float32, torch.float64) else dtype
    grad_pf = output_like(log_pf, wide)
    grad_pb = output_like(log_pf, wide) if has_pb else None
    grad_row = torch.empty(batch, dtype=dtype, device="cpu")
    grad_log_reward = torch.empty(batch if need_log_reward else 1, dtype=dtype, device="cpu")
    grad_beta = torch.empty(batch if need_beta else 1, dtype=dtype, device="cpu")
    small = _small(log_pf)
    serial_if(_row_gradients, small)(
        per_row(grad_rows, batch, dtype), d.numpy(), from_residual, float(weight), loss_id,
        float(loss_param), log_reward.numpy(), row_or(beta, batch, dtype, 1.0), float(clip_min),
        grad_row.numpy(), grad_log_reward.numpy(), need_log_reward, grad_beta.numpy(), need_beta)
    out_pf = _as_2d(grad_pf, packed).numpy()
    serial_if(_broadcast_rows, small)(grad_row.numpy(), lengths.numpy(), packed, out_pf,
                                      _as_2d(grad_pb, packed).numpy() if has_pb else out_pf,
                                      has_pb)
    if wide != log_pf.dtype:
        grad_pf = grad_pf.to(log_pf.dtype)
        grad_pb = grad_pb.to(log_pf.dtype) if has_pb else None
    return (grad_pf, grad_pb, grad_row, grad_log_reward if need_log_reward else None,
            grad_beta if need_beta else None)
