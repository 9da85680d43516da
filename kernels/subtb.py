"""Triton kernels of detailed balance (DB) and sub-trajectory balance (SubTB).

Same contracts as gfn_fast.cpu.subtb (read its docstring for the math and the saved potentials).

- DB is elementwise over transitions: programs own BLOCK_B trajectories and walk their steps in
  [BLOCK_B, BLOCK_T] tiles, reading F(t) and F(t+1) as two overlapping tiles (both layouts read
  coalesced along whichever stride is 1).
- SubTB's recurrences are sequential in time: a program owns BLOCK_B trajectories, one per lane,
  and steps k = 0..max n_b in lock-step (coalesced for time-major [T, B] storage, which is what
  torchgfn produces). The pair loop tiles j over BLOCK_T lanes for each i.

Float arguments (lambda, clip, loss parameter) are annotated tl.float64, so a float64 kernel sees
the exact double (compiled Triton passes an unannotated Python float as fp32), and converted to
the accumulator type once (_common.scalar).
"""

import torch
import triton
import triton.language as tl
from gfn_fast.kernels._common import accumulator, interpret, rho, rho_grad, scalar
from gfn_fast.kernels._common import trajectory_extent as _extent


@triton.jit
def _row_offset(rows, start, stride_b, stride_t, PACKED: tl.constexpr):
    return start * stride_t + (0 if PACKED else rows * stride_b)


