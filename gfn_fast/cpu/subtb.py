"""Numba CPU kernels of detailed balance (DB) and sub-trajectory balance (SubTB), parallel over
trajectories. Layouts as in gfn_fast.cpu.balance (a packed tensor is viewed as [1, N]).

SubTB works on the shifted potentials a_b(k) = F_b(k) - F_b(0) - P_b(k), k = 0..n_b, written by
the forward into `a` (1-D, acc dtype; trajectory b starts at b * (T + 1), or cu_seqlens[b] + b
when packed) and read back by the backward. Every residual is d_ij = a(i) - a(j). Weights are
row_weight[b] * lambda^(j - i), or row_weight[b] * table[j - i - 1] when use_table.

- running (squared / half-squared losses, geometric weights): Welford-style recurrences over
  the moments of the residuals ending at j, M1_j = sum_{i<j} lambda^(j-i) (a_i - a_j) and
  M2_j = sum_{i<j} lambda^(j-i) (a_i - a_j)^2, updated from differences of neighbouring a only,
  so nothing cancels however large a gets. O(T) time, O(1) state.
- pair loop (other losses, or tabulated weights): O(T^2) time over the saved a, no extra memory.
"""


import numba
import numpy as np
import torch

from gfn_fast.cpu._common import (
    as_numpy,
    empty,
    output_like,
    per_row,
    rho,
    rho_grad,
    row_or,
    serial_if,
)
from gfn_fast.cpu.balance import _FAST, _as_2d, _extent

SQUARED, HALF_SQUARED = 0, 1

# Below this many element-steps a parallel region costs more than it saves (waking the pool is
# tens of microseconds idle, milliseconds on a loaded machine), so the loop runs on one thread.
_PARALLEL_MIN_WORK = 1 << 16


def _threads_for(kernel, work: int):
    return serial_if(kernel, work < _PARALLEL_MIN_WORK)


@numba.njit(inline="always", cache=True)
def _base(lengths, b, packed, steps, col):
    return col + b if packed else b * (steps + 1)


@numba.njit(inline="always", cache=True)
def _terminal(log_reward, beta, b, clip_min):
    reward = log_reward[b]
    return beta[b] * (clip_min if reward < clip_min else reward)


@numba.njit(inline="always", cache=True)
def _flow(flow, sr, has_sr, row, t):
    value = flow[row, t]
    if has_sr:
        value += sr[row, t]
    return value


@numba.njit(inline="always", cache=True)
def _terminal_grads(g, log_reward, beta, b, clip_min, grad_log_reward, need_log_reward,
                    grad_beta, need_beta):
    reward = log_reward[b]
    if need_log_reward:
        grad_log_reward[b] = g * beta[b] if reward >= clip_min else 0.0 * g
    if need_beta:
        grad_beta[b] = g * (clip_min if reward < clip_min else reward)


# ------------------------------------------------------------------ detailed balance


@numba.njit(parallel=True, cache=True)
def _db_forward(log_pf, log_pb, has_pb, flow, sr, has_sr, lengths, packed, log_reward, beta,
                clip_min, loss_id, loss_param, per_step, step_out, row_out):
    batch = row_out.shape[0]
    steps = log_pf.shape[1]
    for b in numba.prange(batch):
        row, col, n = _extent(lengths, b, packed, steps)
        terminal = _terminal(log_reward, beta, b, clip_min)
        total = row_out.dtype.type(0.0)
        flow_here = _flow(flow, sr, has_sr, row, col) if n > 0 else terminal
        for t in range(n):
            flow_next = _flow(flow, sr, has_sr, row, col + t + 1) if t + 1 < n else terminal
            d = flow_here + log_pf[row, col + t] - flow_next
            if has_pb:
                d -= log_pb[row, col + t]
            value = rho(d, loss_id, loss_param)
            total += value
            if per_step:
                step_out[row, col + t] = value
            flow_here = flow_next
        if per_step and not packed:
            for t in range(n, steps):
                step_out[row, t] = 0.0
        row_out[b] = total


