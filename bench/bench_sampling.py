"""Benchmark of action sampling and action_log_prob on gfn_fast's shared harness.

    python bench/bench_sampling.py [--device cpu|cuda] [--quick] [--out bench/results/<tag>]

Cases (every implementation timed side by side, round-robin, in one run):
  * sample: mask + scale + epsilon, N rows x A actions, float32 (CPU: N=65536, A=256; GPU:
    several sizes up to A=262144). Baselines: the plain PyTorch sampler (masked_fill, softmax,
    epsilon mixture, multinomial, gather) eager and under torch.compile.
  * action_log_prob forward+backward w.r.t. logits and scale, against eager autograd of the
    reference (and torch.compile of it).
On a GPU the cuda and triton backends are added automatically.
"""

import sys

from gfn_fast.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--ops", "sampling", *sys.argv[1:]]))
