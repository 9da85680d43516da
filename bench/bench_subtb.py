"""SubTB / DB benchmarks: gfn_fast against torchgfn's SubTBGFlowNet and against the eager
plain-PyTorch reference. Timing and memory helpers are the shared harness's (gfn_fast.benchmark):
round-robin sampling so load from other processes hits every implementation alike. The torchgfn
driver (trajectories, estimators, the loss on cached estimator outputs) is shared with the
harness's `subtb` family (gfn_fast/bench_cases/subtb.py, `python -m gfn_fast bench --ops subtb`).

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

Peak memory is measured from the profiler's allocation events (bench/memory.py).
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
from gfn_fast.bench_cases import subtb as cases


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


def torchgfn_cases(max_length: int, batch: int, min_seconds: float, timing: bool) -> list[dict]:
    from gfn.gflownet import SubTBGFlowNet

    from gfn_fast.integrations import torchgfn as fused

    env, preprocessor, trajectories = cases.hypergrid_batch(max_length, batch, seed=max_length)
    pf, pb, log_flow = cases.estimators(env, preprocessor)
    lengths = trajectories.terminating_idx
    shape = {"B": batch, "T": trajectories.max_length,
             "mean_length": float(lengths.double().mean()),
             "dtype": "float32", "lamda": 0.9, "weighting": "geometric_within"}

    cached, leaves = cases.cached_subtb(env, trajectories, pf, pb, log_flow)
    log_rewards = trajectories.log_rewards

    def clear():
        for leaf in leaves:
            leaf.grad = None

    def fused_loss(leaves):
        return gfn_fast.subtrajectory_balance(leaves[0].T, leaves[1].T, leaves[2].T, log_rewards,
                                              lengths=lengths, lamda=0.9)

    def torchgfn_step():
        clear()
        cached.loss(env, trajectories).backward()

    def gfn_fast_step():
        clear()
        fused_loss(leaves).backward()

    # same value and gradients before timing anything
    relative, grad_error = cases.compare_with_torchgfn(cached, env, trajectories, leaves,
                                                       fused_loss)
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


def reference_cases(batch: int, steps: int, min_seconds: float, chunk: int, timing: bool
                    ) -> list[dict]:
    (log_pf, log_pb, log_flow), log_reward, lengths = cases.synthetic(batch, steps)
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