@numba.njit(parallel=True, cache=True)
def _db_backward(grad, log_pf, log_pb, has_pb, flow, sr, has_sr, lengths, packed, log_reward,
                 beta, clip_min, loss_id, loss_param, grad_pf, grad_pb, grad_flow,
                 grad_log_reward, need_log_reward, grad_beta, need_beta):
    batch = log_reward.shape[0]
    steps = log_pf.shape[1]
    for b in numba.prange(batch):
        row, col, n = _extent(lengths, b, packed, steps)
        terminal = _terminal(log_reward, beta, b, clip_min)
        flow_here = _flow(flow, sr, has_sr, row, col) if n > 0 else terminal
        g_prev = 0.0  # (not 0 * terminal: an infinite terminal made that NaN)
        for t in range(n):
            flow_next = _flow(flow, sr, has_sr, row, col + t + 1) if t + 1 < n else terminal
            d = flow_here + log_pf[row, col + t] - flow_next
            if has_pb:
                d -= log_pb[row, col + t]
            g = grad[row, col + t] * rho_grad(d, loss_id, loss_param)
            grad_pf[row, col + t] = g
            if has_pb:
                grad_pb[row, col + t] = -g
            # F(t) enters d_t with + and d_{t-1} with -
            grad_flow[row, col + t] = g - g_prev
            g_prev = g
            flow_here = flow_next
        if not packed:
            for t in range(n, steps):
                grad_pf[row, t] = 0.0
                grad_flow[row, t] = 0.0
                if has_pb:
                    grad_pb[row, t] = 0.0
        _terminal_grads(-g_prev, log_reward, beta, b, clip_min, grad_log_reward,
                        need_log_reward, grad_beta, need_beta)


@numba.njit(inline="always", cache=True)
def _db_residual(log_pf, log_pb, has_pb, flow, b, t, flow_next):
    d = flow[b, t] + log_pf[b, t] - flow_next
    if has_pb:
        d -= log_pb[b, t]
    return d


@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def _db_forward_squared(log_pf, log_pb, has_pb, flow, lengths, log_reward, beta, clip_min,
                        per_step, step_out, row_out):
    """_db_forward for the squared loss on padded [B, T] without state rewards: the residuals
    of a row need no carried value, so with reassociation (not nnan/ninf: NaN and inf still
    propagate) LLVM vectorises the sum. Each row is summed by one thread: deterministic."""
    batch, steps = log_pf.shape
    for b in numba.prange(batch):
        n = min(max(np.int64(lengths[b]), np.int64(0)), np.int64(steps))
        terminal = _terminal(log_reward, beta, b, clip_min)
        total = row_out.dtype.type(0.0)
        for t in range(n - 1):
            d = _db_residual(log_pf, log_pb, has_pb, flow, b, t, flow[b, t + 1])
            if per_step:
                step_out[b, t] = d * d
            total += d * d
        if n > 0:
            d = _db_residual(log_pf, log_pb, has_pb, flow, b, n - 1, terminal)
            total += d * d
            if per_step:
                step_out[b, n - 1] = d * d
        if per_step:
            for t in range(n, steps):
                step_out[b, t] = 0.0
        row_out[b] = total


@numba.njit(inline="always", cache=True)
def _db_squared_grad(g, log_pf, log_pb, has_pb, flow, b, t, flow_next):
    """dLoss/dd_t of the squared loss, g * 2 d_t (g = dLoss/drho_t), rounded as _db_backward
    rounds it."""
    return g * (2.0 * _db_residual(log_pf, log_pb, has_pb, flow, b, t, flow_next))


@numba.njit(inline="always", cache=True)
def _db_squared_row(grad, row_constant, log_pf, log_pb, has_pb, flow, b, n, terminal, grad_pf,
                    grad_pb, grad_flow):
    """One trajectory of _db_backward_squared; returns g of its last step (0 when empty)."""
    g_row = grad[b, 0]
    for t in range(n - 1):
        g = g_row if row_constant else grad[b, t]
        grad_pf[b, t] = _db_squared_grad(g, log_pf, log_pb, has_pb, flow, b, t, flow[b, t + 1])
    last = 0.0
    if n > 0:
        g = g_row if row_constant else grad[b, n - 1]
        last = _db_squared_grad(g, log_pf, log_pb, has_pb, flow, b, n - 1, terminal)
        grad_pf[b, n - 1] = last
    if has_pb:
        for t in range(n):
            grad_pb[b, t] = -grad_pf[b, t]
    # F(t) enters d_t with + and d_(t-1) with -: g_t - g_(t-1), both recomputed in float64
    # (F(0) only in d_0: its gradient is g_0, rounded as grad_pf's)
    if n > 0:
        grad_flow[b, 0] = grad_pf[b, 0]
    for t in range(1, n - 1):
        g = g_row if row_constant else grad[b, t]
        g_before = g_row if row_constant else grad[b, t - 1]
        grad_flow[b, t] = (
            _db_squared_grad(g, log_pf, log_pb, has_pb, flow, b, t, flow[b, t + 1])
            - _db_squared_grad(g_before, log_pf, log_pb, has_pb, flow, b, t - 1, flow[b, t]))
    if n > 1:
        g_before = g_row if row_constant else grad[b, n - 2]
        grad_flow[b, n - 1] = last - _db_squared_grad(g_before, log_pf, log_pb, has_pb, flow, b,
                                                      n - 2, flow[b, n - 1])
    return last


