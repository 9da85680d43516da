"""Bayesian Flow Network benchmarks on gfn_fast.benchmark's harness (side-by-side timing, peak
memory, bytes-moved model). Usage:

    PYTHONPATH=. python bench/bench_bfn.py [--device cpu] [--quick] [--out bench/results/DIR]

Cases (float32):
  * text8 (B=416, D=256, K=27, beta_1=0.5625): discrete flow + continuous-time loss, fwd+bwd;
  * CIFAR-10 (B=32, D=3072, sigma_1=1e-3): continuous flow + continuous-time loss, fwd+bwd;
  * discretised loss, 256 bins, CIFAR shape, fwd+bwd: peak memory and time against the reference,
    which materialises the [B, D, 256] bin probabilities;
  * n-step discrete loss (n=100), text8 shape, fwd+bwd: against the direct computation of the
    mixture receiver ([B, D, K, K] Gaussian log densities) and against the O(K) reference;
  * generation steps (continuous and discretised with 256 bins at CIFAR shape, discrete at text8
    shape): elements (B x D) per second;
  * the Bayesian updates and the discretised bin probabilities alone.
Baselines draw their noise with torch.randn, as plain PyTorch code would.
"""

import argparse
import json
import sys
from pathlib import Path

from gfn_fast import benchmark as harness
from gfn_fast.bench_cases.bfn import FAMILIES, FAMILY_HELP


def main() -> int:
    harness.CASE_FAMILIES.clear()
    harness.CASE_FAMILIES.update(FAMILIES)  # --ops picks among the BFN families
    harness.FAMILY_HELP.update(FAMILY_HELP)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_arguments(parser)
    parser.add_argument("--label", default=None, help="device label for the results, e.g. "
                        "cpu-2core")
    args = parser.parse_args()
    status = harness.main(args)
    if args.out and args.label:
        path = Path(args.out) / "results.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        with open(path, "w") as f:
            for row in rows:
                # a generation step's data elements (B x D) per second, as the harness's items
                if row.get("item_name") == "elements/s":
                    row["elements_per_s"] = row["items_per_s"]
                f.write(json.dumps({**row, "device_label": args.label,
                                    "command": " ".join(sys.argv)}) + "\n")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
