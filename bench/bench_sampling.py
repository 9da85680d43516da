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

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gfn_fast  # noqa: E402
from gfn_fast import _backends, benchmark  # noqa: E402
from gfn_fast.benchmark import Case  # noqa: E402


def torch_sampler(logits, mask, scale, epsilon, generator=None):
    """What one writes without gfn_fast: masked_fill, softmax, mixture, multinomial, gather."""
    z = (logits * scale[:, None]).masked_fill(~mask, float("-inf"))
    log_pi_all = torch.log_softmax(z, dim=1)
    uniform = mask / mask.sum(dim=1, keepdim=True)
    mu = (1 - epsilon) * log_pi_all.exp() + epsilon * uniform
    actions = torch.multinomial(mu, 1, generator=generator)
    return actions[:, 0], log_pi_all.gather(1, actions)[:, 0]


def torch_log_prob(logits, mask, scale, actions):
    z = (logits * scale[:, None]).masked_fill(~mask, float("-inf"))
    return torch.log_softmax(z, dim=1).gather(1, actions[:, None])[:, 0]


def _backends_for(device):
    names = []
    for name in ("cuda", "triton", "numba"):
        if device.type in gfn_fast.backends()[name]["devices"] and not (
                name == "triton" and device.type == "cpu"):
            names.append(name)
    return names


def _setup(rows, width):
    def setup(dev):
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(rows, width, generator=gen).to(dev)
        mask = (torch.rand(rows, width, generator=gen) < 0.7).to(dev)
        mask[:, 0] = True
        return {"logits": logits.requires_grad_(), "mask": mask,
                "scale": (torch.rand(rows, generator=gen) + 0.5).to(dev).requires_grad_(),
                "actions": mask.float().multinomial(1)[:, 0]}
    return setup


def sampling_cases(device, quick):
    if device.type == "cuda":
        sizes = [(65536, 256)] if quick else [(65536, 256), (4096, 4096), (256, 262144),
                                             (8, 262144)]
    else:
        sizes = [(16384, 256)] if quick else [(65536, 256)]
    cases = []
    for rows, width in sizes:
        setup = _setup(rows, width)
        counter = {"offset": 0}

        def ours(backend):
            def call(s):
                counter["offset"] += 1
                with torch.no_grad():
                    return gfn_fast.sample_actions(s["logits"], s["mask"], scale=s["scale"],
                                                   epsilon=0.1, seed=0,
                                                   offset=counter["offset"], backend=backend)
            return call

        def eager(s):
            with torch.no_grad():
                return torch_sampler(s["logits"], s["mask"], s["scale"], 0.1)

        compiled_sampler = torch.compile(torch_sampler, dynamic=False)

        def compiled(s):
            with torch.no_grad():
                return compiled_sampler(s["logits"], s["mask"], s["scale"], 0.1)

        impls = {"eager": eager, "torch.compile": compiled}
        impls.update({f"gfn_fast[{b}]": ours(b) for b in _backends_for(device)})
        # bytes: read logits (4 B) and the bool mask (1 B) once; write actions + log_pi
        cases.append(Case("sample_actions", f"N={rows} A={width} fp32 mask+scale+eps",
                          {"N": rows, "A": width, "dtype": "float32"},
                          rows * width * 5 + rows * 12, setup, impls))

        def lp_ours(backend):
            def call(s):
                out = gfn_fast.action_log_prob(s["logits"], s["actions"], s["mask"],
                                               scale=s["scale"], backend=backend)
                return torch.autograd.grad(out.sum(), (s["logits"], s["scale"]))
            return call

        def lp_eager(s, fn=torch_log_prob):
            out = fn(s["logits"], s["mask"], s["scale"], s["actions"])
            return torch.autograd.grad(out.sum(), (s["logits"], s["scale"]))

        compiled_lp = torch.compile(torch_log_prob, dynamic=False)
        impls = {"eager": lp_eager, "torch.compile": lambda s: lp_eager(s, compiled_lp)}
        impls.update({f"gfn_fast[{b}]": lp_ours(b) for b in _backends_for(device)})
        # bytes: fwd reads logits + mask, bwd reads them again and writes grad_logits
        cases.append(Case("action_log_prob", f"N={rows} A={width} fp32 fwd+bwd",
                          {"N": rows, "A": width, "dtype": "float32"},
                          rows * width * (5 + 5 + 4), setup, impls))
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--min-seconds", type=float, default=None)
    parser.add_argument("--out", default=None, help="directory for results.jsonl / results.md")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    min_seconds = args.min_seconds if args.min_seconds is not None else (
        0.2 if args.quick else 1.0)
    bandwidth = benchmark.copy_bandwidth(device)
    header = {"device": str(device), "device_name": benchmark.device_name(device),
              "copy_gbps": bandwidth / 1e9, "versions": benchmark._versions(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "backends": {k: v["devices"] for k, v in _backends.backends().items()},
              "command": " ".join(["python"] + sys.argv)}
    rows = []
    for case in sampling_cases(device, args.quick):
        rows.extend(benchmark.run_case(case, device, bandwidth, min_seconds=min_seconds))
    table = benchmark.markdown(rows, header)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "results.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps({**header, **row}) + "\n")
        (out / "results.md").write_text(f"Command: `{header['command']}`\n\n{table}\n")
        print(f"wrote {out / 'results.jsonl'} and {out / 'results.md'}")


if __name__ == "__main__":
    main()