@numba.njit(parallel=True, cache=True)
def _db_backward_squared(grad, row_constant, log_pf, log_pb, has_pb, flow, lengths, log_reward,
                         beta, clip_min, grad_pf, grad_pb, grad_flow, grad_log_reward,
                         need_log_reward, grad_beta, need_beta):
    """_db_backward for the commonest call (squared loss, padded [B, T], no state rewards), bit
    for bit, in loops without a carried value, which LLVM vectorises (measured 1.6x at B=2048,
    T=64): g_t is computed where it is stored, and grad_flow = g_t - g_(t-1) recomputes both.
    row_constant: grad[b, t] does not depend on t (a reduced loss's upstream gradient is an
    expanded scalar or row; a stride-0 load in the loop would keep it scalar)."""
    batch, steps = log_pf.shape
    for b in numba.prange(batch):
        n = min(max(np.int64(lengths[b]), np.int64(0)), np.int64(steps))
        terminal = _terminal(log_reward, beta, b, clip_min)
        if row_constant:
            last = _db_squared_row(grad, True, log_pf, log_pb, has_pb, flow, b, n, terminal,
                                   grad_pf, grad_pb, grad_flow)
        else:
            last = _db_squared_row(grad, False, log_pf, log_pb, has_pb, flow, b, n, terminal,
                                   grad_pf, grad_pb, grad_flow)
        for t in range(n, steps):
            grad_pf[b, t] = 0.0
            grad_flow[b, t] = 0.0
            if has_pb:
                grad_pb[b, t] = 0.0
        _terminal_grads(-last, log_reward, beta, b, clip_min, grad_log_reward, need_log_reward,
                        grad_beta, need_beta)


# ------------------------------------------------------------------ sub-trajectory balance


@numba.njit(parallel=True, cache=True)
def _subtb_forward(log_pf, log_pb, has_pb, flow, sr, has_sr, lengths, packed, log_reward, beta,
                   clip_min, loss_id, loss_param, lam, row_weight, table, use_table, running,
                   a, row_out):
    batch = row_out.shape[0]
    steps = log_pf.shape[1]
    for b in numba.prange(batch):
        row, col, n = _extent(lengths, b, packed, steps)
        base = _base(lengths, b, packed, steps, col)
        a[base] = 0.0
        if n == 0:
            row_out[b] = 0.0
            continue
        terminal = _terminal(log_reward, beta, b, clip_min)
        flow0 = _flow(flow, sr, has_sr, row, col)
        prefix = a.dtype.type(0.0)
        s0 = a.dtype.type(0.0)
        m1 = a.dtype.type(0.0)
        m2 = a.dtype.type(0.0)
        total = a.dtype.type(0.0)
        a_prev = a.dtype.type(0.0)
        for k in range(1, n + 1):
            prefix += log_pf[row, col + k - 1]
            if has_pb:
                prefix -= log_pb[row, col + k - 1]
            flow_k = _flow(flow, sr, has_sr, row, col + k) if k < n else terminal
            a_k = (flow_k - flow0) - prefix
            a[base + k] = a_k
            if running:
                delta = a_prev - a_k
                # M2 gains delta (2 M1 + delta S): factored, an infinite delta (log R = -inf,
                # no clip) gives the loss +inf; 2 delta M1 + delta^2 S would be inf - inf
                m2 = lam * (m2 + delta * (2.0 * m1 + delta * (s0 + 1.0)))
                m1 = lam * (m1 + delta * (s0 + 1.0))
                s0 = lam * (s0 + 1.0)
                total += m2
            a_prev = a_k
        if running:
            if loss_id == HALF_SQUARED:
                total *= 0.5
        else:
            for i in range(n):
                a_i = a[base + i]
                weight = a.dtype.type(1.0)
                for j in range(i + 1, n + 1):
                    if use_table:
                        weight = table[j - i - 1]
                    else:
                        weight *= lam
                    total += weight * rho(a_i - a[base + j], loss_id, loss_param)
        row_out[b] = row_weight[b] * total


