"""Drop-in replacements for torchgfn's balance GFlowNets whose losses run through gfn_fast.

    from gfn.gflownet import SubTBGFlowNet                          # before
    from gfn_fast.integrations.torchgfn import SubTBGFlowNet        # after

`TBGFlowNet`, `LogPartitionVarianceGFlowNet`, `DBGFlowNet` and `SubTBGFlowNet` subclass torchgfn's
classes (torchgfn 2.4.x) with the same constructors, attributes and `loss(...)` signatures. Only the
loss arithmetic changes: torchgfn's time-major [T, B] log-prob and log-flow tensors are passed to
gfn_fast as transposed views (no copy), and SubTB no longer builds its B x T^2 residual tensors or
loops over sub-trajectory lengths in Python. Estimators are evaluated exactly as torchgfn does.

Cases handed back to torchgfn's own implementation (same result, torchgfn's cost): a `loss_fn`
other than torchgfn's SquaredLoss / HalfSquaredLoss / ShiftedCoshLoss / LinexLoss, and
reduction="none" for SubTB weightings whose per-sub-trajectory output has no compact form
(everything but "TB" and "DB"). See docs/torchgfn.md for the behaviours of torchgfn that were
found questionable while matching it (they are reproduced, not fixed, except where noted there).
"""

import math
from typing import cast

import torch
from gfn import gflownet as _gfn
from gfn.gflownet.losses import HalfSquaredLoss, LinexLoss, ShiftedCoshLoss, SquaredLoss

import gfn_fast

__all__ = ["TBGFlowNet", "LogPartitionVarianceGFlowNet", "DBGFlowNet", "SubTBGFlowNet"]


def _fused_loss(loss_fn):
    """gfn_fast's name for torchgfn's regression loss, or None when there is none."""
    kind = type(loss_fn)
    if kind is SquaredLoss:
        return "squared"
    if kind is HalfSquaredLoss:
        return "half_squared"
    if kind is ShiftedCoshLoss:
        # torchgfn clamps residuals to [-80, 80] first: identical for |d| <= 80
        return "shifted_cosh"
    if kind is LinexLoss:
        return ("linex", float(loss_fn.alpha))
    return None


def _terminal_log_rewards(trajectories_or_transitions, log_rewards):
    if log_rewards is not None:
        return log_rewards
    return cast(torch.Tensor, trajectories_or_transitions.log_rewards)


def _call_scalar(estimator, states, conditions):
    """A ScalarEstimator's output [N] (conditional estimators take the conditions too)."""
    out = estimator(states) if conditions is None else estimator(states, conditions)
    return out.squeeze(-1)


class TBGFlowNet(_gfn.TBGFlowNet):
    """torchgfn's TBGFlowNet with the loss computed by `gfn_fast.trajectory_balance`."""

    def loss(self, env, trajectories, recalculate_all_logprobs: bool = True,
             reduction: str = "mean", *, log_rewards: torch.Tensor | None = None
             ) -> torch.Tensor:
        fused = _fused_loss(self.loss_fn)
        if fused is None:
            return super().loss(env, trajectories, recalculate_all_logprobs, reduction,
                                log_rewards=log_rewards)
        log_pf, log_pb = self.get_pfs_and_pbs(trajectories,
                                              recalculate_all_logprobs=recalculate_all_logprobs)
        if trajectories.states.conditions is not None:
            log_z = self.logZ(trajectories.states.conditions[0])
        else:
            log_z = self.logZ
        return gfn_fast.trajectory_balance(
            log_pf.T, log_pb.T, _terminal_log_rewards(trajectories, log_rewards),
            log_z.squeeze(), lengths=trajectories.terminating_idx,
            log_reward_clip_min=self.log_reward_clip_min, loss=fused, reduction=reduction)


