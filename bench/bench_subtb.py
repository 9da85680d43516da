"""SubTB / DB benchmarks: gfn_fast against torchgfn's SubTBGFlowNet and against the eager
plain-PyTorch reference. Timing and memory helpers are the shared harness's (gfn_fast.benchmark):
round-robin sampling so load from other processes hits every implementation alike.

1. loss step, same trajectories: torchgfn's SubTBGFlowNet.loss with the estimator outputs
   precomputed and cached as leaf tensors requiring grad (its get_pfs_and_pbs and
   calculate_log_state_flows return them), vs gfn_fast.subtrajectory_balance on those same
   tensors (time-major views). SubTB(0.9), geometric_within, float32, forward + backward.
   HyperGrid trajectories (ndim=2) sampled by torchgfn's own sampler with a low exit logit, so
   most run to the far corner: T = max length ~ 64 or ~ 256.
2. end to end: the same loss() call with MLP estimators evaluated inside (torchgfn's class vs
   gfn_fast.integrations.torchgfn.SubTBGFlowNet), forward + backward.
3. DB and SubTB at B=16384, T=128 (random lengths, synthetic log-probs) vs the eager reference.
   The SubTB reference materialises [B, T+1, T+1] residuals (~1 GB per float32 temporary at
   this size, ~10 GB in all), so it runs over chunks of 1024 trajectories and its times add up.

    python bench/bench_subtb.py --out bench/results/subtb-cpu-2core.jsonl
    python bench/bench_subtb.py --memory-only --out bench/results/subtb-cpu-2core-memory.jsonl

Peak memory is measured from torch's allocation-level memory timeline (bench/memory.py).
"""

import argparse
import datetime
import json
import shlex
import statistics
import sys
from pathlib import Path

import torch
from memory import peak_bytes

import gfn_fast
from gfn_fast import benchmark as harness


def _measure(calls: dict, min_seconds: float, min_reps: int, timing: bool) -> dict:
    """{impl: row fields}: timing (round-robin) when asked, and peak memory of one call."""
    out = {name: {} for name in calls}
    with gfn_fast.validation(False):
        if timing:
            samples = harness.time_side_by_side(calls, torch.device("cpu"),
                                                min_seconds=min_seconds, min_reps=min_reps)
            for name in calls:
                out[name].update(_summary(samples[name]))
        for name, fn in calls.items():
            out[name]["peak_bytes"] = peak_bytes(fn)
    return out


def _summary(samples: list[float]) -> dict:
    return {"median_s": statistics.median(samples), "p20_s": harness._percentile(samples, 0.2),
            "p80_s": harness._percentile(samples, 0.8), "reps": len(samples)}