@numba.njit(parallel=True, cache=True)
def _subtb_backward(grad_loss, a, g, lengths, packed, steps, row_weight, table, use_table, lam,
                    running, loss_id, loss_param, log_reward, beta, clip_min, grad_pf, grad_pb,
                    has_pb, grad_flow, grad_log_reward, need_log_reward, grad_beta, need_beta):
    batch = log_reward.shape[0]
    for b in numba.prange(batch):
        row, col, n = _extent(lengths, b, packed, steps)
        base = _base(lengths, b, packed, steps, col)
        coef = grad_loss[0] * row_weight[b]
        # g[base + m] = dLoss/da(m)
        if running:
            scale = -2.0 * coef if loss_id == SQUARED else -coef
            s0 = a.dtype.type(0.0)
            m1 = a.dtype.type(0.0)
            g[base] = 0.0
            for j in range(1, n + 1):
                delta = a[base + j - 1] - a[base + j]
                m1 = lam * (m1 + delta * (s0 + 1.0))
                s0 = lam * (s0 + 1.0)
                g[base + j] = m1
            r0 = a.dtype.type(0.0)
            n1 = a.dtype.type(0.0)
            for m in range(n, -1, -1):
                if m < n:
                    delta = a[base + m + 1] - a[base + m]
                    n1 = lam * (n1 + delta * (r0 + 1.0))
                    r0 = lam * (r0 + 1.0)
                g[base + m] = scale * (g[base + m] + n1)
        else:
            for m in range(n + 1):
                a_m = a[base + m]
                total = a.dtype.type(0.0)
                weight = a.dtype.type(1.0)
                for k in range(m + 1, n + 1):
                    if use_table:
                        weight = table[k - m - 1]
                    else:
                        weight *= lam
                    total += weight * rho_grad(a_m - a[base + k], loss_id, loss_param)
                weight = a.dtype.type(1.0)
                for k in range(m - 1, -1, -1):
                    if use_table:
                        weight = table[m - k - 1]
                    else:
                        weight *= lam
                    total -= weight * rho_grad(a[base + k] - a[base + m], loss_id, loss_param)
                g[base + m] = coef * total
        # a(m) = F(m) - P(m): dF(m) = g(m); dlog_pf[t] = -sum_{m>t} g(m) = -dlog_pb[t]
        suffix = a.dtype.type(0.0)
        for m in range(n, 0, -1):
            g_m = g[base + m]
            if m < n:
                grad_flow[row, col + m] = g_m
            suffix += g_m
            grad_pf[row, col + m - 1] = -suffix
            if has_pb:
                grad_pb[row, col + m - 1] = suffix
        if n > 0:
            grad_flow[row, col] = g[base]
            _terminal_grads(g[base + n], log_reward, beta, b, clip_min, grad_log_reward,
                            need_log_reward, grad_beta, need_beta)
        else:
            _terminal_grads(0.0 * coef, log_reward, beta, b, clip_min, grad_log_reward,
                            need_log_reward, grad_beta, need_beta)
        if not packed:
            for t in range(n, steps):
                grad_pf[row, t] = 0.0
                grad_flow[row, t] = 0.0
                if has_pb:
                    grad_pb[row, t] = 0.0


# ------------------------------------------------------------------ launch wrappers


def _subtb_work(log_pf, running: bool) -> int:
    steps = log_pf.shape[0] if log_pf.dim() == 1 else log_pf.shape[1]
    return log_pf.numel() * (1 if running else steps)


def _inputs(log_pf, log_pb, log_flow, log_state_reward, packed, dtype):
    pf = as_numpy(_as_2d(log_pf, packed), dtype)
    pb = as_numpy(_as_2d(log_pb, packed), dtype) if log_pb is not None else pf
    flow = as_numpy(_as_2d(log_flow, packed), dtype)
    sr = as_numpy(_as_2d(log_state_reward, packed), dtype) if log_state_reward is not None \
        else flow
    return pf, pb, flow, sr