class LogPartitionVarianceGFlowNet(_gfn.LogPartitionVarianceGFlowNet):
    """torchgfn's LogPartitionVarianceGFlowNet with `gfn_fast.log_partition_variance`."""

    def loss(self, env, trajectories, recalculate_all_logprobs: bool = True,
             reduction: str = "mean", *, log_rewards: torch.Tensor | None = None
             ) -> torch.Tensor:
        fused = _fused_loss(self.loss_fn)
        if fused is None:
            return super().loss(env, trajectories, recalculate_all_logprobs, reduction,
                                log_rewards=log_rewards)
        log_pf, log_pb = self.get_pfs_and_pbs(trajectories,
                                              recalculate_all_logprobs=recalculate_all_logprobs)
        return gfn_fast.log_partition_variance(
            log_pf.T, log_pb.T, _terminal_log_rewards(trajectories, log_rewards),
            lengths=trajectories.terminating_idx, log_reward_clip_min=self.log_reward_clip_min,
            loss=fused, reduction=reduction)


class DBGFlowNet(_gfn.DBGFlowNet):
    """torchgfn's DBGFlowNet (on Transitions) with the loss computed by
    `gfn_fast.detailed_balance`: each transition is a packed trajectory of one step whose
    terminal flow is F(s') (the clipped reward when s' is the sink)."""

    def loss(self, env, transitions, recalculate_all_logprobs: bool = True,
             reduction: str = "mean", *, log_rewards: torch.Tensor | None = None
             ) -> torch.Tensor:
        fused = _fused_loss(self.loss_fn)
        if fused is None:
            return super().loss(env, transitions, recalculate_all_logprobs, reduction,
                                log_rewards=log_rewards)
        if log_rewards is not None and self.forward_looking:
            raise ValueError("custom log_rewards are not supported when forward_looking=True "
                             "(the forward-looking objective reads env.log_reward for every "
                             "state); as in torchgfn's DBGFlowNet")
        states = transitions.states
        if len(states) == 0:
            return torch.tensor(0.0, device=transitions.device)
        conditions = states.conditions
        log_pf, log_pb = self.get_pfs_and_pbs(transitions, recalculate_all_logprobs)
        log_flow = _call_scalar(self.logF, states, conditions)
        clip = self.log_reward_clip_min
        terminal = _terminal_log_rewards(transitions, log_rewards)
        if math.isfinite(clip):
            terminal = terminal.clamp_min(clip)
        # F(s'): the reward at the sink, the estimated flow (+ reward when forward-looking) else
        next_flow = torch.where(transitions.is_terminating, terminal, torch.zeros_like(terminal))
        intermediate = (~transitions.is_terminating).nonzero(as_tuple=True)[0]
        if intermediate.numel() > 0:
            next_states = transitions.next_states[intermediate]
            next_conditions = conditions[intermediate] if conditions is not None else None
            inner = _call_scalar(self.logF, next_states, next_conditions)
            if self.forward_looking:
                inner = inner + self._state_log_reward(env, next_states, next_conditions)
            next_flow = next_flow.index_put((intermediate,), inner.to(next_flow.dtype))
        state_reward = (self._state_log_reward(env, states, conditions)
                        if self.forward_looking else None)
        steps = torch.arange(log_pf.shape[0] + 1, device=log_pf.device)
        return gfn_fast.detailed_balance(
            log_pf, log_pb, log_flow, next_flow, cu_seqlens=steps,
            log_state_reward=None if state_reward is None else state_reward.to(log_flow.dtype),
            loss=fused, reduction=reduction)

    def _state_log_reward(self, env, states, conditions):
        """torchgfn's forward-looking DB clips these state rewards too (SubTB does not)."""
        reward = env.log_reward(states) if conditions is None else env.log_reward(states,
                                                                                 conditions)
        if math.isfinite(self.log_reward_clip_min):
            reward = reward.clamp_min(self.log_reward_clip_min)
        return reward


