"""Detailed balance and sub-trajectory balance in plain PyTorch: the executable form of
../shared/spec/balance.md ("Detailed balance", "Sub-trajectory balance").

This is the ground truth of the tests, written for clarity, not memory: SubTB materialises every
residual d[b, i, j] ([B, T+1, T+1]). Inputs are validated and normalised by `gfn_fast._checks`
(padded [B, T] with any strides and `lengths` [B] int64, or packed 1-D with `cu_seqlens`).
Packed inputs are gathered into a padded copy first (which reads the lengths on the host).
"""

import math

import torch

from gfn_fast.reference.balance import MEAN, SUM, compute_dtype, terminal_log_flow
from gfn_fast.reference.losses import rho

WEIGHTINGS = ("geometric_within", "equal_within", "geometric", "equal", "TB", "DB")


def to_padded(values, lengths, packed, dtype):
    """(values as [B, T'] in `dtype` with zeros on the padding, n [B] int64, valid [B, T'])."""
    if values is None:
        return None
    if packed:
        n = lengths[1:] - lengths[:-1]
        width = max(int(n.max()), 1)
        steps = torch.arange(width, device=values.device)
        valid = steps[None, :] < n[:, None]
        index = (lengths[:-1, None] + steps[None, :]).clamp(max=max(values.shape[0] - 1, 0))
        gathered = values.to(dtype)[index]
    else:
        n = lengths
        steps = torch.arange(values.shape[1], device=values.device)
        valid = steps[None, :] < n[:, None]
        gathered = values.to(dtype)
    return torch.where(valid, gathered, torch.zeros_like(gathered))


def trajectory_lengths(lengths, packed):
    return lengths[1:] - lengths[:-1] if packed else lengths


def state_flows(log_flow, log_state_reward, lengths, packed, log_reward, beta, clip_min, dtype):
    """F [B, T'+1]: log_flow (+ log_state_reward) at t < n_b, L_b at t = n_b, 0 after."""
    n = trajectory_lengths(lengths, packed)
    flow = to_padded(log_flow, lengths, packed, dtype)
    if log_state_reward is not None:
        flow = flow + to_padded(log_state_reward, lengths, packed, dtype)
    flow = torch.cat([flow, torch.zeros_like(flow[:, :1])], dim=1)
    terminal = terminal_log_flow(log_reward, beta, clip_min, dtype)
    steps = torch.arange(flow.shape[1], device=flow.device)
    return torch.where(steps[None, :] == n[:, None], terminal[:, None], flow), n


def _zero_outside(d, valid):
    """d with 0 where not `valid`, before rho: an unselected residual may be inf or NaN (a log
    reward of -inf meets the flows around it), and torch.where's backward multiplies the
    unselected branch's gradient by 0, which is NaN for an infinite one. The kernels never
    compute those residuals at all."""
    return torch.where(valid, d, torch.zeros_like(d))


def _step_log_ratio(log_pf, log_pb, lengths, packed, dtype):
    ratio = to_padded(log_pf, lengths, packed, dtype)
    if log_pb is not None:
        ratio = ratio - to_padded(log_pb, lengths, packed, dtype)
    return ratio


def detailed_balance(log_pf, log_pb, log_flow, log_state_reward, lengths, packed, log_reward,
                     beta, clip_min, loss_id, loss_param, reduction):
    """DB: d[b, t] = F_b(t) + log_pf - F_b(t+1) - log_pb for t < n_b; mean over valid
    transitions, sum, or none ([B, T] zero-padded, or flat [N] when packed)."""
    dtype = compute_dtype(log_pf, log_pb, log_flow, log_state_reward, log_reward, beta)
    flows, n = state_flows(log_flow, log_state_reward, lengths, packed, log_reward, beta,
                           clip_min, dtype)
    d = flows[:, :-1] + _step_log_ratio(log_pf, log_pb, lengths, packed, dtype) - flows[:, 1:]
    steps = torch.arange(d.shape[1], device=d.device)
    valid = steps[None, :] < n[:, None]
    per_step = torch.where(valid, rho(_zero_outside(d, valid), loss_id, loss_param),
                           torch.zeros_like(d))
    if reduction == MEAN:
        return per_step.sum() / valid.sum()
    if reduction == SUM:
        return per_step.sum()
    return per_step[valid] if packed else per_step