def _grad_buffers(log_pf, has_pb, dtype, batch, need_log_reward, need_beta):
    wide = log_pf.dtype if log_pf.dtype in (torch.float32, torch.float64) else dtype
    grad_pf = output_like(log_pf, wide)
    grad_pb = output_like(log_pf, wide) if has_pb else None
    grad_flow = output_like(log_pf, wide)
    grad_log_reward = torch.empty(batch if need_log_reward else 1, dtype=dtype, device="cpu")
    grad_beta = torch.empty(batch if need_beta else 1, dtype=dtype, device="cpu")
    return grad_pf, grad_pb, grad_flow, grad_log_reward, grad_beta


def _narrow(log_pf, grad_pf, grad_pb, grad_flow):
    if grad_pf.dtype != log_pf.dtype:
        grad_pf = grad_pf.to(log_pf.dtype)
        grad_pb = grad_pb.to(log_pf.dtype) if grad_pb is not None else None
        grad_flow = grad_flow.to(log_pf.dtype)
    return grad_pf, grad_pb, grad_flow


def _squared_fast_path(loss_id, packed, log_state_reward, *arrays) -> bool:
    """Whether DB's squared-loss kernels apply: padded [B, T] without state rewards, with rows
    contiguous along T (or constant along it). On time-major inputs read through `.T` their
    loops would stride by B and lose to the general kernels (measured 1.3x slower)."""
    if loss_id != SQUARED or packed or log_state_reward is not None:
        return False
    return all(a.shape[1] <= 1 or a.strides[1] in (0, a.itemsize) for a in arrays)


def db_forward(log_pf, log_pb, log_flow, log_state_reward, lengths, packed, log_reward, beta,
               clip_min, loss_id, loss_param, per_step):
    """Per-trajectory sums of rho(d_t) [B], and the per-step rho(d) (zero-padded [B, T], or
    flat [N] when packed) when per_step, else None. Accumulated in the dtype of log_reward."""
    dtype = log_reward.dtype
    batch = log_reward.shape[0]
    pf, pb, flow, sr = _inputs(log_pf, log_pb, log_flow, log_state_reward, packed, dtype)
    rows = torch.empty(batch, dtype=dtype, device="cpu")
    steps_out = empty(log_pf.shape if per_step else (1,), dtype=dtype)
    step_view = _as_2d(steps_out, packed).numpy() if per_step else np.zeros((1, 1), pf.dtype)
    if _squared_fast_path(loss_id, packed, log_state_reward, pf, pb, flow):
        _threads_for(_db_forward_squared, log_pf.numel())(
            pf, pb, log_pb is not None, flow, lengths.numpy(), log_reward.numpy(),
            row_or(beta, batch, dtype, 1.0), float(clip_min), per_step, step_view, rows.numpy())
    else:
        _threads_for(_db_forward, log_pf.numel())(
            pf, pb, log_pb is not None, flow, sr, log_state_reward is not None,
            lengths.numpy(), packed, log_reward.numpy(), row_or(beta, batch, dtype, 1.0),
            float(clip_min), loss_id, float(loss_param), per_step, step_view, rows.numpy())
    return rows, (steps_out if per_step else None)


