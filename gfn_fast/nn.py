"""nn.Module wrappers for the ops whose state belongs in a module (log Z, lambda, g(beta))."""

import math

import torch
from torch import nn

from gfn_fast.balance import log_partition_variance, trajectory_balance


class TrajectoryBalance(nn.Module):
    """Trajectory balance loss with a learned log Z.

    ``log_z`` is either a float (a learned scalar parameter, initialised to it) or a module
    mapping the per-trajectory conditioning (e.g. an embedding of beta) to log Z [B] or [B, 1].
    The remaining keyword arguments are defaults for `gfn_fast.trajectory_balance` (loss,
    reduction, log_reward_clip_min, backend), overridable per call.
    """

    def __init__(self, log_z: float | nn.Module = 0.0, *, loss="squared", reduction="mean",
                 log_reward_clip_min: float = -math.inf, backend: str | None = None):
        super().__init__()
        if isinstance(log_z, nn.Module):
            self.log_z_model = log_z
            self.log_z = None
        elif isinstance(log_z, (int, float)) and not isinstance(log_z, bool):
            self.log_z_model = None
            self.log_z = nn.Parameter(torch.tensor(float(log_z)))
        else:
            raise TypeError("gfn_fast.nn.TrajectoryBalance: `log_z` must be a float or an "
                            f"nn.Module, got {type(log_z).__name__}")
        self.defaults = dict(loss=loss, reduction=reduction,
                             log_reward_clip_min=log_reward_clip_min, backend=backend)

    def forward(self, log_pf, log_pb, log_reward, conditioning=None, **kwargs):
        """Loss of a batch; ``conditioning`` feeds the log Z module (required with one)."""
        if self.log_z_model is not None:
            if conditioning is None:
                raise ValueError("gfn_fast.nn.TrajectoryBalance: `conditioning` is required "
                                 "when log Z is a module")
            log_z = self.log_z_model(conditioning)
            if log_z.dim() == 2 and log_z.shape[1] == 1:
                log_z = log_z.squeeze(1)
        else:
            log_z = self.log_z
        return trajectory_balance(log_pf, log_pb, log_reward, log_z, **{**self.defaults, **kwargs})


class LogPartitionVariance(nn.Module):
    """VarGrad loss (TB with log Z replaced by the batch mean); no parameters."""

    def __init__(self, *, loss="squared", reduction="mean",
                 log_reward_clip_min: float = -math.inf, backend: str | None = None):
        super().__init__()
        self.defaults = dict(loss=loss, reduction=reduction,
                             log_reward_clip_min=log_reward_clip_min, backend=backend)

    def forward(self, log_pf, log_pb, log_reward, **kwargs):
        return log_partition_variance(log_pf, log_pb, log_reward, **{**self.defaults, **kwargs})


# ---- Detailed balance / sub-trajectory balance ----
from gfn_fast.subtb import detailed_balance, subtrajectory_balance  # noqa: E402


class DetailedBalance(nn.Module):
    """Detailed balance loss (forward-looking when ``log_state_reward`` is passed); no
    parameters: the log-flow estimator is the caller's. Keyword arguments are defaults for
    `gfn_fast.detailed_balance`, overridable per call."""

    def __init__(self, *, loss="squared", reduction="mean",
                 log_reward_clip_min: float = -math.inf, backend: str | None = None):
        super().__init__()
        self.defaults = dict(loss=loss, reduction=reduction,
                             log_reward_clip_min=log_reward_clip_min, backend=backend)

    def forward(self, log_pf, log_pb, log_flow, log_reward, **kwargs):
        return detailed_balance(log_pf, log_pb, log_flow, log_reward,
                                **{**self.defaults, **kwargs})


class SubTrajectoryBalance(nn.Module):
    """SubTB(lambda) loss holding lambda and the weighting (a buffer-free module: lambda is a
    fixed hyper-parameter, read as ``module.lamda``). Keyword arguments are defaults for
    `gfn_fast.subtrajectory_balance`, overridable per call."""

    def __init__(self, lamda: float = 0.9, weighting: str = "geometric_within", *,
                 loss="squared", log_reward_clip_min: float = -math.inf,
                 backend: str | None = None):
        super().__init__()
        self.lamda = float(lamda)
        self.weighting = weighting
        self.defaults = dict(loss=loss, log_reward_clip_min=log_reward_clip_min, backend=backend)

    def extra_repr(self) -> str:
        return f"lamda={self.lamda}, weighting={self.weighting!r}"

    def forward(self, log_pf, log_pb, log_flow, log_reward, **kwargs):
        options = {**self.defaults, "lamda": self.lamda, "weighting": self.weighting, **kwargs}
        return subtrajectory_balance(log_pf, log_pb, log_flow, log_reward, **options)