def geometric_weights(lamda: float, k: torch.Tensor, longest: torch.Tensor) -> torch.Tensor:
    """w_k = lambda^(k-1) (1 - lambda) / (1 - lambda^M) (float64 k and M, lambda in (0, 1)),
    with both differences from 1 as expm1 of a logarithm: written as 1 - lambda^M, they cancel
    as lambda -> 1 (the weights were off by 5e-10 relative at lambda = 1 - 1e-12, M = 1000)."""
    log_lamda = math.log(lamda)
    return torch.exp((k - 1.0) * log_lamda) * -math.expm1(log_lamda) / \
        -torch.expm1(longest * log_lamda)

def subtrajectory_balance(log_pf, log_pb, log_flow, log_state_reward, lengths, packed,
                          log_reward, beta, clip_min, loss_id, loss_param, lamda, weighting):
    """SubTB(lambda) with one of WEIGHTINGS, every residual d[b, i, j] materialised."""
    dtype = compute_dtype(log_pf, log_pb, log_flow, log_state_reward, log_reward, beta)
    flows, n = state_flows(log_flow, log_state_reward, lengths, packed, log_reward, beta,
                           clip_min, dtype)
    ratio = _step_log_ratio(log_pf, log_pb, lengths, packed, dtype)
    prefix = torch.cat([torch.zeros_like(ratio[:, :1]), ratio.cumsum(dim=1)], dim=1)
    # d[b, i, j] = F(i) - F(j) + P(j) - P(i), for i < j <= n_b
    d = (flows[:, :, None] - flows[:, None, :]) + (prefix[:, None, :] - prefix[:, :, None])
    positions = torch.arange(flows.shape[1], device=d.device)
    i, j = positions[:, None], positions[None, :]
    valid = (i < j)[None] & (j[None] <= n[:, None, None])
    span = (j - i).expand_as(d[0])[None].expand_as(d)
    losses = torch.where(valid, rho(_zero_outside(d, valid), loss_id, loss_param),
                         torch.zeros_like(d))
    batch = d.shape[0]
    if weighting in ("geometric_within", "equal_within"):
        lam = lamda if weighting == "geometric_within" else 1.0
        weights = torch.where(valid, torch.full_like(d, lam) ** span, torch.zeros_like(d))
        per_trajectory = (weights * losses).sum(dim=(1, 2)) / weights.sum(dim=(1, 2))
        return per_trajectory.sum() / batch
    if weighting == "equal":
        return losses.sum() / valid.sum()
    if weighting == "TB":
        first = d[:, 0, :].gather(1, n[:, None]).squeeze(1)
        return rho(first, loss_id, loss_param).mean()
    # The weightings below never select pairs out of `losses` with torch.where (its backward
    # gives the unselected pairs 0 * rho'(d), NaN where a residual is infinite: log reward
    # -inf), nor zero them by a 0 weight (0 * inf).
    if weighting == "DB":
        # the spec: "identical to detailed balance". Its residuals are the per-step ones; through
        # the prefix sums above an infinite last residual's gradient would meet its negative
        # (inf - inf) in the earlier steps' gradients, which the kernels never form.
        return detailed_balance(log_pf, log_pb, log_flow, log_state_reward, lengths, packed,
                                log_reward, beta, clip_min, loss_id, loss_param, MEAN)
    if weighting == "geometric":
        # sum_k w_k (mean loss over the pairs of span k) = sum over pairs of w_span / count_span,
        # k = 1 .. M = max_b n_b; over every possible span k = 0 .. T with the longest one M
        # kept on the device (no host sync, so that torch.compile(fullgraph=True) takes it)
        top = positions.shape[0] - 1
        counts = torch.zeros(top + 1, dtype=dtype, device=d.device).scatter_add_(
            0, span.clamp(min=0).reshape(-1), valid.reshape(-1).to(dtype))
        # the weights in float64 whatever the dtype: 1 - lambda^M cancels as lambda -> 1 (in
        # float32 it was off by 1.3% at lambda = 1 - 1e-6, and 0 at 1 - 1e-12)
        longest = n.max().to(torch.float64)
        ks = torch.arange(top + 1, device=d.device, dtype=torch.float64)  # the span k
        if lamda == 1.0:
            per_length = (1.0 / longest).expand(top + 1)
        else:
            per_length = geometric_weights(lamda, ks, longest)
        usable = (ks >= 1) & (ks <= longest) & (counts > 0)
        per_length = torch.where(usable, per_length / counts.to(torch.float64).clamp(min=1.0),
                                 torch.zeros_like(per_length)).to(dtype)
        weights = torch.where(valid, per_length[span.clamp(min=0)], torch.zeros_like(d))
        return (weights * losses).sum()
    raise ValueError(f"unknown weighting {weighting!r}")
