"""`python -m gfn_fast demo gflownet`: a temperature-conditional logit-scaling GFlowNet on
HyperGrid, trained with gfn_fast's fused sampler and trajectory-balance loss.

The policy is an MLP of the one-hot state giving logits, scaled by a learned g(beta)
(gfn_fast.nn.LogitScaler) inside the fused sampler; log Z(beta) is a small MLP; beta is drawn
per trajectory. After training, the exact terminal distribution of the policy (dynamic
programming over the DAG, no sampling) is compared with R^beta / Z at beta = 1 and 2. The same
training step is then timed on the plain-PyTorch reference path for the speed ratio.
"""

import argparse
import json
import sys
import time

import numpy as np
import torch
from torch import nn

import gfn_fast
from gfn_fast import _png
from gfn_fast._cli import at_least, output_dir, positive_float, positive_int
from gfn_fast.envs import HyperGrid, total_variation
from gfn_fast.rollout import sample_trajectories
from gfn_fast.sampling import action_log_prob

CLIP = (-20.0, 20.0)


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.LeakyReLU())
    return nn.Sequential(*layers)


class ConditionalGFlowNet(nn.Module):
    """Logits MLP of (state, beta) + logit scaler g(beta) + conditional log Z(beta).

    The optimal policies for R^beta at different beta are not temperature-scaled copies of one
    another, so logit scaling alone leaves a gap when one network serves a range of beta
    (measured here: total variation 0.15 at beta = 1 when trained on beta ~ U[1, 2], against
    0.06 for the same network trained at beta = 1 only). The MLP therefore also sees beta; g(beta)
    still sets the overall sharpness, which is what lets logit scaling extrapolate in beta.
    """

    def __init__(self, env: HyperGrid, hidden: int = 128):
        super().__init__()
        self.env = env
        self.trunk = _mlp([env.ndim * env.height + 1, hidden, hidden, env.n_actions])
        self.scaler = gfn_fast.nn.LogitScaler(hidden=(32, 32))
        self.log_z = _mlp([1, 32, 1])

    def logits(self, features: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return self.trunk(torch.cat([features, (beta - 1.5)[:, None]], dim=1))

    def loss(self, beta: torch.Tensor, epsilon: float, generator: torch.Generator,
             backend: str | None) -> torch.Tensor:
        env = self.env
        batch = beta.shape[0]
        scale = self.scaler(beta)
        with torch.no_grad():
            # beta and g(beta) are constant along a trajectory: computed once, carried as the
            # per-trajectory conditioning (compacted with the live rows on CPU)
            traj = sample_trajectories(
                lambda features, c: (self.logits(features, c[:, 0]), c[:, 1]), env, batch,
                conditioning=torch.stack([beta, scale.detach()], dim=1), epsilon=epsilon,
                generator=generator, clip=CLIP, backend=backend)
        steps = env.max_steps
        visited = traj.states[:-1].reshape(steps * batch, env.ndim)  # time-major rows
        actions = traj.actions.reshape(-1)
        logits = self.logits(env.encode(visited), beta.repeat(steps))
        log_pf = action_log_prob(logits, actions, env.forward_mask(visited),
                                 scale=scale.repeat(steps), clip=CLIP,
                                 backend=backend).reshape(steps, batch)
        log_pb = env.log_pb_uniform(traj.states[1:].reshape(-1, env.ndim), actions)
        log_z = self.log_z(beta[:, None]).squeeze(1)
        return gfn_fast.trajectory_balance(
            log_pf.T, log_pb.reshape(steps, batch).T, env.log_reward(traj.terminal), log_z,
            beta=beta, lengths=traj.lengths, backend=backend)

    @torch.no_grad()
    def terminal_distribution(self, beta: float) -> torch.Tensor:
        """Exact P_T of the policy at inverse temperature beta (DP over the DAG)."""
        env = self.env
        states = env.all_states()
        mask = env.forward_mask(states)
        betas = torch.full((states.shape[0],), float(beta))
        logits = self.logits(env.encode(states), betas)
        scale = self.scaler(betas)
        probs = torch.zeros(states.shape[0], env.n_actions, dtype=torch.float64)
        for action in range(env.n_actions):
            rows = mask[:, action]
            chosen = torch.full((int(rows.sum()),), action, dtype=torch.int64)
            probs[rows, action] = action_log_prob(logits[rows], chosen, mask[rows],
                                                  scale=scale[rows], clip=CLIP).double().exp()
        return env.terminal_distribution(probs)


def _progress(step: int, total: int, loss: float, started: float) -> None:
    filled = int(30 * step / total)
    sys.stderr.write(f"\r  [{'#' * filled}{'.' * (30 - filled)}] {step}/{total} "
                     f"loss {loss:8.4f}  {time.perf_counter() - started:5.1f}s")
    sys.stderr.flush()


def train(model: ConditionalGFlowNet, steps: int, batch: int, seed: int, backend: str | None,
          lr: float = 1e-3, lr_log_z: float = 0.1, beta_range=(1.0, 2.0),
          progress: bool = True) -> float:
    """Train in place (Adam, learning rates decaying linearly to 5%, exploration epsilon from
    0.1 to 0 over the first half); returns the seconds taken."""
    optimiser = torch.optim.Adam([
        {"params": list(model.trunk.parameters()) + list(model.scaler.parameters()), "lr": lr},
        {"params": model.log_z.parameters(), "lr": lr_log_z},
    ])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: max(0.05, 1.0 - step / steps))
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for step in range(1, steps + 1):
        beta = torch.empty(batch).uniform_(*beta_range, generator=generator)
        epsilon = 0.1 * max(0.0, 1.0 - step / (0.5 * steps))
        loss = model.loss(beta, epsilon, generator, backend)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if progress and (step % 25 == 0 or step == steps):
            _progress(step, steps, loss.item(), started)
    if progress:
        sys.stderr.write("\n")
    return time.perf_counter() - started