def hypergrid_batch(max_length: int, batch: int, seed: int):
    """(env, trajectories) from torchgfn's sampler; lengths up to max_length + 1."""
    from gfn.estimators import DiscretePolicyEstimator
    from gfn.gym import HyperGrid
    from gfn.preprocessors import KHotPreprocessor
    from gfn.samplers import Sampler

    class RarelyExit(torch.nn.Module):
        """Uniform over moves, exit logit -4: trajectories mostly end at the far corner."""

        def __init__(self, n_actions: int):
            super().__init__()
            self.n_actions = n_actions

        def forward(self, states: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(states.shape[0], self.n_actions)
            logits[:, -1] = -4.0
            return logits

    torch.manual_seed(seed)
    env = HyperGrid(ndim=2, height=max_length // 2 + 1, validate_modes=False)
    preprocessor = KHotPreprocessor(env.height, env.ndim)
    policy = DiscretePolicyEstimator(RarelyExit(env.n_actions), env.n_actions,
                                     preprocessor=preprocessor)
    with torch.no_grad():
        trajectories = Sampler(policy).sample_trajectories(env, n=batch)
    return env, preprocessor, trajectories


def estimators(env, preprocessor, hidden: int = 64):
    from gfn.estimators import DiscretePolicyEstimator, ScalarEstimator
    from gfn.utils.modules import MLP

    dim = preprocessor.output_dim
    pf = DiscretePolicyEstimator(MLP(dim, env.n_actions, hidden_dim=hidden, n_hidden_layers=2),
                                 env.n_actions, preprocessor=preprocessor)
    pb = DiscretePolicyEstimator(MLP(dim, env.n_actions - 1, hidden_dim=hidden,
                                     n_hidden_layers=2), env.n_actions,
                                 preprocessor=preprocessor, is_backward=True)
    log_flow = ScalarEstimator(MLP(dim, 1, hidden_dim=hidden, n_hidden_layers=2),
                               preprocessor=preprocessor)
    return pf, pb, log_flow


def torchgfn_cases(max_length: int, batch: int, min_seconds: float, timing: bool) -> list[dict]:
    from gfn.gflownet import SubTBGFlowNet

    from gfn_fast.integrations import torchgfn as fused

    env, preprocessor, trajectories = hypergrid_batch(max_length, batch, seed=max_length)
    pf, pb, log_flow = estimators(env, preprocessor)
    lengths = trajectories.terminating_idx
    shape = {"B": batch, "T": trajectories.max_length,
             "mean_length": float(lengths.double().mean()),
             "dtype": "float32", "lamda": 0.9, "weighting": "geometric_within"}

    # cached estimator outputs, as leaves requiring grad
    probe = SubTBGFlowNet(pf, pb, log_flow, lamda=0.9)
    with torch.no_grad():
        cached_pf, cached_pb = probe.get_pfs_and_pbs(trajectories)
        cached_flow = probe.calculate_log_state_flows(env, trajectories, cached_pf)
    leaves = [t.detach().clone().requires_grad_() for t in (cached_pf, cached_pb, cached_flow)]
    log_rewards = trajectories.log_rewards

    class CachedSubTB(SubTBGFlowNet):
        def get_pfs_and_pbs(self, trajectories, recalculate_all_logprobs=True):
            return leaves[0], leaves[1]

        def calculate_log_state_flows(self, env, trajectories, log_pf_trajectories):
            return leaves[2]

    cached = CachedSubTB(pf, pb, log_flow, lamda=0.9)

    def clear():
        for leaf in leaves:
            leaf.grad = None

    def torchgfn_step():
        clear()
        cached.loss(env, trajectories).backward()

    def gfn_fast_step():
        clear()
        gfn_fast.subtrajectory_balance(leaves[0].T, leaves[1].T, leaves[2].T, log_rewards,
                                       lengths=lengths, lamda=0.9).backward()

    # same value and gradients before timing anything
    clear()
    reference_value = cached.loss(env, trajectories)
    reference_value.backward()
    reference_grads = [leaf.grad.clone() for leaf in leaves]
    clear()
    value = gfn_fast.subtrajectory_balance(leaves[0].T, leaves[1].T, leaves[2].T, log_rewards,
                                           lengths=lengths, lamda=0.9)
    value.backward()
    relative = abs(float(value.detach()) - float(reference_value.detach())) / abs(
        float(reference_value.detach()))
    # torchgfn leaves log_pb of the exit action out of sub-trajectories ending at the sink (it
    # is structurally 0 there, see docs/torchgfn.md), so its gradient there is 0; compare the
    # other entries
    steps = torch.arange(cached_pf.shape[0])[:, None]
    exit_step = steps == (lengths - 1)[None, :]
    reference_grads[1] = torch.where(exit_step, leaves[1].grad, reference_grads[1])
    grad_error = max(float((leaf.grad - g).abs().max() / g.abs().max().clamp(min=1e-30))
                     for leaf, g in zip(leaves, reference_grads, strict=False))
    assert relative < 1e-4 and grad_error < 1e-3, (relative, grad_error)

    rows = []
    measured = _measure({"torchgfn": torchgfn_step, "gfn_fast": gfn_fast_step}, min_seconds, 5,
                        timing)
    for name, fields in measured.items():
        rows.append(dict(case="subtb_loss_step_cached_estimators", impl=name, **shape, **fields,
                         value_rel_diff=relative, grad_max_rel_diff=grad_error))

    # end to end: estimators evaluated inside loss()
    theirs = SubTBGFlowNet(pf, pb, log_flow, lamda=0.9)
    ours = fused.SubTBGFlowNet(pf, pb, log_flow, lamda=0.9)

    def end_to_end(gflownet):
        def step():
            gflownet.zero_grad(set_to_none=True)
            gflownet.loss(env, trajectories).backward()
        return step

    measured = _measure({"torchgfn": end_to_end(theirs), "gfn_fast": end_to_end(ours)},
                        min_seconds, 5, timing)
    for name, fields in measured.items():
        rows.append(dict(case="subtb_loss_call_end_to_end", impl=name, **shape, **fields))
    return rows


def synthetic(batch: int, steps: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, steps + 1, (batch,), generator=gen)
    tensors = [torch.randn(batch, steps, generator=gen) for _ in range(3)]
    tensors[0] = -tensors[0].abs()
    tensors[1] = -tensors[1].abs()
    log_reward = torch.randn(batch, generator=gen)
    return [t.requires_grad_() for t in tensors], log_reward, lengths


def reference_cases(batch: int, steps: int, min_seconds: float, chunk: int, timing: bool
                    ) -> list[dict]:
    (log_pf, log_pb, log_flow), log_reward, lengths = synthetic(batch, steps)
    leaves = (log_pf, log_pb, log_flow)

    def clear():
        for leaf in leaves:
            leaf.grad = None

    def db(backend):
        def step():
            clear()
            gfn_fast.detailed_balance(log_pf, log_pb, log_flow, log_reward, lengths=lengths,
                                      backend=backend).backward()
        return step

    def subtb(backend):
        def step():
            clear()
            gfn_fast.subtrajectory_balance(log_pf, log_pb, log_flow, log_reward,
                                           lengths=lengths, backend=backend).backward()
        return step

    def subtb_reference_chunked():
        clear()
        for first in range(0, batch, chunk):
            rows = slice(first, first + chunk)
            part = gfn_fast.subtrajectory_balance(
                log_pf[rows], log_pb[rows], log_flow[rows], log_reward[rows],
                lengths=lengths[rows], backend="reference")
            (part * (min(chunk, batch - first) / batch)).backward()

    shape = {"B": batch, "T": steps, "dtype": "float32"}
    rows = []
    for case, calls in (
        ("db_fwd_bwd", {"gfn_fast numba": db("numba"), "reference eager": db("reference")}),
        ("subtb_geometric_within_fwd_bwd",
         {"gfn_fast numba": subtb("numba"),
          f"reference eager (chunks of {chunk})": subtb_reference_chunked}),
    ):
        for name, fields in _measure(calls, min_seconds, 3, timing).items():
            rows.append(dict(case=case, impl=name, **shape, **fields))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/subtb-cpu-2core.jsonl")
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--memory-only", action="store_true",
                        help="measure peak memory only (no timing)")
    args = parser.parse_args()
    header = {"device": harness.device_name(torch.device("cpu")),
              "versions": harness._versions(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv)}
    try:
        import gfn  # noqa: F401

        header["versions"]["torchgfn"] = __import__("importlib.metadata").metadata.version(
            "torchgfn")
    except ImportError:
        gfn = None
    rows = []
    if gfn is not None:
        for max_length in ((16,) if args.quick else (64, 256)):
            rows += torchgfn_cases(max_length, 256 if args.quick else 2048, args.min_seconds,
                                   not args.memory_only)
    else:
        print("torchgfn is not installed: skipping the torchgfn comparison", file=sys.stderr)
    if args.quick:
        rows += reference_cases(512, 32, args.min_seconds, chunk=256, timing=not args.memory_only)
    else:
        rows += reference_cases(16384, 128, args.min_seconds, chunk=1024,
                                timing=not args.memory_only)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        for row in rows:
            handle.write(json.dumps({**header, **row}) + "\n")
    for row in rows:
        timing = f"median {row['median_s'] * 1e3:10.2f} ms   " if "median_s" in row else ""
        print(f"{row['case']:<36} {row['impl']:<32} B={row['B']:<6} T={row['T']:<4} "
              f"{timing}peak {row['peak_bytes'] / 2**20:9.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