@triton.jit
def _terminal(log_reward_ptr, beta_ptr, rows, row_mask, stride_beta, clip_min,
              HAS_BETA: tl.constexpr, ACC: tl.constexpr):
    """(L_b = beta_b * max(log R_b, clip), beta_b, log R_b)."""
    reward = tl.load(log_reward_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    if HAS_BETA:
        beta = tl.load(beta_ptr + rows * stride_beta, mask=row_mask, other=1.0).to(ACC)
    else:
        beta = tl.full(rows.shape, 1.0, ACC)
    return beta * tl.where(reward < clip_min, clip_min, reward), beta, reward


@triton.jit
def _store_terminal_grads(g, beta, reward, clip_min, rows, row_mask, grad_log_reward_ptr,
                          grad_beta_ptr, NEED_LOG_REWARD: tl.constexpr, NEED_BETA: tl.constexpr):
    """g = dLoss/dL_b."""
    if NEED_LOG_REWARD:
        tl.store(grad_log_reward_ptr + rows, tl.where(reward >= clip_min, g * beta, 0.0 * g),
                 mask=row_mask)
    if NEED_BETA:
        tl.store(grad_beta_ptr + rows, g * tl.where(reward < clip_min, clip_min, reward),
                 mask=row_mask)


@triton.jit
def _flow_tile(flow_ptr, sr_ptr, fl_row, sr_row, stride_fl_t, stride_sr_t, t, count, terminal,
               HAS_SR: tl.constexpr, ACC: tl.constexpr):
    """F(t) on a [BLOCK_B, BLOCK_T] tile: log_flow (+ log_state_reward) for t < n, L at t = n."""
    inside = (t[None, :] < count[:, None]) & (t[None, :] >= 0)
    value = tl.load(flow_ptr + fl_row[:, None] + t[None, :] * stride_fl_t, mask=inside,
                    other=0.0).to(ACC)
    if HAS_SR:
        value += tl.load(sr_ptr + sr_row[:, None] + t[None, :] * stride_sr_t, mask=inside,
                         other=0.0).to(ACC)
    return tl.where(t[None, :] == count[:, None], terminal[:, None], value)


@triton.jit
def _db_residual_tile(pf_ptr, pb_ptr, flow_ptr, sr_ptr, pf_row, pb_row, fl_row, sr_row,
                      stride_pf_t, stride_pb_t, stride_fl_t, stride_sr_t, t, count, terminal,
                      HAS_PB: tl.constexpr, HAS_SR: tl.constexpr, ACC: tl.constexpr):
    """(d[b, t] on the tile, valid mask t < n_b)."""
    valid = (t[None, :] < count[:, None]) & (t[None, :] >= 0)
    here = _flow_tile(flow_ptr, sr_ptr, fl_row, sr_row, stride_fl_t, stride_sr_t, t, count,
                      terminal, HAS_SR, ACC)
    after = _flow_tile(flow_ptr, sr_ptr, fl_row, sr_row, stride_fl_t, stride_sr_t, t + 1, count,
                       terminal, HAS_SR, ACC)
    d = here - after + tl.load(pf_ptr + pf_row[:, None] + t[None, :] * stride_pf_t, mask=valid,
                               other=0.0).to(ACC)
    if HAS_PB:
        d -= tl.load(pb_ptr + pb_row[:, None] + t[None, :] * stride_pb_t, mask=valid,
                     other=0.0).to(ACC)
    return d, valid


@triton.jit
def _db_forward_kernel(
    pf_ptr, pb_ptr, flow_ptr, sr_ptr, lengths_ptr, log_reward_ptr, beta_ptr, rows_out_ptr,
    steps_out_ptr, batch, steps, stride_pf_b, stride_pf_t, stride_pb_b, stride_pb_t,
    stride_fl_b, stride_fl_t, stride_sr_b, stride_sr_t, stride_out_b, stride_out_t, stride_beta,
    clip_min: tl.float64, loss_param: tl.float64,
    HAS_PB: tl.constexpr, HAS_SR: tl.constexpr, HAS_BETA: tl.constexpr, PACKED: tl.constexpr,
    PER_STEP: tl.constexpr, LOSS: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    row_mask = rows < batch
    clip_min = scalar(clip_min, ACC)
    loss_param = scalar(loss_param, ACC)
    start, count = _extent(lengths_ptr, rows, row_mask, steps, PACKED)
    terminal, _beta, _reward = _terminal(log_reward_ptr, beta_ptr, rows, row_mask, stride_beta,
                                         clip_min, HAS_BETA, ACC)
    pf_row = _row_offset(rows, start, stride_pf_b, stride_pf_t, PACKED)
    pb_row = _row_offset(rows, start, stride_pb_b, stride_pb_t, PACKED)
    fl_row = _row_offset(rows, start, stride_fl_b, stride_fl_t, PACKED)
    sr_row = _row_offset(rows, start, stride_sr_b, stride_sr_t, PACKED)
    out_row = _row_offset(rows, start, stride_out_b, stride_out_t, PACKED)
    if PER_STEP and not PACKED:
        bound = steps
        limit = tl.where(row_mask, steps, 0)
    else:
        bound = tl.max(count, axis=0)
        limit = count
    total = tl.zeros([BLOCK_B, BLOCK_T], dtype=ACC)
    for t0 in range(0, bound, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
        d, valid = _db_residual_tile(pf_ptr, pb_ptr, flow_ptr, sr_ptr, pf_row, pb_row, fl_row,
                                     sr_row, stride_pf_t, stride_pb_t, stride_fl_t, stride_sr_t,
                                     t, count, terminal, HAS_PB, HAS_SR, ACC)
        value = tl.where(valid, rho(d, loss_param, LOSS), 0.0)
        total += value
        if PER_STEP:
            tl.store(steps_out_ptr + out_row[:, None] + t[None, :] * stride_out_t, value,
                     mask=t[None, :] < limit[:, None])
    tl.store(rows_out_ptr + rows, tl.sum(total, axis=1), mask=row_mask)


@triton.jit
def _db_grad_tile(grad_ptr, g_row, stride_g_t, pf_ptr, pb_ptr, flow_ptr, sr_ptr, pf_row, pb_row,
                  fl_row, sr_row, stride_pf_t, stride_pb_t, stride_fl_t, stride_sr_t, t, count,
                  terminal, loss_param, HAS_PB: tl.constexpr, HAS_SR: tl.constexpr,
                  LOSS: tl.constexpr, ACC: tl.constexpr):
    """dLoss/dd[b, t] on the tile (0 outside 0 <= t < n_b)."""
    d, valid = _db_residual_tile(pf_ptr, pb_ptr, flow_ptr, sr_ptr, pf_row, pb_row, fl_row,
                                 sr_row, stride_pf_t, stride_pb_t, stride_fl_t, stride_sr_t, t,
                                 count, terminal, HAS_PB, HAS_SR, ACC)
    upstream = tl.load(grad_ptr + g_row[:, None] + t[None, :] * stride_g_t, mask=valid,
                       other=0.0).to(ACC)
    return tl.where(valid, upstream * rho_grad(d, loss_param, LOSS), 0.0)


@triton.jit
def _db_backward_kernel(
    grad_ptr, pf_ptr, pb_ptr, flow_ptr, sr_ptr, lengths_ptr, log_reward_ptr, beta_ptr,
    grad_pf_ptr, grad_pb_ptr, grad_flow_ptr, grad_log_reward_ptr, grad_beta_ptr,
    batch, steps, stride_g_b, stride_g_t, stride_pf_b, stride_pf_t, stride_pb_b, stride_pb_t,
    stride_fl_b, stride_fl_t, stride_sr_b, stride_sr_t, stride_beta,
    clip_min: tl.float64, loss_param: tl.float64,
    HAS_PB: tl.constexpr, HAS_SR: tl.constexpr, HAS_BETA: tl.constexpr, PACKED: tl.constexpr,
    NEED_LOG_REWARD: tl.constexpr, NEED_BETA: tl.constexpr, LOSS: tl.constexpr,
    ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    row_mask = rows < batch
    clip_min = scalar(clip_min, ACC)
    loss_param = scalar(loss_param, ACC)
    start, count = _extent(lengths_ptr, rows, row_mask, steps, PACKED)
    terminal, beta, reward = _terminal(log_reward_ptr, beta_ptr, rows, row_mask, stride_beta,
                                       clip_min, HAS_BETA, ACC)
    g_row = _row_offset(rows, start, stride_g_b, stride_g_t, PACKED)
    pf_row = _row_offset(rows, start, stride_pf_b, stride_pf_t, PACKED)
    pb_row = _row_offset(rows, start, stride_pb_b, stride_pb_t, PACKED)
    fl_row = _row_offset(rows, start, stride_fl_b, stride_fl_t, PACKED)
    sr_row = _row_offset(rows, start, stride_sr_b, stride_sr_t, PACKED)
    # gradient buffers are allocated contiguous like the inputs' shape: [B, T] or [N]
    out_row = start + (0 if PACKED else rows * steps)
    if PACKED:
        bound = tl.max(count, axis=0)
        limit = count
    else:
        bound = steps
        limit = tl.where(row_mask, steps, 0)
    last = tl.zeros([BLOCK_B], dtype=ACC)
    for t0 in range(0, bound, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
        g = _db_grad_tile(grad_ptr, g_row, stride_g_t, pf_ptr, pb_ptr, flow_ptr, sr_ptr, pf_row,
                          pb_row, fl_row, sr_row, stride_pf_t, stride_pb_t, stride_fl_t,
                          stride_sr_t, t, count, terminal, loss_param, HAS_PB, HAS_SR, LOSS, ACC)
        g_before = _db_grad_tile(grad_ptr, g_row, stride_g_t, pf_ptr, pb_ptr, flow_ptr, sr_ptr,
                                 pf_row, pb_row, fl_row, sr_row, stride_pf_t, stride_pb_t,
                                 stride_fl_t, stride_sr_t, t - 1, count, terminal, loss_param,
                                 HAS_PB, HAS_SR, LOSS, ACC)
        write = t[None, :] < limit[:, None]
        where = out_row[:, None] + t[None, :]
        tl.store(grad_pf_ptr + where, g.to(grad_pf_ptr.dtype.element_ty), mask=write)
        if HAS_PB:
            tl.store(grad_pb_ptr + where, (-g).to(grad_pb_ptr.dtype.element_ty), mask=write)
        # F(t) enters d_t with + and d_{t-1} with -
        flow_grad = tl.where(t[None, :] < count[:, None], g - g_before, 0.0)
        tl.store(grad_flow_ptr + where, flow_grad.to(grad_flow_ptr.dtype.element_ty), mask=write)
        last += tl.sum(tl.where(t[None, :] == count[:, None] - 1, g, 0.0), axis=1)
    _store_terminal_grads(-last, beta, reward, clip_min, rows, row_mask, grad_log_reward_ptr,
                          grad_beta_ptr, NEED_LOG_REWARD, NEED_BETA)


@triton.jit
def _subtb_forward_kernel(
    pf_ptr, pb_ptr, flow_ptr, sr_ptr, lengths_ptr, log_reward_ptr, beta_ptr, row_weight_ptr,
    table_ptr, a_ptr, rows_out_ptr, batch, steps, stride_pf_b, stride_pf_t, stride_pb_b,
    stride_pb_t, stride_fl_b, stride_fl_t, stride_sr_b, stride_sr_t, stride_beta,
    stride_row_weight, clip_min: tl.float64, loss_param: tl.float64, lam: tl.float64,
    HAS_PB: tl.constexpr, HAS_SR: tl.constexpr, HAS_BETA: tl.constexpr, PACKED: tl.constexpr,
    RUNNING: tl.constexpr, USE_TABLE: tl.constexpr, LOSS: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    row_mask = rows < batch
    clip_min = scalar(clip_min, ACC)
    loss_param = scalar(loss_param, ACC)
    lam = scalar(lam, ACC)
    log_lam = tl.log(lam)
    start, count = _extent(lengths_ptr, rows, row_mask, steps, PACKED)
    terminal, _beta, _reward = _terminal(log_reward_ptr, beta_ptr, rows, row_mask, stride_beta,
                                         clip_min, HAS_BETA, ACC)
    pf_row = _row_offset(rows, start, stride_pf_b, stride_pf_t, PACKED)
    pb_row = _row_offset(rows, start, stride_pb_b, stride_pb_t, PACKED)
    fl_row = _row_offset(rows, start, stride_fl_b, stride_fl_t, PACKED)
    sr_row = _row_offset(rows, start, stride_sr_b, stride_sr_t, PACKED)
    base = start + rows if PACKED else rows * (steps + 1)
    some = count > 0
    flow0 = tl.load(flow_ptr + fl_row, mask=some, other=0.0).to(ACC)
    if HAS_SR:
        flow0 += tl.load(sr_ptr + sr_row, mask=some, other=0.0).to(ACC)
    tl.store(a_ptr + base, tl.zeros([BLOCK_B], dtype=ACC), mask=row_mask)
    prefix = tl.zeros([BLOCK_B], dtype=ACC)
    s0 = tl.zeros([BLOCK_B], dtype=ACC)
    m1 = tl.zeros([BLOCK_B], dtype=ACC)
    m2 = tl.zeros([BLOCK_B], dtype=ACC)
    a_prev = tl.zeros([BLOCK_B], dtype=ACC)
    total = tl.zeros([BLOCK_B], dtype=ACC)
    longest = tl.max(count, axis=0)
    for k in range(1, longest + 1):
        active = k <= count
        step = k - 1
        prefix += tl.load(pf_ptr + pf_row + step * stride_pf_t, mask=active, other=0.0).to(ACC)
        if HAS_PB:
            prefix -= tl.load(pb_ptr + pb_row + step * stride_pb_t, mask=active,
                              other=0.0).to(ACC)
        inner = k < count
        flow_k = tl.load(flow_ptr + fl_row + k * stride_fl_t, mask=inner, other=0.0).to(ACC)
        if HAS_SR:
            flow_k += tl.load(sr_ptr + sr_row + k * stride_sr_t, mask=inner, other=0.0).to(ACC)
        flow_k = tl.where(inner, flow_k, terminal)
        a_k = (flow_k - flow0) - prefix
        tl.store(a_ptr + base + k, a_k, mask=active)
        if RUNNING:
            delta = a_prev - a_k
            # factored so that an infinite delta gives +inf, not inf - inf (cpu/subtb.py)
            m2 = lam * (m2 + delta * (2.0 * m1 + delta * (s0 + 1.0)))
            m1 = lam * (m1 + delta * (s0 + 1.0))
            s0 = lam * (s0 + 1.0)
            total += tl.where(active, m2, 0.0)
        a_prev = a_k
    if RUNNING:
        if LOSS == 1:
            total = total * 0.5
    else:
        # the pair loop reads potentials other lanes wrote
        tl.debug_barrier()
        for i in range(0, longest):
            a_i = tl.load(a_ptr + base + i, mask=i < count, other=0.0)
            for j0 in range(i + 1, longest + 1, BLOCK_T):
                j = j0 + tl.arange(0, BLOCK_T).to(tl.int64)
                valid = j[None, :] <= count[:, None]
                a_j = tl.load(a_ptr + base[:, None] + j[None, :], mask=valid, other=0.0)
                span = j - i
                if USE_TABLE:
                    weight = tl.load(table_ptr + span - 1, mask=span <= steps, other=0.0)
                else:
                    weight = tl.exp(span.to(ACC) * log_lam)
                value = weight[None, :] * rho(a_i[:, None] - a_j, loss_param, LOSS)
                total += tl.sum(tl.where(valid, value, 0.0), axis=1)
    row_weight = tl.load(row_weight_ptr + rows * stride_row_weight, mask=row_mask, other=0.0)
    tl.store(rows_out_ptr + rows, row_weight.to(ACC) * total, mask=row_mask)


@triton.jit
def _subtb_backward_kernel(
    grad_loss_ptr, a_ptr, g_ptr, lengths_ptr, log_reward_ptr, beta_ptr, row_weight_ptr,
    table_ptr, grad_pf_ptr, grad_pb_ptr, grad_flow_ptr, grad_log_reward_ptr, grad_beta_ptr,
    batch, steps, stride_beta, stride_row_weight, clip_min: tl.float64,
    loss_param: tl.float64, lam: tl.float64,
    HAS_PB: tl.constexpr, HAS_BETA: tl.constexpr, PACKED: tl.constexpr, RUNNING: tl.constexpr,
    USE_TABLE: tl.constexpr, NEED_LOG_REWARD: tl.constexpr, NEED_BETA: tl.constexpr,
    LOSS: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    row_mask = rows < batch
    clip_min = scalar(clip_min, ACC)
    loss_param = scalar(loss_param, ACC)
    lam = scalar(lam, ACC)
    log_lam = tl.log(lam)
    start, count = _extent(lengths_ptr, rows, row_mask, steps, PACKED)
    _terminal_value, beta, reward = _terminal(log_reward_ptr, beta_ptr, rows, row_mask,
                                              stride_beta, clip_min, HAS_BETA, ACC)
    base = start + rows if PACKED else rows * (steps + 1)
    out_row = start + (0 if PACKED else rows * steps)
    row_weight = tl.load(row_weight_ptr + rows * stride_row_weight, mask=row_mask, other=0.0)
    coef = tl.load(grad_loss_ptr).to(ACC) * row_weight.to(ACC)
    longest = tl.max(count, axis=0)
    # phase 1: g[m] = dLoss/da(m), m = 0..n
    if RUNNING:
        if LOSS == 0:
            scale = -2.0 * coef
        else:
            scale = -coef
        s0 = tl.zeros([BLOCK_B], dtype=ACC)
        m1 = tl.zeros([BLOCK_B], dtype=ACC)
        a_prev = tl.zeros([BLOCK_B], dtype=ACC)
        tl.store(g_ptr + base, tl.zeros([BLOCK_B], dtype=ACC), mask=row_mask)
        for j in range(1, longest + 1):
            active = j <= count
            a_j = tl.load(a_ptr + base + j, mask=active, other=0.0)
            delta = a_prev - a_j
            m1 = lam * (m1 + delta * (s0 + 1.0))
            s0 = lam * (s0 + 1.0)
            tl.store(g_ptr + base + j, m1, mask=active)
            a_prev = a_j
        r0 = tl.zeros([BLOCK_B], dtype=ACC)
        n1 = tl.zeros([BLOCK_B], dtype=ACC)
        a_next = tl.zeros([BLOCK_B], dtype=ACC)
        for back in range(0, longest + 1):
            m = longest - back
            active = (m <= count) & row_mask
            a_m = tl.load(a_ptr + base + m, mask=active, other=0.0)
            inner = m < count
            delta = a_next - a_m
            n1 = tl.where(inner, lam * (n1 + delta * (r0 + 1.0)), n1)
            r0 = tl.where(inner, lam * (r0 + 1.0), r0)
            prefix_moment = tl.load(g_ptr + base + m, mask=active, other=0.0)
            tl.store(g_ptr + base + m, scale * (prefix_moment + n1), mask=active)
            a_next = a_m
    else:
        for m in range(0, longest + 1):
            active = (m <= count) & row_mask
            a_m = tl.load(a_ptr + base + m, mask=active, other=0.0)
            total = tl.zeros([BLOCK_B], dtype=ACC)
            for k0 in range(0, longest + 1, BLOCK_T):
                k = k0 + tl.arange(0, BLOCK_T).to(tl.int64)
                valid = (k[None, :] <= count[:, None]) & (k[None, :] != m)
                a_k = tl.load(a_ptr + base[:, None] + k[None, :], mask=valid, other=0.0)
                span = tl.abs(k - m)
                if USE_TABLE:
                    weight = tl.load(table_ptr + span - 1, mask=(span >= 1) & (span <= steps),
                                     other=0.0)
                else:
                    weight = tl.exp(span.to(ACC) * log_lam)
                later = k[None, :] > m
                diff = tl.where(later, a_m[:, None] - a_k, a_k - a_m[:, None])
                sign = tl.where(later, 1.0, -1.0)
                value = weight[None, :] * sign * rho_grad(diff, loss_param, LOSS)
                total += tl.sum(tl.where(valid, value, 0.0), axis=1)
            tl.store(g_ptr + base + m, coef * total, mask=active)
    # phase 2: a(m) = F(m) - P(m): dF(m) = g(m); dlog_pf[t] = -sum_{m>t} g(m) = -dlog_pb[t]
    suffix = tl.zeros([BLOCK_B], dtype=ACC)
    terminal_grad = tl.zeros([BLOCK_B], dtype=ACC)
    for back in range(0, longest + 1):
        m = longest - back
        active = (m <= count) & row_mask
        g_m = tl.load(g_ptr + base + m, mask=active, other=0.0)
        terminal_grad += tl.where(m == count, g_m, 0.0)
        tl.store(grad_flow_ptr + out_row + m, g_m.to(grad_flow_ptr.dtype.element_ty),
                 mask=m < count)
        suffix += g_m
        before = active & ((tl.zeros_like(count) + m) >= 1)
        tl.store(grad_pf_ptr + out_row + m - 1, (-suffix).to(grad_pf_ptr.dtype.element_ty),
                 mask=before)
        if HAS_PB:
            tl.store(grad_pb_ptr + out_row + m - 1, suffix.to(grad_pb_ptr.dtype.element_ty),
                     mask=before)
    _store_terminal_grads(terminal_grad, beta, reward, clip_min, rows, row_mask,
                          grad_log_reward_ptr, grad_beta_ptr, NEED_LOG_REWARD, NEED_BETA)
    if not PACKED:
        for t0 in range(0, steps, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
            pad = (t[None, :] >= count[:, None]) & (t[None, :] < steps) & row_mask[:, None]
            where = out_row[:, None] + t[None, :]
            zero = tl.zeros([BLOCK_B, BLOCK_T], dtype=ACC)
            tl.store(grad_pf_ptr + where, zero.to(grad_pf_ptr.dtype.element_ty), mask=pad)
            tl.store(grad_flow_ptr + where, zero.to(grad_flow_ptr.dtype.element_ty), mask=pad)
            if HAS_PB:
                tl.store(grad_pb_ptr + where, zero.to(grad_pb_ptr.dtype.element_ty), mask=pad)


# ------------------------------------------------------------------ launch wrappers


def _strides(tensor: torch.Tensor | None, packed: bool) -> tuple[int, int]:
    if tensor is None:
        return 0, 0
    return (0, tensor.stride(0)) if packed else (tensor.stride(0), tensor.stride(1))


def _per_row_stride(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None or tensor.dim() == 0 else tensor.stride(0)


def _tile_blocks(longest_steps: int) -> tuple[int, int]:
    block_t = min(128, triton.next_power_of_2(max(longest_steps, 1)))
    tile = 16384 if interpret() else 4096
    return max(1, tile // block_t), block_t


def _lane_blocks(batch: int, longest_steps: int) -> tuple[int, int]:
    """Lane-per-trajectory kernels: BLOCK_B trajectories a program; BLOCK_T for pair tiles."""
    block_b = 256 if interpret() else 32
    block_b = min(block_b, triton.next_power_of_2(max(batch, 1)))
    block_t = min(32, triton.next_power_of_2(max(longest_steps, 1)))
    return block_b, block_t


def _common(log_pf, log_pb, log_flow, log_state_reward, packed):
    return (*_strides(log_pf, packed), *_strides(log_pb if log_pb is not None else log_pf, packed),
            *_strides(log_flow, packed),
            *_strides(log_state_reward if log_state_reward is not None else log_flow, packed))


def db_forward(log_pf, log_pb, log_flow, log_state_reward, lengths, packed, log_reward, beta,
               clip_min, loss_id, loss_param, per_step):
    """Same contract as gfn_fast.cpu.subtb.db_forward."""
    dtype = log_reward.dtype
    batch = log_reward.shape[0]
    steps = log_pf.shape[0] if packed else log_pf.shape[1]
    device = log_pf.device
    rows = torch.empty(batch, dtype=dtype, device=device)
    steps_out = torch.empty(log_pf.shape if per_step else (1,), dtype=dtype, device=device)
    out_strides = _strides(steps_out, packed) if per_step else (0, 0)
    block_b, block_t = _tile_blocks(min(steps, 128))
    _db_forward_kernel[(triton.cdiv(batch, block_b),)](
        log_pf, log_pb if log_pb is not None else log_pf, log_flow,
        log_state_reward if log_state_reward is not None else log_flow, lengths, log_reward,
        beta if beta is not None else log_reward, rows, steps_out, batch, steps,
        *_common(log_pf, log_pb, log_flow, log_state_reward, packed), *out_strides,
        _per_row_stride(beta), float(clip_min), float(loss_param),
        HAS_PB=log_pb is not None, HAS_SR=log_state_reward is not None,
        HAS_BETA=beta is not None, PACKED=packed, PER_STEP=per_step, LOSS=loss_id,
        ACC=accumulator(dtype), BLOCK_B=block_b, BLOCK_T=block_t,
    )
    return rows, (steps_out if per_step else None)


def _grad_buffers(log_pf, has_pb, dtype, batch, need_log_reward, need_beta):
    device = log_pf.device
    grad_pf = torch.empty(log_pf.shape, dtype=log_pf.dtype, device=device)
    grad_pb = torch.empty(log_pf.shape, dtype=log_pf.dtype, device=device) if has_pb else None
    grad_flow = torch.empty(log_pf.shape, dtype=log_pf.dtype, device=device)
    grad_log_reward = torch.empty(batch if need_log_reward else 1, dtype=dtype, device=device)
    grad_beta = torch.empty(batch if need_beta else 1, dtype=dtype, device=device)
    return grad_pf, grad_pb, grad_flow, grad_log_reward, grad_beta


def db_backward(grad_steps, log_pf, log_pb, log_flow, log_state_reward, lengths, packed,
                log_reward, beta, clip_min, loss_id, loss_param, need_log_reward, need_beta):
    """Same contract as gfn_fast.cpu.subtb.db_backward."""
    dtype = log_reward.dtype
    batch = log_reward.shape[0]
    steps = log_pf.shape[0] if packed else log_pf.shape[1]
    grad_pf, grad_pb, grad_flow, grad_log_reward, grad_beta = _grad_buffers(
        log_pf, log_pb is not None, dtype, batch, need_log_reward, need_beta)
    block_b, block_t = _tile_blocks(min(steps, 128))
    _db_backward_kernel[(triton.cdiv(batch, block_b),)](
        grad_steps, log_pf, log_pb if log_pb is not None else log_pf, log_flow,
        log_state_reward if log_state_reward is not None else log_flow, lengths, log_reward,
        beta if beta is not None else log_reward, grad_pf,
        grad_pb if grad_pb is not None else grad_pf, grad_flow, grad_log_reward, grad_beta,
        batch, steps, *_strides(grad_steps, packed),
        *_common(log_pf, log_pb, log_flow, log_state_reward, packed), _per_row_stride(beta),
        float(clip_min), float(loss_param),
        HAS_PB=log_pb is not None, HAS_SR=log_state_reward is not None,
        HAS_BETA=beta is not None, PACKED=packed, NEED_LOG_REWARD=need_log_reward,
        NEED_BETA=need_beta, LOSS=loss_id, ACC=accumulator(dtype), BLOCK_B=block_b,
        BLOCK_T=block_t,
    )
    return (grad_pf, grad_pb, grad_flow, grad_log_reward if need_log_reward else None,
            grad_beta if need_beta else None)


def subtb_forward(log_pf, log_pb, log_flow, log_state_reward, lengths, packed, log_reward, beta,
                  clip_min, loss_id, loss_param, lam, row_weight, table, running, a_size):
    """Same contract as gfn_fast.cpu.subtb.subtb_forward."""
    dtype = log_reward.dtype
    batch = log_reward.shape[0]
    steps = log_pf.shape[0] if packed else log_pf.shape[1]
    device = log_pf.device
    rows = torch.empty(batch, dtype=dtype, device=device)
    a = torch.zeros(a_size, dtype=dtype, device=device)  # slots past n_b stay 0
    block_b, block_t = _lane_blocks(batch, steps)
    _subtb_forward_kernel[(triton.cdiv(batch, block_b),)](
        log_pf, log_pb if log_pb is not None else log_pf, log_flow,
        log_state_reward if log_state_reward is not None else log_flow, lengths, log_reward,
        beta if beta is not None else log_reward, row_weight,
        table if table is not None else row_weight, a, rows, batch, steps,
        *_common(log_pf, log_pb, log_flow, log_state_reward, packed), _per_row_stride(beta),
        _per_row_stride(row_weight), float(clip_min), float(loss_param), float(lam),
        HAS_PB=log_pb is not None, HAS_SR=log_state_reward is not None,
        HAS_BETA=beta is not None, PACKED=packed, RUNNING=running, USE_TABLE=table is not None,
        LOSS=loss_id, ACC=accumulator(dtype), BLOCK_B=block_b, BLOCK_T=block_t,
    )
    return rows, a


def subtb_backward(grad_loss, a, lengths, packed, log_pf, has_pb, log_reward, beta, clip_min,
                   loss_id, loss_param, lam, row_weight, table, running, need_log_reward,
                   need_beta):
    """Same contract as gfn_fast.cpu.subtb.subtb_backward."""
    dtype = log_reward.dtype
    batch = log_reward.shape[0]
    steps = log_pf.shape[0] if packed else log_pf.shape[1]
    grad_pf, grad_pb, grad_flow, grad_log_reward, grad_beta = _grad_buffers(
        log_pf, has_pb, dtype, batch, need_log_reward, need_beta)
    g = torch.empty_like(a)
    block_b, block_t = _lane_blocks(batch, steps)
    _subtb_backward_kernel[(triton.cdiv(batch, block_b),)](
        grad_loss.reshape(1), a, g, lengths, log_reward,
        beta if beta is not None else log_reward, row_weight,
        table if table is not None else row_weight, grad_pf,
        grad_pb if grad_pb is not None else grad_pf, grad_flow, grad_log_reward, grad_beta,
        batch, steps, _per_row_stride(beta), _per_row_stride(row_weight), float(clip_min),
        float(loss_param), float(lam),
        HAS_PB=has_pb, HAS_BETA=beta is not None, PACKED=packed, RUNNING=running,
        USE_TABLE=table is not None, NEED_LOG_REWARD=need_log_reward, NEED_BETA=need_beta,
        LOSS=loss_id, ACC=accumulator(dtype), BLOCK_B=block_b, BLOCK_T=block_t,
    )
    return (grad_pf, grad_pb, grad_flow, grad_log_reward if need_log_reward else None,
            grad_beta if need_beta else None)
