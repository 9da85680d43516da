"""Tensorised GFlowNet environments: every state on the device, steps vectorised over the batch.

HyperGrid (ndim D, height H): states are integer points of {0..H-1}^D starting at the origin;
action i < D increments coordinate i (allowed while it is below H-1), action D exits and makes
the current point the terminal object x. The standard reward with R0, R1, R2 is
    R(x) = R0 + R1 * prod_i 1[0.25 < |x_i/(H-1) - 0.5|]
              + R2 * prod_i 1[0.3 < |x_i/(H-1) - 0.5| < 0.4].
The backward policy used for training is uniform over the parents of a state (P_B = 1 for the
exit transition).
"""

import itertools
import math
import numbers

import torch


class HyperGrid:
    def __init__(self, ndim: int = 4, height: int = 8, r0: float = 0.1, r1: float = 0.5,
                 r2: float = 2.0, device: torch.device | str = "cpu"):
        for name, value in (("ndim", ndim), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"gfn_fast.envs.HyperGrid: `{name}` must be an integer, got "
                                f"{value!r}")
        ndim, height = int(ndim), int(height)
        if ndim < 1 or height < 2:
            raise ValueError(f"gfn_fast.envs.HyperGrid: need ndim >= 1 and height >= 2, got "
                             f"ndim={ndim}, height={height}")
        for name, value in (("r0", r0), ("r1", r1), ("r2", r2)):
            if not (isinstance(value, (int, float)) and 0 <= value < math.inf):
                raise ValueError(f"gfn_fast.envs.HyperGrid: `{name}` must be a finite number "
                                 f">= 0 (a negative reward has no log), got {value!r}")
        if r0 + r1 + r2 == 0:
            raise ValueError("gfn_fast.envs.HyperGrid: r0, r1 and r2 are all 0, so every "
                             "state's reward would be 0 (no distribution to sample)")
        self.ndim, self.height = ndim, height
        self.r0, self.r1, self.r2 = r0, r1, r2
        # column of coordinate i's value v in the one-hot encoding is i * H + v; action i < D
        # moves axis i, so comparing an action with the axes gives its increment (none on exit)
        self._axes = torch.arange(ndim, device=device)
        # the device as its tensors report it: "cpu:0" is "cpu", "cuda" the current cuda:N (a
        # rollout compares the policy's logits' device with this)
        self.device = self._axes.device
        self._one_hot_base = self._axes * height

    @property
    def n_actions(self) -> int:
        return self.ndim + 1

    @property
    def exit_action(self) -> int:
        return self.ndim

    @property
    def max_steps(self) -> int:
        """Longest trajectory: every coordinate to H-1, then exit."""
        return self.ndim * (self.height - 1) + 1

    @property
    def n_states(self) -> int:
        return self.height ** self.ndim

    def reset(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.ndim, dtype=torch.int64, device=self.device)

    def encode(self, states: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """One-hot of each coordinate, concatenated: [N, D * H] float32 (written into `out`
        when given)."""
        if out is None:
            out = torch.empty(states.shape[0], self.ndim * self.height, dtype=torch.float32,
                              device=states.device)
        return out.zero_().scatter_(1, states + self._one_hot_base, 1.0)

    def forward_mask(self, states: torch.Tensor) -> torch.Tensor:
        """[N, D + 1] bool: increments below the top, and exit, are allowed."""
        return torch.nn.functional.pad(states < self.height - 1, (0, 1), value=True)

    def step(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Next states (exit leaves the point unchanged); no host sync."""
        return states + (actions[:, None] == self._axes)

    def log_pb_uniform(self, next_states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log P_B(s | s') of uniform backward policy: -log(#parents of s'), 0 for exit."""
        parents = (next_states > 0).sum(dim=1).clamp(min=1).to(torch.float32)
        return torch.where(actions == self.exit_action, torch.zeros_like(parents),
                           -torch.log(parents))

    def log_reward(self, states: torch.Tensor) -> torch.Tensor:
        # |x / (H - 1) - 0.5| = d / (2 m) with d = |2x - m|, m = H - 1, so the bands are integer
        # tests: > 0.25 iff 2d > m, in (0.3, 0.4) iff 3m < 5d < 4m. In floating point x / m at
        # x = 4, m = 5 minus 0.5 came out 0.30000000000000004 > 0.3: a spurious R2 state at
        # H = 6, 11, 16, ... that its mirror image did not get.
        m = self.height - 1
        d = (2 * states.to(torch.int64) - m).abs()
        band1 = (2 * d > m).all(dim=1)
        band2 = ((5 * d > 3 * m) & (5 * d < 4 * m)).all(dim=1)
        reward = self.r0 + self.r1 * band1.to(torch.float64) + self.r2 * band2.to(torch.float64)
        return torch.log(reward).to(torch.float32)

    def all_states(self) -> torch.Tensor:
        """Every point of the grid, [H^D, D], in lexicographic order (index = mixed radix)."""
        grid = list(itertools.product(range(self.height), repeat=self.ndim))
        return torch.tensor(grid, dtype=torch.int64, device=self.device)

    def index(self, states: torch.Tensor) -> torch.Tensor:
        weights = self.height ** torch.arange(self.ndim - 1, -1, -1, device=states.device)
        return (states * weights).sum(dim=1)

    def target_distribution(self, beta: float = 1.0) -> torch.Tensor:
        """R(x)^beta / Z over all points, in `all_states` order (float64)."""
        log_r = self.log_reward(self.all_states()).to(torch.float64) * beta
        return torch.softmax(log_r, dim=0)

    def terminal_distribution(self, forward_probs: torch.Tensor) -> torch.Tensor:
        """Exact P_T(x) of a forward policy, by dynamic programming over the DAG (no sampling).

        forward_probs: [H^D, D + 1] action probabilities at every point (`all_states` order),
        zero on forbidden actions. States are processed by level (sum of coordinates): the
        probability of reaching a point flows to its children; P_T(x) = P(reach x) P(exit | x).
        """
        states = self.all_states()
        probs = forward_probs.to(torch.float64)
        reach = torch.zeros(self.n_states, dtype=torch.float64, device=states.device)
        reach[0] = 1.0
        level = states.sum(dim=1)
        strides = self.height ** torch.arange(self.ndim - 1, -1, -1, device=states.device)
        for depth in range(int(level.max())):
            at = (level == depth).nonzero().squeeze(1)
            for axis in range(self.ndim):
                can = states[at, axis] < self.height - 1
                src = at[can]
                reach.index_add_(0, src + strides[axis], reach[src] * probs[src, axis])
        return reach * probs[:, self.exit_action]


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """L1 / 2 distance of two distributions."""
    return 0.5 * float((p.to(torch.float64) - q.to(torch.float64)).abs().sum())


def log_partition(env: HyperGrid, beta: float = 1.0) -> float:
    log_r = env.log_reward(env.all_states()).to(torch.float64) * beta
    return float(torch.logsumexp(log_r, dim=0)) if log_r.numel() else -math.inf
