"""Cross-backend agreement of sampled actions for the same (seed, offset).

    TRITON_INTERPRET=1 python bench/agreement_sampling.py [--rows 1000000] [--actions 16]
        [--out bench/results/<tag>/agreement.json]

Draws once per backend that can run here (numba, the reference, triton: under the interpreter
on CPU or natively on a GPU, and cuda on a GPU) with mask + scale + temperature + epsilon, and
reports the fraction of rows on which each pair of backends picked the same action. Differences
can only come from the last bits of log/exp (float-rounding ties between perturbed logits).
"""

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "0" if __import__("torch").cuda.is_available() else "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import gfn_fast  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--actions", type=int, default=16)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(args.rows, args.actions, generator=gen) * 2
    mask = torch.rand(args.rows, args.actions, generator=gen) < 0.7
    mask[:, 0] = True
    scale = torch.rand(args.rows, generator=gen) + 0.5
    kwargs = dict(scale=scale, temperature=0.8, epsilon=0.1, seed=2024, offset=5)
    report = gfn_fast.backends()
    runs = [("numba", "cpu"), ("reference", "cpu"), ("triton", "cpu")]
    if torch.cuda.is_available():
        runs += [("triton", "cuda"), ("cuda", "cuda")]
    actions, seconds = {}, {}
    for backend, device in runs:
        if backend != "reference" and device not in report[backend]["devices"]:
            continue
        started = time.perf_counter()
        with gfn_fast.validation(False):
            out = gfn_fast.sample_actions(logits.to(device), mask.to(device), backend=backend,
                                          **{k: v.to(device) if isinstance(v, torch.Tensor)
                                             else v for k, v in kwargs.items()})
        actions[f"{backend}-{device}"] = out[0].cpu()
        seconds[f"{backend}-{device}"] = time.perf_counter() - started
    agreement = {}
    for a, b in itertools.combinations(actions, 2):
        same = (actions[a] == actions[b])
        agreement[f"{a} vs {b}"] = {"agree": float(same.double().mean()),
                                    "disagreeing_rows": int((~same).sum())}
    result = {"rows": args.rows, "actions": args.actions, "kwargs": {
        k: (v if not isinstance(v, torch.Tensor) else "per-row") for k, v in kwargs.items()},
        "agreement": agreement, "seconds": seconds,
        "command": " ".join(["python"] + sys.argv)}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
