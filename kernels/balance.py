"""Triton kernels of the trajectory-balance family.

Each program owns BLOCK_B trajectories and walks their steps in [BLOCK_B, BLOCK_T] tiles, so a
batch-major [B, T] tensor and a time-major one passed as `.T` are both read in coalesced tiles
(Triton specialises a stride of 1 and orders the tile along it). Packed inputs (1-D with
cu_seqlens) use the same kernel with the batch stride ignored and the row start read from
cu_seqlens. Lengths and offsets are clamped to the tensor: bad values never index out of bounds.
"""

import torch
import triton
import triton.language as tl
from gfn_fast.kernels._common import accumulator, interpret, rho, rho_grad, scalar
from gfn_fast.kernels._common import trajectory_extent as _extent


@triton.jit
def _rows_forward_kernel(
    pf_ptr, pb_ptr, lengths_ptr, log_reward_ptr, log_z_ptr, beta_ptr, d_ptr, loss_ptr,
    batch, steps, stride_pf_b, stride_pf_t, stride_pb_b, stride_pb_t, stride_log_z, stride_beta,
    clip_min: tl.float64, loss_param: tl.float64,
    HAS_PB: tl.constexpr, HAS_LOG_Z: tl.constexpr, HAS_BETA: tl.constexpr, PACKED: tl.constexpr,
    APPLY_LOSS: tl.constexpr, LOSS: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr,
):
    clip_min = scalar(clip_min, ACC)
    loss_param = scalar(loss_param, ACC)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    row_mask = rows < batch
    start, count = _extent(lengths_ptr, rows, row_mask, steps, PACKED)
    pf_row = start * stride_pf_t + (0 if PACKED else rows * stride_pf_b)
    pb_row = start * stride_pb_t + (0 if PACKED else rows * stride_pb_b)
    total = tl.zeros([BLOCK_B, BLOCK_T], dtype=ACC)
    longest = tl.max(count, axis=0)
    for t0 in range(0, longest, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
        valid = t[None, :] < count[:, None]
        total += tl.load(pf_ptr + pf_row[:, None] + t[None, :] * stride_pf_t, mask=valid,
                         other=0.0).to(ACC)
        if HAS_PB:
            total -= tl.load(pb_ptr + pb_row[:, None] + t[None, :] * stride_pb_t, mask=valid,
                             other=0.0).to(ACC)
    d = tl.sum(total, axis=1)
    reward = tl.load(log_reward_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    clipped = tl.where(reward < clip_min, clip_min, reward).to(ACC)
    if HAS_BETA:
        clipped = clipped * tl.load(beta_ptr + rows * stride_beta, mask=row_mask, other=1.0)
    d = d - clipped
    if HAS_LOG_Z:
        d += tl.load(log_z_ptr + rows * stride_log_z, mask=row_mask, other=0.0).to(ACC)
    tl.store(d_ptr + rows, d, mask=row_mask)
    if APPLY_LOSS:
        tl.store(loss_ptr + rows, rho(d, loss_param, LOSS), mask=row_mask)


@triton.jit
def _rows_backward_kernel(
    grad_rows_ptr, d_ptr, lengths_ptr, log_reward_ptr, beta_ptr, grad_pf_ptr, grad_pb_ptr,
    grad_row_ptr, grad_log_reward_ptr, grad_beta_ptr,
    batch, steps, stride_grad_rows, stride_gpf_b, stride_gpf_t, stride_gpb_b, stride_gpb_t,
    stride_beta, weight: tl.float64, clip_min: tl.float64, loss_param: tl.float64,
    HAS_PB: tl.constexpr, HAS_BETA: tl.constexpr, PACKED: tl.constexpr,
    FROM_RESIDUAL: tl.constexpr, NEED_LOG_REWARD: tl.constexpr, NEED_BETA: tl.constexpr,
    LOSS: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr,
):
    weight = scalar(weight, ACC)
    clip_min = scalar(clip_min, ACC)
    loss_param = scalar(loss_param, ACC)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    row_mask = rows < batch
    start, count = _extent(lengths_ptr, rows, row_mask, steps, PACKED)
    g = tl.load(grad_rows_ptr + rows * stride_grad_rows, mask=row_mask, other=0.0).to(ACC)
    if FROM_RESIDUAL:
        d = tl.load(d_ptr + rows, mask=row_mask, other=0.0).to(ACC)
        g = g * weight * rho_grad(d, loss_param, LOSS)
    tl.store(grad_row_ptr + rows, g, mask=row_mask)
    if NEED_LOG_REWARD or NEED_BETA:
        reward = tl.load(log_reward_ptr + rows, mask=row_mask, other=0.0).to(ACC)
        if HAS_BETA:
            beta = tl.load(beta_ptr + rows * stride_beta, mask=row_mask, other=1.0).to(ACC)
        else:
            beta = tl.full([BLOCK_B], 1.0, ACC)
        if NEED_LOG_REWARD:
            tl.store(grad_log_reward_ptr + rows, tl.where(reward >= clip_min, -g * beta, 0.0 * g),
                     mask=row_mask)
        if NEED_BETA:
            tl.store(grad_beta_ptr + rows, -g * tl.where(reward < clip_min, clip_min, reward),
                     mask=row_mask)
    gpf_row = start * stride_gpf_t + (0 if PACKED else rows * stride_gpf_b)
    gpb_row = start * stride_gpb_t + (0 if PACKED else rows * stride_gpb_b)
    # Padded rows are written up to T (zeros on padding); packed ones only over their steps.
    if PACKED:
        bound = tl.max(count, axis=0)
        limit = count
    else:
        bound = steps
        limit = tl.where(row_mask, steps, 0)
    for t0 in range(0, bound, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
        inside = t[None, :] < count[:, None]
        write = t[None, :] < limit[:, None]
        value = tl.where(inside, g[:, None], 0.0)
        tl.store(grad_pf_ptr + gpf_row[:, None] + t[None, :] * stride_gpf_t,
                 value.to(grad_pf_ptr.dtype.element_ty), mask=write)
        if HAS_PB:
            tl.store(grad_pb_ptr + gpb_row[:, None] + t[None, :] * stride_gpb_t,
                     (-value).to(grad_pb_ptr.dtype.element_ty), mask=write)


def _strides(tensor: torch.Tensor, packed: bool) -> tuple[int, int]:
    """(batch stride, time stride); a packed 1-D tensor has no batch stride."""
    return (0, tensor.stride(0)) if packed else (tensor.stride(0), tensor.stride(1))


def _blocks(longest_steps: int) -> tuple[int, int]:
    """Tile of [BLOCK_B, BLOCK_T] = about 4096 elements (bigger under the interpreter, where
    each program costs Python time)."""
    block_t = min(128, triton.next_power_of_2(max(longest_steps, 1)))
    tile = 16384 if interpret() else 4096
    return max(1, tile // block_t), block_t


def _per_row_stride(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None or tensor.dim() == 0 else tensor.stride(0)


def rows_forward(log_pf, log_pb, lengths, packed, log_reward, log_z, beta, clip_min, loss_id,
                 loss_param, apply_loss):
    """Same contract as gfn_fast.cpu.balance.rows_forward."""
    dtype = log_reward.dtype
    batch = log_reward.shape[0]
    steps = log_pf.shape[0] if packed else log_pf.shape[1]
    d = torch.empty(batch, dtype=dtype, device=log_pf.device)
    loss = torch.empty(batch if apply_loss else 1, dtype=dtype, device=log_pf.device)
    block_b, block_t = _blocks(steps if not packed else min(steps, 128))
    stride_pf = _strides(log_pf, packed)
    stride_pb = _strides(log_pb, packed) if log_pb is not None else stride_pf
    _rows_forward_kernel[(triton.cdiv(batch, block_b),)](
        log_pf, log_pb if log_pb is not None else log_pf, lengths, log_reward,
        log_z if log_z is not None else log_reward, beta if beta is not None else log_reward,
        d, loss, batch, steps, *stride_pf, *stride_pb, _per_row_stride(log_z),
        _per_row_stride(beta), clip_min, loss_param,
        HAS_PB=log_pb is not None, HAS_LOG_Z=log_z is not None, HAS_BETA=beta is not None,
        PACKED=packed, APPLY_LOSS=apply_loss, LOSS=loss_id, ACC=accumulator(dtype),
        BLOCK_B=block_b, BLOCK_T=block_t,
    )
    return d, (loss if apply_loss else None)


def rows_backward(grad_rows, d, from_residual, weight, loss_id, loss_param, lengths, packed,
                  log_pf, has_pb, log_reward, beta, clip_min, need_log_reward, need_beta):
    """Same contract as gfn_fast.cpu.balance.rows_backward."""
    dtype = d.dtype
    batch = d.shape[0]
    steps = log_pf.shape[0] if packed else log_pf.shape[1]
    grad_pf = torch.empty_like(log_pf)
    grad_pb = torch.empty_like(log_pf) if has_pb else None
    grad_row = torch.empty(batch, dtype=dtype, device=d.device)
    grad_log_reward = torch.empty(batch if need_log_reward else 1, dtype=dtype, device=d.device)
    grad_beta = torch.empty(batch if need_beta else 1, dtype=dtype, device=d.device)
    block_b, block_t = _blocks(steps if not packed else min(steps, 128))
    stride_gpf = _strides(grad_pf, packed)
    stride_gpb = _strides(grad_pb, packed) if has_pb else stride_gpf
    _rows_backward_kernel[(triton.cdiv(batch, block_b),)](
        grad_rows, d, lengths, log_reward, beta if beta is not None else log_reward, grad_pf,
        grad_pb if has_pb else grad_pf, grad_row, grad_log_reward, grad_beta,
        batch, steps, _per_row_stride(grad_rows), *stride_gpf, *stride_gpb,
        _per_row_stride(beta), weight, clip_min, loss_param,
        HAS_PB=has_pb, HAS_BETA=beta is not None, PACKED=packed, FROM_RESIDUAL=from_residual,
        NEED_LOG_REWARD=need_log_reward, NEED_BETA=need_beta, LOSS=loss_id,
        ACC=accumulator(dtype), BLOCK_B=block_b, BLOCK_T=block_t,
    )
    return (grad_pf, grad_pb, grad_row, grad_log_reward if need_log_reward else None,
            grad_beta if need_beta else None)
