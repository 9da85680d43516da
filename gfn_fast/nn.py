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
    """VarGrad loss (TB with log Z replaced by the batch mean); no parameters. With
    ``process_group`` the mean is global over the group (see gfn_fast.log_partition_variance)."""

    def __init__(self, *, loss="squared", reduction="mean",
                 log_reward_clip_min: float = -math.inf, backend: str | None = None,
                 process_group=None):
        super().__init__()
        self.defaults = dict(loss=loss, reduction=reduction,
                             log_reward_clip_min=log_reward_clip_min, backend=backend,
                             process_group=process_group)

    def forward(self, log_pf, log_pb, log_reward, **kwargs):
        return log_partition_variance(log_pf, log_pb, log_reward, **{**self.defaults, **kwargs})


# ---- logit-scaling GFlowNets (ISSUE 4: sampling) ----
from gfn_fast.sampling import action_log_prob, sample_actions  # noqa: E402


class LogitScaler(nn.Module):
    """The learned scale g(beta) of logit-scaling GFlowNets: an MLP of the scalar inverse
    temperature beta (no positivity constraint on the output).

    Args:
        hidden: widths of the hidden layers, e.g. (32, 32); () gives an affine map.
        activation: module class placed after each hidden layer (default nn.GELU).
        log_beta: feed log(beta) instead of beta (useful when beta spans decades).
        init_identity_at: if given, initialise the output bias so g(beta) = 1 at this beta
            (starting from the unscaled policy).

    forward(beta): beta scalar, [N] or [N, 1] -> g(beta) [N] (or 0-dim for a scalar beta).
    """

    def __init__(self, hidden: tuple[int, ...] = (32, 32), activation: type[nn.Module] = nn.GELU,
                 log_beta: bool = False, init_identity_at: float | None = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = 1
        for size in hidden:
            layers += [nn.Linear(width, size), activation()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.log_beta = log_beta
        if init_identity_at is not None:
            value = float(init_identity_at)
            if not (math.isfinite(value) and (value > 0 or not log_beta)):
                raise ValueError("gfn_fast.nn.LogitScaler: `init_identity_at` must be a finite "
                                 f"beta{' > 0 (log_beta takes its log)' if log_beta else ''}, "
                                 f"got {init_identity_at!r}")
            with torch.no_grad():
                probe = torch.tensor([[value]])
                if log_beta:
                    probe = probe.log()
                self.mlp[-1].bias += 1.0 - self.mlp(probe).reshape(())

    def forward(self, beta: torch.Tensor | float) -> torch.Tensor:
        param = next(self.parameters())
        beta = torch.as_tensor(beta, dtype=param.dtype, device=param.device)
        shape = beta.shape[:-1] if beta.dim() == 2 else beta.shape
        features = beta.reshape(-1, 1)
        if self.log_beta:
            features = features.log()
        return self.mlp(features).reshape(shape)


class LogitScaledPolicy(nn.Module):
    """Policy head of a temperature-conditional GFlowNet by logit scaling:
    z = clip(g(beta) * logits) / temperature on allowed actions, pi = softmax(z).

    Args:
        scaler: a LogitScaler (default: LogitScaler()).
        clip: (lo, hi) bounds of the scaled logits ((-20, 20) in the Logit-GFN experiments),
            or None.

    Methods take the raw policy logits [N, A] and beta (scalar or [N]):
        log_prob(logits, beta, actions, mask) -> log pi(actions) [N] (training; gradients reach
            the logits and g's parameters)
        sample(logits, beta, mask, epsilon=..., generator=/seed=, return_log_mu=...,
            return_entropy=...) -> (actions, log_pi, ...) as gfn_fast.sample_actions.
    """

    def __init__(self, scaler: LogitScaler | None = None,
                 clip: tuple[float, float] | None = (-20.0, 20.0)):
        super().__init__()
        self.scaler = scaler if scaler is not None else LogitScaler()
        self.clip = clip

    def _scale(self, logits: torch.Tensor, beta) -> torch.Tensor:
        scale = self.scaler(beta)
        return scale.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)

    def log_prob(self, logits: torch.Tensor, beta, actions: torch.Tensor,
                 mask: torch.Tensor | None = None, *, temperature=None,
                 backend: str | None = None) -> torch.Tensor:
        return action_log_prob(logits, actions, mask, scale=self._scale(logits, beta),
                               temperature=temperature, clip=self.clip, backend=backend)

    def forward(self, logits: torch.Tensor, beta, actions: torch.Tensor,
                mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        return self.log_prob(logits, beta, actions, mask, **kwargs)

    def sample(self, logits: torch.Tensor, beta, mask: torch.Tensor | None = None,
               **kwargs) -> tuple[torch.Tensor, ...]:
        return sample_actions(logits, mask, scale=self._scale(logits, beta), clip=self.clip,
                              **kwargs)
# ---- end logit-scaling GFlowNets ----


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
