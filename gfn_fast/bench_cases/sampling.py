"""Harness cases for action sampling (see bench/bench_sampling.py for the full description)."""


import torch

import gfn_fast
from gfn_fast.benchmark import Case, compiled, timed_backends


def _multinomial(mu, generator=None):
    return torch.multinomial(mu, 1, generator=generator)[:, 0]


def torch_sampler(logits, mask, scale, epsilon, generator=None, draw=_multinomial):
    """What one writes without gfn_fast: masked_fill, softmax, mixture, a categorical draw
    (`draw(mu, generator)` -> [N] int64; torch.multinomial by default), gather."""
    z = (logits * scale[:, None]).masked_fill(~mask, float("-inf"))
    log_pi_all = torch.log_softmax(z, dim=1)
    uniform = mask / mask.sum(dim=1, keepdim=True)
    mu = (1 - epsilon) * log_pi_all.exp() + epsilon * uniform
    actions = draw(mu, generator)
    return actions, log_pi_all.gather(1, actions[:, None])[:, 0]


def flashinfer_draw():
    """FlashInfer's fused categorical sampler as the draw, where it is installed (CUDA only).
    Its API takes no mask, logit scale or epsilon mixture, so those stay PyTorch ops around it,
    as a user would write them."""
    try:
        from flashinfer.sampling import sampling_from_probs
    except ImportError:
        return None
    return lambda mu, generator=None: sampling_from_probs(mu, generator=generator).long()


def torch_log_prob(logits, mask, scale, actions):
    z = (logits * scale[:, None]).masked_fill(~mask, float("-inf"))
    return torch.log_softmax(z, dim=1).gather(1, actions[:, None])[:, 0]


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
        # small (a HyperGrid-like policy), the size, and wide rows (few rows, many
        # actions: one row spans several of the Numba sampler's chunks)
        sizes = [(4096, 256)] if quick else [(1024, 16), (65536, 256), (64, 65536)]
    cases = []
    for rows, width in sizes:
        setup = _setup(rows, width)
        counter = {"offset": 0}

        def ours(backend, counter=counter):
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

        compiled_sampler = compiled(torch_sampler)

        def sampler_compiled(s, compiled_sampler=compiled_sampler):
            with torch.no_grad():
                return compiled_sampler(s["logits"], s["mask"], s["scale"], 0.1)

        impls = {"eager": eager, "torch.compile": sampler_compiled}
        impls.update({f"gfn_fast[{b}]": ours(b) for b in timed_backends(device)})
        draw = flashinfer_draw() if device.type == "cuda" else None
        if draw is not None:
            def flashinfer(s, draw=draw):
                with torch.no_grad():
                    return torch_sampler(s["logits"], s["mask"], s["scale"], 0.1, draw=draw)
            impls["PyTorch + flashinfer.sampling"] = flashinfer
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

        compiled_lp = compiled(torch_log_prob)
        impls = {"eager": lp_eager,
                 "torch.compile": lambda s, fn=compiled_lp: lp_eager(s, fn)}
        impls.update({f"gfn_fast[{b}]": lp_ours(b) for b in timed_backends(device)})
        # bytes: fwd reads logits + mask, bwd reads them again and writes grad_logits
        cases.append(Case("action_log_prob", f"N={rows} A={width} fp32 fwd+bwd",
                          {"N": rows, "A": width, "dtype": "float32"},
                          rows * width * (5 + 5 + 4), setup, impls))
    return cases
