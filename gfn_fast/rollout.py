"""Large-batch trajectory sampling with preallocated buffers and no host sync per step.

Two loops fill the same preallocated, time-major buffers ([T, N, ...], the layout gfn_fast's
losses read in place through `.T`):
- fixed shape (default on GPU): every step runs all N rows for the environment's longest
  trajectory, so the loop never asks the device whether everything has finished (no host sync,
  capturable in a CUDA graph); finished rows keep taking the always-allowed exit action, which
  changes nothing and is excluded by `lengths`;
- compacting (default on CPU, where a host "sync" costs nothing): each step runs the policy on
  the live rows only and stops when none is left. HyperGrid trajectories are much shorter than
  the longest one, so this does several times less policy work.
The two loops draw different (equally distributed) samples for the same seed, since a row's
random stream is keyed by its position in each sampler call.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gfn_fast.sampling import sample_actions


@dataclass
class Trajectories:
    """A batch of N trajectories of at most T transitions, time-major."""

    states: torch.Tensor      # [T + 1, N, D] int64: s_0 .. s_T (constant after the exit)
    actions: torch.Tensor     # [T, N] int64 (the exit action after the end)
    lengths: torch.Tensor     # [N] int64: transitions up to and including the exit
    log_pf: torch.Tensor      # [T, N] float32: log pi of each taken action at sampling time
    terminal: torch.Tensor    # [N, D] int64: the objects x
    conditioning: torch.Tensor | None  # [N, ...] per-trajectory data given to the policy


def _policy_outputs(policy: Callable, features: torch.Tensor, conditioning):
    out = policy(features, conditioning)
    return out if isinstance(out, tuple) else (out, None)


@torch.no_grad()
def sample_trajectories(policy: Callable, env, n: int, *,
                        conditioning: torch.Tensor | None = None,
                        epsilon: float | torch.Tensor = 0.0,
                        generator: torch.Generator | None = None, seed: int | None = None,
                        offset: int = 0, temperature=None, clip=None, compact: bool | None = None,
                        backend: str | None = None) -> Trajectories:
    """Sample n trajectories of `env` with `policy`.

    policy(features [M, F], conditioning [M, ...] or None) -> logits [M, A], or (logits, scale)
    where scale is the logit-scaling g(beta) [M] applied by the fused sampler; M = n, or the
    live rows when compacting (`conditioning`, e.g. beta or g(beta) per trajectory, is
    compacted with them). Randomness: with `seed`, step t uses (seed, offset + t), reproducible on every
    backend; otherwise `generator` (default: the device's) is advanced by each step. `compact`:
    evaluate only live rows (default: on CPU only, see the module docstring).
    """
    steps = env.max_steps
    device = env.device
    if compact is None:
        compact = device.type == "cpu"
    if isinstance(epsilon, torch.Tensor) and epsilon.dim() > 0 and compact:
        raise ValueError("gfn_fast.rollout.sample_trajectories: a per-row `epsilon` needs "
                         "compact=False")
    states = torch.empty(steps + 1, n, env.ndim, dtype=torch.int64, device=device)
    actions = torch.full((steps, n), env.exit_action, dtype=torch.int64, device=device)
    log_pf = torch.zeros(steps, n, dtype=torch.float32, device=device)
    lengths = torch.zeros(n, dtype=torch.int64, device=device)
    states[0] = env.reset(n)
    live = torch.arange(n, device=device)  # compacting loop: indices of unfinished rows
    done = torch.zeros(n, dtype=torch.bool, device=device)  # fixed-shape loop
    for t in range(steps):
        rng = {"seed": seed, "offset": offset + t} if seed is not None else \
            {"generator": generator}
        if compact:
            states[t + 1] = states[t]
            if live.numel() == 0:
                continue
            current = states[t, live]
            row_condition = conditioning[live] if conditioning is not None else None
        else:
            current = states[t]
            row_condition = conditioning
        logits, scale = _policy_outputs(policy, env.encode(current), row_condition)
        action, log_pi = sample_actions(logits, env.forward_mask(current), scale=scale,
                                        temperature=temperature, clip=clip, epsilon=epsilon,
                                        backend=backend, **rng)
        if compact:
            actions[t, live] = action
            log_pf[t, live] = log_pi.to(torch.float32)
            lengths[live] += 1
            states[t + 1, live] = env.step(current, action)
            live = live[action != env.exit_action]
        else:
            action = torch.where(done, actions[t], action)
            actions[t] = action
            log_pf[t] = torch.where(done, log_pf[t], log_pi.to(torch.float32))
            lengths += (~done).to(torch.int64)
            states[t + 1] = env.step(current, action)
            done |= action == env.exit_action
    return Trajectories(states, actions, lengths, log_pf, states[steps], conditioning)