def db_backward(grad_steps, log_pf, log_pb, log_flow, log_state_reward, lengths, packed,
                log_reward, beta, clip_min, loss_id, loss_param, need_log_reward, need_beta):
    """grad_steps: dLoss/drho(d_t), shaped like log_pf (any strides, may be an expanded scalar).
    Returns (grad_log_pf, grad_log_pb or None, grad of F(t) for t < n (= grad_log_flow =
    grad_log_state_reward), grad_log_reward or None, grad_beta or None)."""
    dtype = log_reward.dtype
    batch = log_reward.shape[0]
    pf, pb, flow, sr = _inputs(log_pf, log_pb, log_flow, log_state_reward, packed, dtype)
    grads = _grad_buffers(log_pf, log_pb is not None, dtype, batch, need_log_reward, need_beta)
    grad_pf, grad_pb, grad_flow, grad_log_reward, grad_beta = grads
    gpf = _as_2d(grad_pf, packed).numpy()
    grad_np = as_numpy(_as_2d(grad_steps.to(dtype), packed), dtype)
    if _squared_fast_path(loss_id, packed, log_state_reward, pf, pb, flow, grad_np):
        kernel = _threads_for(_db_backward_squared, log_pf.numel())
        kernel(grad_np, grad_np.shape[1] > 0 and grad_np.strides[1] == 0, pf, pb,
               log_pb is not None, flow, lengths.numpy(), log_reward.numpy(),
               row_or(beta, batch, dtype, 1.0), float(clip_min), gpf,
               grad_pb.numpy() if grad_pb is not None else gpf, grad_flow.numpy(),
               grad_log_reward.numpy(), need_log_reward, grad_beta.numpy(), need_beta)
    else:
        kernel = _threads_for(_db_backward, log_pf.numel())
        kernel(grad_np, pf, pb, log_pb is not None, flow, sr, log_state_reward is not None,
               lengths.numpy(), packed, log_reward.numpy(), row_or(beta, batch, dtype, 1.0),
               float(clip_min), loss_id, float(loss_param), gpf,
               _as_2d(grad_pb, packed).numpy() if grad_pb is not None else gpf,
               _as_2d(grad_flow, packed).numpy(), grad_log_reward.numpy(), need_log_reward,
               grad_beta.numpy(), need_beta)
    grad_pf, grad_pb, grad_flow = _narrow(log_pf, grad_pf, grad_pb, grad_flow)
    return (grad_pf, grad_pb, grad_flow, grad_log_reward if need_log_reward else None,
            grad_beta if need_beta else None)


def subtb_forward(log_pf, log_pb, log_flow, log_state_reward, lengths, packed, log_reward, beta,
                  clip_min, loss_id, loss_param, lam, row_weight, table, running, a_size):
    """Per-trajectory weighted SubTB sums [B] and the potentials `a` [a_size] (acc dtype)."""
    dtype = log_reward.dtype
    batch = log_reward.shape[0]
    pf, pb, flow, sr = _inputs(log_pf, log_pb, log_flow, log_state_reward, packed, dtype)
    rows = torch.empty(batch, dtype=dtype, device="cpu")
    # slots past n_b stay 0 (a deterministic output)
    a = torch.zeros(a_size, dtype=dtype, device="cpu")
    table_np = table.numpy() if table is not None else np.ones(1, rows.numpy().dtype)
    kernel = _threads_for(_subtb_forward, _subtb_work(log_pf, running))
    kernel(pf, pb, log_pb is not None, flow, sr, log_state_reward is not None,
           lengths.numpy(), packed, log_reward.numpy(), row_or(beta, batch, dtype, 1.0),
           float(clip_min), loss_id, float(loss_param), float(lam),
           per_row(row_weight, batch, dtype), table_np, table is not None, running,
           a.numpy(), rows.numpy())
    return rows, a


def subtb_backward(grad_loss, a, lengths, packed, log_pf, has_pb, log_reward, beta, clip_min,
                   loss_id, loss_param, lam, row_weight, table, running, need_log_reward,
                   need_beta):
    """Gradients from the saved potentials; same return contract as db_backward."""
    dtype = log_reward.dtype
    batch = log_reward.shape[0]
    steps = log_pf.shape[0] if packed else log_pf.shape[1]
    grads = _grad_buffers(log_pf, has_pb, dtype, batch, need_log_reward, need_beta)
    grad_pf, grad_pb, grad_flow, grad_log_reward, grad_beta = grads
    gpf = _as_2d(grad_pf, packed).numpy()
    g = output_like(a, a.dtype)
    table_np = table.numpy() if table is not None else np.ones(1, a.numpy().dtype)
    kernel = _threads_for(_subtb_backward, _subtb_work(log_pf, running))
    kernel(per_row(grad_loss, 1, dtype), a.numpy(), g.numpy(), lengths.numpy(),
           packed, steps, per_row(row_weight, batch, dtype), table_np,
           table is not None, float(lam), running, loss_id, float(loss_param),
           log_reward.numpy(), row_or(beta, batch, dtype, 1.0), float(clip_min), gpf,
           _as_2d(grad_pb, packed).numpy() if has_pb else gpf, has_pb,
           _as_2d(grad_flow, packed).numpy(), grad_log_reward.numpy(),
           need_log_reward, grad_beta.numpy(), need_beta)
    grad_pf, grad_pb, grad_flow = _narrow(log_pf, grad_pf, grad_pb, grad_flow)
    return (grad_pf, grad_pb, grad_flow, grad_log_reward if need_log_reward else None,
            grad_beta if need_beta else None)