def time_steps(model: ConditionalGFlowNet, steps: int, batch: int, backend: str | None,
               seed: int) -> float:
    """Seconds per training step (the gradients are applied to a throwaway copy)."""
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in range(steps):
        beta = torch.empty(batch).uniform_(1.0, 2.0, generator=generator)
        loss = model.loss(beta, 0.05, generator, backend)
        model.zero_grad()
        loss.backward()
    return (time.perf_counter() - started) / steps


def marginal_image(env: HyperGrid, distribution: torch.Tensor) -> np.ndarray:
    """Marginal over the first two coordinates as an [H, H] array."""
    shape = (env.height,) * env.ndim
    grid = distribution.reshape(shape).double()
    return grid.sum(dim=tuple(range(2, env.ndim))).numpy() if env.ndim > 2 else grid.numpy()


def run(args: argparse.Namespace) -> dict:
    out = output_dir(args.out)  # before any work (a bad path fails now, in one line)
    torch.manual_seed(args.seed)
    env = HyperGrid(ndim=args.ndim, height=args.height)
    model = ConditionalGFlowNet(env, hidden=args.hidden)
    print(f"HyperGrid ndim={env.ndim} height={env.height} ({env.n_states} objects), "
          f"backends: {', '.join(k for k, v in gfn_fast.backends().items() if v['available'])}")
    print(f"training {args.steps} steps of {args.batch} trajectories, beta ~ U[1, 2]")
    train_seconds = train(model, args.steps, args.batch, args.seed, args.backend, args.lr,
                          args.lr_log_z)
    metrics = {"train_seconds": train_seconds, "steps": args.steps, "batch": args.batch}
    images = []
    for beta in (1.0, 2.0):
        learned = model.terminal_distribution(beta)
        target = env.target_distribution(beta)
        metrics[f"tv_beta_{int(beta)}"] = total_variation(learned, target)
        metrics[f"l1_beta_{int(beta)}"] = 2 * metrics[f"tv_beta_{int(beta)}"]
        top = max(marginal_image(env, target).max(), marginal_image(env, learned).max())
        images += [_png.heatmap(marginal_image(env, target), vmax=top),
                   _png.heatmap(marginal_image(env, learned), vmax=top)]
    print(f"exact distance of the learned terminal distribution to R^beta/Z: beta=1 "
          f"TV {metrics['tv_beta_1']:.4f} (L1 {metrics['l1_beta_1']:.4f}), beta=2 "
          f"TV {metrics['tv_beta_2']:.4f} (L1 {metrics['l1_beta_2']:.4f})")
    fused = time_steps(model, args.compare_steps, args.batch, args.backend, args.seed + 1)
    reference = time_steps(model, args.compare_steps, args.batch, "reference", args.seed + 1)
    metrics.update(step_seconds=fused, reference_step_seconds=reference,
                   speedup_vs_reference=reference / fused)
    print(f"training step: gfn_fast {fused * 1e3:.1f} ms, plain-PyTorch reference "
          f"{reference * 1e3:.1f} ms ({metrics['speedup_vs_reference']:.2f}x), "
          f"{args.compare_steps} steps each")
    _png.write_png(out / "marginals.png", _png.side_by_side(images))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {out / 'metrics.json'} and {out / 'marginals.png'} (target | learned, "
          "beta=1 then beta=2, marginal of the first two coordinates)")
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ndim", type=positive_int, default=4)
    parser.add_argument("--height", type=at_least(2), default=8)
    parser.add_argument("--steps", type=positive_int, default=3000, help="training steps")
    parser.add_argument("--batch", type=positive_int, default=128,
                        help="trajectories per step")
    parser.add_argument("--hidden", type=positive_int, default=128)
    parser.add_argument("--lr", type=positive_float, default=1e-3,
                        help="policy and g(beta) learning rate")
    parser.add_argument("--lr-log-z", type=positive_float, default=0.1,
                        help="log Z(beta) learning rate")
    parser.add_argument("--compare-steps", type=positive_int, default=20,
                        help="steps timed on each path for the speed ratio")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default=None, help="gfn_fast backend (default: automatic)")
    parser.add_argument("--out", default="gfn_fast_out/gflownet", help="output directory")
