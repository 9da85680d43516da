"""CUDA backend of the trajectory-balance family (kernels in csrc/include/gfn_fast/balance.cuh)."""

import torch

from gfn_fast.cuda._ext import (
    dtype_code,
    ext,
    launch_dtype,
    narrowed,
    per_row_stride,
    ptr,
    stream,
    strides_2d,
    widened,
)


def rows_forward(log_pf, log_pb, lengths, packed, log_reward, log_z, beta, clip_min, loss_id,
                 loss_param, apply_loss):
    """Same contract as gfn_fast.cpu.balance.rows_forward."""
    batch = log_reward.shape[0]
    log_pf, log_pb = widened(log_reward.dtype, log_pf, log_pb)
    d = torch.empty(batch, dtype=log_reward.dtype, device=log_pf.device)
    loss = torch.empty(batch, dtype=log_reward.dtype, device=log_pf.device) if apply_loss else None
    stride_pf_b, stride_pf_t = strides_2d(log_pf, packed)
    stride_pb_b, stride_pb_t = strides_2d(log_pb, packed)
    ext().balance_rows_forward(dict(
        log_pf=ptr(log_pf), log_pb=ptr(log_pb), lengths=ptr(lengths), log_reward=ptr(log_reward),
        log_z=ptr(log_z), beta=ptr(beta), batch=batch,
        steps=log_pf.shape[0] if packed else log_pf.shape[1],
        stride_pf_b=stride_pf_b, stride_pf_t=stride_pf_t, stride_pb_b=stride_pb_b,
        stride_pb_t=stride_pb_t, stride_log_z=per_row_stride(log_z),
        stride_beta=per_row_stride(beta), clip_min=float(clip_min),
        loss_param=float(loss_param), loss=loss_id, packed=packed, dtype=dtype_code(log_pf),
        d=ptr(d), loss_rows=ptr(loss), stream=stream(log_pf.device)))
    return d, loss


def rows_backward(grad_rows, d, from_residual, weight, loss_id, loss_param, lengths, packed,
                  log_pf, has_pb, log_reward, beta, clip_min, need_log_reward, need_beta):
    """Same contract as gfn_fast.cpu.balance.rows_backward."""
    batch = d.shape[0]
    # the gradients in the launch's element type (log_pf itself is not read: no copy of it)
    grad_pf = torch.empty_like(log_pf, dtype=launch_dtype(d.dtype, log_pf.dtype))
    grad_pb = torch.empty_like(grad_pf) if has_pb else None
    grad_row = torch.empty_like(d)
    grad_log_reward = torch.empty_like(d) if need_log_reward else None
    grad_beta = torch.empty_like(d) if need_beta else None
    grad_rows = grad_rows.to(d.dtype)
    stride_gpf_b, stride_gpf_t = strides_2d(grad_pf, packed)
    stride_gpb_b, stride_gpb_t = strides_2d(grad_pb, packed)
    ext().balance_rows_backward(dict(
        grad_rows=ptr(grad_rows), d=ptr(d), lengths=ptr(lengths), log_reward=ptr(log_reward),
        beta=ptr(beta), grad_pf=ptr(grad_pf), grad_pb=ptr(grad_pb), grad_row=ptr(grad_row),
        grad_log_reward=ptr(grad_log_reward), grad_beta=ptr(grad_beta), batch=batch,
        steps=log_pf.shape[0] if packed else log_pf.shape[1],
        stride_grad_rows=per_row_stride(grad_rows), stride_gpf_b=stride_gpf_b,
        stride_gpf_t=stride_gpf_t, stride_gpb_b=stride_gpb_b, stride_gpb_t=stride_gpb_t,
        stride_beta=per_row_stride(beta), weight=float(weight), clip_min=float(clip_min),
        loss_param=float(loss_param), loss=loss_id, packed=packed,
        from_residual=from_residual, dtype=dtype_code(grad_pf), stream=stream(d.device)))
    return (*narrowed(log_pf.dtype, grad_pf, grad_pb), grad_row, grad_log_reward, grad_beta)
