"""CUDA backend of DB and SubTB (kernels in csrc/include/gfn_fast/subtb.cuh). Same contracts as
gfn_fast.cpu.subtb; this module only turns tensors into pointers, strides and the stream."""

import torch

from gfn_fast.cuda._ext import (
    dtype_code,
    ext,
    narrowed,
    per_row_stride,
    ptr,
    stream,
    strides_2d,
    widened,
)


def _inputs(log_pf, log_pb, log_flow, log_state_reward, lengths, packed, log_reward, beta,
            clip_min, loss_id, loss_param) -> dict:
    stride_pf_b, stride_pf_t = strides_2d(log_pf, packed)
    stride_pb_b, stride_pb_t = strides_2d(log_pb, packed)
    stride_fl_b, stride_fl_t = strides_2d(log_flow, packed)
    stride_sr_b, stride_sr_t = strides_2d(log_state_reward, packed)
    return dict(
        log_pf=ptr(log_pf), log_pb=ptr(log_pb), log_flow=ptr(log_flow),
        log_state_reward=ptr(log_state_reward), lengths=ptr(lengths),
        log_reward=ptr(log_reward), beta=ptr(beta), batch=log_reward.shape[0],
        steps=log_pf.shape[0] if packed else log_pf.shape[1],
        stride_pf_b=stride_pf_b, stride_pf_t=stride_pf_t, stride_pb_b=stride_pb_b,
        stride_pb_t=stride_pb_t, stride_fl_b=stride_fl_b, stride_fl_t=stride_fl_t,
        stride_sr_b=stride_sr_b, stride_sr_t=stride_sr_t, stride_beta=per_row_stride(beta),
        clip_min=float(clip_min), loss_param=float(loss_param), loss=loss_id, packed=packed,
        dtype=dtype_code(log_pf), stream=stream(log_pf.device))


def _grad_buffers(log_pf, has_pb, like, need_log_reward, need_beta):
    grad_pf = torch.empty(log_pf.shape, dtype=log_pf.dtype, device=log_pf.device)
    grad_pb = torch.empty_like(grad_pf) if has_pb else None
    grad_flow = torch.empty_like(grad_pf)
    grad_log_reward = torch.empty_like(like) if need_log_reward else None
    grad_beta = torch.empty_like(like) if need_beta else None
    return grad_pf, grad_pb, grad_flow, grad_log_reward, grad_beta


def _grad_ptrs(grads) -> dict:
    grad_pf, grad_pb, grad_flow, grad_log_reward, grad_beta = grads
    return dict(grad_pf=ptr(grad_pf), grad_pb=ptr(grad_pb), grad_flow=ptr(grad_flow),
                grad_log_reward=ptr(grad_log_reward), grad_beta=ptr(grad_beta))


def db_forward(log_pf, log_pb, log_flow, log_state_reward, lengths, packed, log_reward, beta,
               clip_min, loss_id, loss_param, per_step):
    log_pf, log_pb, log_flow, log_state_reward = widened(
        log_reward.dtype, log_pf, log_pb, log_flow, log_state_reward)
    rows = torch.empty_like(log_reward)
    steps_out = (torch.empty(log_pf.shape, dtype=log_reward.dtype, device=log_pf.device)
                 if per_step else None)
    ext().detailed_balance_forward(dict(
        _inputs(log_pf, log_pb, log_flow, log_state_reward, lengths, packed, log_reward, beta,
                clip_min, loss_id, loss_param), rows_out=ptr(rows), steps_out=ptr(steps_out)))
    return rows, steps_out


def db_backward(grad_steps, log_pf, log_pb, log_flow, log_state_reward, lengths, packed,
                log_reward, beta, clip_min, loss_id, loss_param, need_log_reward, need_beta):
    grad_steps = grad_steps.to(log_reward.dtype)
    step_dtype = log_pf.dtype
    log_pf, log_pb, log_flow, log_state_reward = widened(
        log_reward.dtype, log_pf, log_pb, log_flow, log_state_reward)
    grads = _grad_buffers(log_pf, log_pb is not None, log_reward, need_log_reward, need_beta)
    stride_g_b, stride_g_t = strides_2d(grad_steps, packed)
    ext().detailed_balance_backward(dict(
        _inputs(log_pf, log_pb, log_flow, log_state_reward, lengths, packed, log_reward, beta,
                clip_min, loss_id, loss_param), **_grad_ptrs(grads), grad=ptr(grad_steps),
        stride_g_b=stride_g_b, stride_g_t=stride_g_t))
    return (*narrowed(step_dtype, *grads[:3]), *grads[3:])


def subtb_forward(log_pf, log_pb, log_flow, log_state_reward, lengths, packed, log_reward, beta,
                  clip_min, loss_id, loss_param, lam, row_weight, table, running, a_size):
    log_pf, log_pb, log_flow, log_state_reward = widened(
        log_reward.dtype, log_pf, log_pb, log_flow, log_state_reward)
    rows = torch.empty_like(log_reward)
    potentials = torch.zeros(a_size, dtype=log_reward.dtype, device=log_pf.device)
    ext().subtb_forward(dict(
        _inputs(log_pf, log_pb, log_flow, log_state_reward, lengths, packed, log_reward, beta,
                clip_min, loss_id, loss_param), row_weight=ptr(row_weight), table=ptr(table),
        stride_row_weight=per_row_stride(row_weight), lamda=float(lam), running=running,
        potentials=ptr(potentials), rows_out=ptr(rows)))
    return rows, potentials


def subtb_backward(grad_loss, a, lengths, packed, log_pf, has_pb, log_reward, beta, clip_min,
                   loss_id, loss_param, lam, row_weight, table, running, need_log_reward,
                   need_beta):
    step_dtype = log_pf.dtype
    (log_pf,) = widened(log_reward.dtype, log_pf)
    grads = _grad_buffers(log_pf, has_pb, log_reward, need_log_reward, need_beta)
    grad_loss = grad_loss.to(log_reward.dtype).contiguous()
    scratch = torch.empty_like(a)
    ext().subtb_backward(dict(
        _inputs(log_pf, None, log_pf, None, lengths, packed, log_reward, beta, clip_min,
                loss_id, loss_param), **_grad_ptrs(grads), grad_loss=ptr(grad_loss),
        potentials=ptr(a), scratch=ptr(scratch), row_weight=ptr(row_weight), table=ptr(table),
        stride_row_weight=per_row_stride(row_weight), lamda=float(lam), running=running))
    return (*narrowed(step_dtype, *grads[:3]), *grads[3:])