class SubTBGFlowNet(_gfn.SubTBGFlowNet):
    """torchgfn's SubTBGFlowNet with the loss computed by `gfn_fast.subtrajectory_balance`
    (O(B T) memory, no Python loop over sub-trajectory lengths). All of torchgfn's weightings are
    supported, "ModifiedDB" included."""

    _COMPACT_NONE = ("TB", "DB")
    _GEOMETRIC = ("geometric_within", "geometric")

    def state_flows(self, env, trajectories):
        """(log F~(s_t), log R(s_t) or None), each [T, B] time-major, zero past each trajectory.
        The estimator sees exactly the states torchgfn's calculate_log_state_flows gives it."""
        states = trajectories.states
        inside = ~states.is_sink_state[:-1]
        valid_states = states[:-1][inside]
        conditions = states.conditions
        if conditions is not None:
            conditions = conditions[:-1][inside]
        shape = trajectories.actions.is_exit.shape
        flows = _call_scalar(self.logF, valid_states, conditions)
        log_flow = flows.new_zeros(shape).index_put((inside,), flows)
        if not self.forward_looking:
            return log_flow, None
        rewards = env.log_reward(valid_states)
        return log_flow, rewards.new_zeros(shape).index_put((inside,), rewards)

    def loss(self, env, trajectories, recalculate_all_logprobs: bool = True,
             reduction: str = "mean", *, log_rewards: torch.Tensor | None = None
             ) -> torch.Tensor:
        fused = _fused_loss(self.loss_fn)
        weighting = self.weighting
        # gfn_fast's SubTB takes lamda in (0, 1]; torchgfn computes geometric weights of any
        # lamda (and ignores it in the other weightings)
        lamda_outside = weighting in self._GEOMETRIC and not 0.0 < float(self.lamda) <= 1.0
        if (fused is None or (reduction == "none" and weighting not in self._COMPACT_NONE)
                or reduction not in ("mean", "sum", "none") or lamda_outside):
            return super().loss(env, trajectories, recalculate_all_logprobs, reduction,
                                log_rewards=log_rewards)
        log_pf, log_pb = self.get_pfs_and_pbs(trajectories,
                                              recalculate_all_logprobs=recalculate_all_logprobs)
        log_flow, state_reward = self.state_flows(env, trajectories)
        terminal = _terminal_log_rewards(trajectories, log_rewards)
        lengths = trajectories.terminating_idx
        clip = self.log_reward_clip_min
        state_reward_bt = None if state_reward is None else state_reward.T.to(log_flow.dtype)
        if weighting == "TB":
            log_z = log_flow[0] if state_reward is None else log_flow[0] + state_reward[0]
            return gfn_fast.trajectory_balance(log_pf.T, log_pb.T, terminal, log_z,
                                               lengths=lengths, log_reward_clip_min=clip,
                                               loss=fused, reduction=reduction)
        if weighting == "DB" and reduction != "none":
            return gfn_fast.detailed_balance(
                log_pf.T, log_pb.T, log_flow.T, terminal, lengths=lengths,
                log_state_reward=state_reward_bt, log_reward_clip_min=clip, loss=fused,
                reduction=reduction)
        if weighting in ("DB", "ModifiedDB"):
            per_step = gfn_fast.detailed_balance(
                log_pf.T, log_pb.T, log_flow.T, terminal, lengths=lengths,
                log_state_reward=state_reward_bt, log_reward_clip_min=clip, loss=fused,
                reduction="none")
            if weighting == "ModifiedDB":
                return (per_step.sum(dim=1) / lengths).mean()
            # reduction="none": torchgfn's order, time-major over the valid transitions
            steps = torch.arange(per_step.shape[1], device=per_step.device)
            return per_step.T[(steps[None, :] < lengths[:, None]).T]
        lamda = self.lamda if weighting in self._GEOMETRIC else 1.0  # unused there
        return gfn_fast.subtrajectory_balance(
            log_pf.T, log_pb.T, log_flow.T, terminal, lamda=lamda, weighting=weighting,
            lengths=lengths, log_state_reward=state_reward_bt, log_reward_clip_min=clip,
            loss=fused)
