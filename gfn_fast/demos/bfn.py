"""`python -m gfn_fast demo bfn`: a discrete Bayesian Flow Network on scikit-learn's 8x8 digits.

The data ship inside scikit-learn (1797 images, 17 grey levels): each pixel is a class in
{0..16}, so an image is D = 64 discrete dimensions with K = 17 classes. A small MLP maps the
input distribution theta [B, 64, 17] and the time t to output logits. Training draws t ~ U(0, 1)
and uses gfn_fast's fused discrete Bayesian flow (`bfn.discrete_flow`) and continuous-time loss
(`bfn.discrete_loss`). The test set's negative log-likelihood bound is reported in bits per
dimension: the continuous-time loss L_inf (averaged over t) plus the reconstruction loss
L_r = -E ln p_O(x | theta; 1) over theta ~ p_F(. | x, 1), divided by D ln 2, with both terms
beside it. Samples come from `bfn.generate`, one fused
kernel per step after the network, and are saved as a PNG grid. The same training step is timed
on the plain-PyTorch reference path for the speed ratio.
"""

import argparse
import json
import math
import sys
import time

import numpy as np
import torch
from torch import nn

from gfn_fast import _png, bfn
from gfn_fast._cli import output_dir, positive_float, positive_int

N_CLASSES = 17
SIDE = 8
DIMS = SIDE * SIDE


