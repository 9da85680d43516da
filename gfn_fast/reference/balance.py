"""Trajectory-balance family in plain PyTorch: the executable form of ../shared/spec/balance.md.

Inputs are already validated and normalised by `gfn_fast._checks` (see `BalanceLayout`):
padded log-probs are [B, T] with any strides and `lengths` [B] int64; packed log-probs are 1-D
with `cu_seqlens` [B+1] int64. Everything is differentiable by autograd.
"""

import torch

from gfn_fast.reference.losses import rho

MEAN, SUM, NONE = range(3)


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any floating input is float64, else float32 (also for half inputs)."""
    for t in tensors:  # a loop, not any(genexpr): every op call asks, ~1.5 us less cold
        if t is not None and t.dtype == torch.float64:
            return torch.float64
    return torch.float32


def row_sums(values: torch.Tensor, lengths: torch.Tensor, packed: bool, dtype) -> torch.Tensor:
    """sum_{t < n_b} values[b, t] for each trajectory, never reading the padding."""
    values = values.to(dtype)
    if packed:
        cu_seqlens = lengths
        n_flat = values.shape[0]
        positions = torch.arange(n_flat, device=values.device)
        owner = torch.searchsorted(cu_seqlens[1:], positions, right=True)
        batch = cu_seqlens.shape[0] - 1
        inside = owner < batch
        contrib = torch.where(inside, values, torch.zeros_like(values))
        return torch.zeros(batch, dtype=dtype, device=values.device).index_add(
            0, owner.clamp(max=batch - 1), contrib
        )
    steps = torch.arange(values.shape[1], device=values.device)
    valid = steps[None, :] < lengths[:, None]
    return torch.where(valid, values, torch.zeros_like(values)).sum(dim=1)


def terminal_log_flow(log_reward, beta, clip_min: float, dtype) -> torch.Tensor:
    """L_b = beta_b * max(log R_b, clip) (beta = 1 when None)."""
    clipped = torch.clamp(log_reward.to(dtype), min=clip_min)
    return clipped if beta is None else beta.to(dtype) * clipped


def reduce(values: torch.Tensor, reduction: int) -> torch.Tensor:
    if reduction == MEAN:
        return values.mean()
    if reduction == SUM:
        return values.sum()
    return values


def trajectory_balance(log_pf, log_pb, lengths, packed, log_reward, log_z, beta, clip_min,
                       loss_id, loss_param, reduction):
    """TB: d_b = log_z_b + sum log_pf - sum log_pb - L_b, reduced rho(d)."""
    dtype = compute_dtype(log_pf, log_pb, log_reward, log_z, beta)
    d = row_sums(log_pf, lengths, packed, dtype) + log_z.to(dtype)
    if log_pb is not None:
        d = d - row_sums(log_pb, lengths, packed, dtype)
    d = d - terminal_log_flow(log_reward, beta, clip_min, dtype)
    return reduce(rho(d, loss_id, loss_param), reduction)


def log_partition_variance(log_pf, log_pb, lengths, packed, log_reward, beta, clip_min,
                           loss_id, loss_param, reduction):
    """VarGrad: s_b = sum log_pf - sum log_pb - L_b, d_b = s_b - mean(s), reduced rho(d)."""
    dtype = compute_dtype(log_pf, log_pb, log_reward, beta)
    s = row_sums(log_pf, lengths, packed, dtype)
    if log_pb is not None:
        s = s - row_sums(log_pb, lengths, packed, dtype)
    s = s - terminal_log_flow(log_reward, beta, clip_min, dtype)
    return reduce(rho(s - s.mean(), loss_id, loss_param), reduction)