def load_digits_classes() -> torch.Tensor:
    """[1797, 64] int64 grey levels 0..16."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise SystemExit("the BFN demo reads scikit-learn's bundled digits: "
                         "pip install scikit-learn (or pip install -e '.[demo]')") from err
    return torch.from_numpy(load_digits().images.reshape(-1, DIMS).astype(np.int64))


class DigitsNet(nn.Module):
    """theta [B, 64, 17] and t [B] -> logits [B, 64, 17]."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(DIMS * N_CLASSES + 16, hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, DIMS * N_CLASSES))
        self.register_buffer("frequencies", torch.pi * 2.0 ** torch.arange(8))

    def forward(self, theta: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angles = t.reshape(-1, 1) * self.frequencies
        features = torch.cat([2 * theta.reshape(theta.shape[0], -1) - 1,
                              torch.sin(angles), torch.cos(angles)], dim=1)
        return self.net(features).reshape(theta.shape)


def loss_step(model: DigitsNet, x: torch.Tensor, beta_1: float, generator: torch.Generator,
              backend: str | None) -> torch.Tensor:
    t = torch.rand(x.shape[0], generator=generator)
    theta = bfn.discrete_flow(x, t, beta_1, N_CLASSES, generator=generator, backend=backend)
    return bfn.discrete_loss(x, model(theta, t), t, beta_1, backend=backend).mean()


@torch.no_grad()
def test_bits_per_dim(model: DigitsNet, x: torch.Tensor, beta_1: float, seed: int,
                      repeats: int = 8) -> dict:
    """The two terms of the negative log-likelihood bound of the images `x` in bits per
    dimension (per image, divided by D ln 2), each averaged over `repeats` draws:
    "loss_inf", the continuous-time loss L_inf (t ~ U(0, 1)), and "reconstruction",
    L_r = -E ln p_O(x | theta; 1) with theta ~ p_F(. | x, 1). L_inf alone is no bound: it
    falls to 0 with beta_1 whatever the model, while L_r rises to D log2 K."""
    generator = torch.Generator().manual_seed(seed)
    ones = torch.ones(x.shape[0])
    loss_inf = reconstruction = 0.0
    for _ in range(repeats):
        loss_inf += float(loss_step(model, x, beta_1, generator, None))
        theta = bfn.discrete_flow(x, ones, beta_1, N_CLASSES, generator=generator)
        log_p = torch.log_softmax(model(theta, ones), -1).gather(-1, x.unsqueeze(-1))
        reconstruction -= float(log_p.sum((1, 2)).mean())
    scale = repeats * DIMS * math.log(2)
    return {"loss_inf": loss_inf / scale, "reconstruction": reconstruction / scale}


def sample_grid(model: DigitsNet, n: int, n_steps: int, beta_1: float, seed: int) -> np.ndarray:
    with torch.no_grad():
        classes = bfn.generate(model, (n, DIMS), n_steps, kind="discrete",
                               n_classes=N_CLASSES, beta_1=beta_1, seed=seed)
    images = classes.reshape(n, SIDE, SIDE).numpy().astype(np.float64) / (N_CLASSES - 1)
    columns = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    cell, pad = SIDE * 4, 4
    grid = np.full((rows * (cell + pad) + pad, columns * (cell + pad) + pad), 255, np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        block = np.kron(255 - 255 * image, np.ones((4, 4)))
        grid[pad + r * (cell + pad):pad + r * (cell + pad) + cell,
             pad + c * (cell + pad):pad + c * (cell + pad) + cell] = block.astype(np.uint8)
    return grid


def time_steps(model: DigitsNet, x: torch.Tensor, steps: int, batch: int, beta_1: float,
               backend: str | None, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in range(steps):
        index = torch.randint(0, x.shape[0], (batch,), generator=generator)
        loss = loss_step(model, x[index], beta_1, generator, backend)
        model.zero_grad()
        loss.backward()
    return (time.perf_counter() - started) / steps


def run(args: argparse.Namespace) -> dict:
    out = output_dir(args.out)  # before any work (a bad path fails now, in one line)
    torch.manual_seed(args.seed)
    data = load_digits_classes()
    order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(0))
    test, train = data[order[:297]], data[order[297:]]
    model = DigitsNet(args.hidden)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, args.lr, total_steps=args.steps)
    generator = torch.Generator().manual_seed(args.seed)
    print(f"digits: {train.shape[0]} train / {test.shape[0]} test images, D={DIMS}, "
          f"K={N_CLASSES}, beta_1={args.beta_1}; {args.steps} steps of {args.batch}")
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        index = torch.randint(0, train.shape[0], (args.batch,), generator=generator)
        loss = loss_step(model, train[index], args.beta_1, generator, args.backend)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 50 == 0 or step == args.steps:
            filled = int(30 * step / args.steps)
            sys.stderr.write(f"\r  [{'#' * filled}{'.' * (30 - filled)}] {step}/{args.steps} "
                             f"L_inf {loss.item() / (DIMS * math.log(2)):.4f} bits/dim  "
                             f"{time.perf_counter() - started:5.1f}s")
            sys.stderr.flush()
    sys.stderr.write("\n")
    metrics = {"train_seconds": time.perf_counter() - started, "steps": args.steps,
               "batch": args.batch, "beta_1": args.beta_1}
    terms = test_bits_per_dim(model, test, args.beta_1, args.seed + 1)
    metrics.update(test_bits_per_dim=terms["loss_inf"] + terms["reconstruction"],
                   test_loss_inf_bits_per_dim=terms["loss_inf"],
                   test_reconstruction_bits_per_dim=terms["reconstruction"])
    print(f"test NLL bound: {metrics['test_bits_per_dim']:.4f} bits/dim (continuous-time loss "
          f"L_inf {terms['loss_inf']:.4f} + reconstruction L_r {terms['reconstruction']:.4f})")
    fused = time_steps(model, train, args.compare_steps, args.batch, args.beta_1, args.backend,
                       args.seed + 2)
    reference = time_steps(model, train, args.compare_steps, args.batch, args.beta_1,
                           "reference", args.seed + 2)
    metrics.update(step_seconds=fused, reference_step_seconds=reference,
                   speedup_vs_reference=reference / fused)
    print(f"training step: gfn_fast {fused * 1e3:.1f} ms, plain-PyTorch reference "
          f"{reference * 1e3:.1f} ms ({metrics['speedup_vs_reference']:.2f}x)")
    started = time.perf_counter()
    _png.write_png(out / "samples.png", sample_grid(model, 64, args.sample_steps, args.beta_1,
                                                    args.seed + 3))
    metrics["sample_seconds"] = time.perf_counter() - started
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {out / 'metrics.json'} and {out / 'samples.png'} (64 samples, "
          f"{args.sample_steps} generation steps)")
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=positive_int, default=3000, help="training steps")
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--hidden", type=positive_int, default=256)
    parser.add_argument("--lr", type=positive_float, default=2e-3)
    parser.add_argument("--beta-1", type=positive_float, default=1.0)
    parser.add_argument("--sample-steps", type=positive_int, default=100,
                        help="generation steps")
    parser.add_argument("--compare-steps", type=positive_int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--out", default="gfn_fast_out/bfn", help="output directory")
