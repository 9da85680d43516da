"""Harness cases for Bayesian Flow Networks (see bench/bench_bfn.py for the full description)."""


import math

import torch

from gfn_fast import benchmark as harness
from gfn_fast import bfn
from gfn_fast.reference import bfn as ref

TEXT8 = dict(B=416, D=256, K=27, beta_1=0.5625)
CIFAR = dict(B=32, D=3072, sigma_1=1e-3)


def _grads(loss, inputs):
    return torch.autograd.grad(loss.sum(), inputs)


def _references(plain, finish, eager_name: str = "eager",
                compiled_name: str = "torch.compile") -> dict:
    """The reference path in eager mode and under torch.compile: `plain(state)` is the
    reference math (its own noise drawn inside), `finish(fn, state)` calls `fn` and takes what
    the case measures after it (gradients, an in-place state update), outside the compiled graph
    in both rows. (--quick and --no-compile runs drop the compiled row: benchmark.build_cases.)"""
    compiled = harness.compiled(plain)
    return {eager_name: lambda s: finish(plain, s), compiled_name: lambda s: finish(compiled, s)}


def _case(op, label, params, moved, setup, references, fused, device, elements=0):
    """A harness case: the reference rows (see _references), then `fused(backend)` on each
    gfn_fast backend of the device. `elements`: data elements a call produces (a generation
    step's B x D), reported as elements per second."""
    impls = dict(references)
    impls.update({f"gfn_fast[{b}]": fused(b) for b in harness.timed_backends(device)})
    return harness.Case(op, label, params, moved, setup, impls, items=elements,
                        item_name="elements/s" if elements else "")


def text8_cases(device, quick):
    batches = [64] if quick else [32, TEXT8["B"]]
    return [case for batch in batches
            for case in _text8_case(device, dict(TEXT8, B=batch))]


def _text8_case(device, p):
    batch, dims, n_classes, beta_1 = p["B"], p["D"], p["K"], p["beta_1"]

    def setup(dev):
        gen = torch.Generator().manual_seed(0)
        return {"x": torch.randint(0, n_classes, (batch, dims), generator=gen).to(dev),
                "t": torch.rand(batch, generator=gen).to(dev),
                "logits": torch.randn(batch, dims, n_classes, generator=gen).to(dev)
                .requires_grad_(True)}

    def plain(s):
        eps = torch.randn(batch, dims, n_classes, device=s["x"].device)
        theta = ref.discrete_flow(s["x"], s["t"], beta_1, n_classes, eps, False)
        return theta, ref.discrete_loss(s["x"], s["logits"], s["t"], beta_1)

    def finish(fn, s):
        theta, loss = fn(s)
        return theta, _grads(loss, [s["logits"]])

    def fused(backend):
        def call(s):
            theta = bfn.discrete_flow(s["x"], s["t"], beta_1, n_classes, seed=1, backend=backend)
            loss = bfn.discrete_loss(s["x"], s["logits"], s["t"], beta_1, backend=backend)
            return theta, _grads(loss, [s["logits"]])
        return call

    # theta written, logits read twice (fwd, bwd), gradient written; indices read
    moved = batch * dims * (4 * n_classes * 4 + 2 * 8)
    return [_case("bfn_discrete_flow+loss", f"text8 B={batch} D={dims} K={n_classes} fwd+bwd",
                  p, moved, setup, _references(plain, finish), fused, device)]


def cifar_cases(device, quick):
    batches = [8] if quick else [CIFAR["B"], 256]
    return [case for batch in batches
            for case in _cifar_case(device, dict(CIFAR, B=batch))]


def _cifar_case(device, p):
    batch, dims, sigma_1 = p["B"], p["D"], p["sigma_1"]

    def setup(dev):
        gen = torch.Generator().manual_seed(0)
        return {"x": (torch.rand(batch, dims, generator=gen) * 2 - 1).to(dev),
                "t": torch.rand(batch, generator=gen).to(dev),
                "eps_hat": torch.randn(batch, dims, generator=gen).to(dev).requires_grad_(True)}

    def plain(s):
        mu = ref.continuous_flow(s["x"], s["t"], sigma_1, torch.randn_like(s["x"]))
        return ref.continuous_loss(s["x"], mu, s["eps_hat"], s["t"], sigma_1, 0, 1e-6, None)

    def finish(fn, s):
        return _grads(fn(s), [s["eps_hat"]])

    def fused(backend):
        def call(s):
            mu = bfn.continuous_flow(s["x"], s["t"], sigma_1, seed=1, backend=backend)
            loss = bfn.continuous_loss(s["x"], mu, s["eps_hat"], s["t"], sigma_1,
                                       backend=backend)
            return _grads(loss, [s["eps_hat"]])
        return call

    # flow: read x, write mu; loss fwd: read x, mu, eps_hat, write d loss / d eps_hat;
    # bwd: read that, write the gradient
    moved = batch * dims * 4 * 8
    return [_case("bfn_continuous_flow+loss", f"CIFAR-10 B={batch} D={dims} fwd+bwd", p, moved,
                  setup, _references(plain, finish), fused, device)]


def discretised_cases(device, quick):
    p = dict(CIFAR, B=4, n_bins=256) if quick else dict(CIFAR, n_bins=256)
    batch, dims, sigma_1, n_bins = p["B"], p["D"], p["sigma_1"], p["n_bins"]

    def setup(dev):
        gen = torch.Generator().manual_seed(0)
        k = torch.randint(0, n_bins, (batch, dims), generator=gen)
        return {"x": ((2 * k + 1) / n_bins - 1).to(dev),
                "t": torch.rand(batch, generator=gen).to(dev),
                "mu_x": (torch.randn(batch, dims, generator=gen) * 0.5).to(dev)
                .requires_grad_(True),
                "log_sigma": (torch.randn(batch, dims, generator=gen) - 2).to(dev)
                .requires_grad_(True)}

    def plain(s):
        return ref.discretised_loss(s["x"], s["mu_x"], s["log_sigma"], s["t"], sigma_1, n_bins, 0)

    def finish(fn, s):
        return _grads(fn(s), [s["mu_x"], s["log_sigma"]])

    def fused(backend):
        def call(s):
            loss = bfn.discretised_loss(s["x"], s["mu_x"], s["log_sigma"], s["t"], sigma_1,
                                        n_bins, backend=backend)
            return _grads(loss, [s["mu_x"], s["log_sigma"]])
        return call

    moved = batch * dims * 4 * 8
    references = _references(plain, finish, "eager (materialises [B, D, K])")
    return [_case("bfn_discretised_loss", f"256 bins B={batch} D={dims} fwd+bwd", p, moved,
                  setup, references, fused, device)]


def nstep_cases(device, quick):
    p = dict(TEXT8, B=32, n_steps=100) if quick else dict(TEXT8, n_steps=100)
    batch, dims, n_classes, beta_1, n_steps = p["B"], p["D"], p["K"], p["beta_1"], p["n_steps"]

    def setup(dev):
        gen = torch.Generator().manual_seed(0)
        return {"x": torch.randint(0, n_classes, (batch, dims), generator=gen).to(dev),
                "t": (torch.randint(0, n_steps, (batch,), generator=gen) / n_steps).to(dev),
                "logits": torch.randn(batch, dims, n_classes, generator=gen).to(dev)
                .requires_grad_(True)}

    def materialised(s):
        """ln p_S(y | x) - ln p_R(y) with every class's K-dimensional Gaussian log density."""
        x, logits = s["x"], s["logits"]
        alpha = ref.discrete_nstep_alpha(s["t"], beta_1, n_steps).reshape(-1, 1, 1)
        eps = torch.randn(batch, dims, n_classes, device=x.device)
        y = ref.discrete_sender_logits(x, alpha.reshape(-1), n_classes, eps)
        means = alpha.unsqueeze(-1) * (n_classes * torch.eye(n_classes, device=x.device) - 1)
        var = (alpha * n_classes).unsqueeze(-1)
        log_normal = (-0.5 * (y.unsqueeze(-2) - means) ** 2 / var
                      - 0.5 * torch.log(2 * math.pi * var)).sum(-1)  # [B, D, K] from [B,D,K,K]
        one_hot = torch.nn.functional.one_hot(x, n_classes).to(log_normal.dtype)
        log_receiver = torch.logsumexp(torch.log_softmax(logits, -1) + log_normal, -1)
        loss = n_steps * ((log_normal * one_hot).sum(-1) - log_receiver).sum(-1)
        return _grads(loss, [logits])

    def reference_o_k(s):
        eps = torch.randn(batch, dims, n_classes, device=s["x"].device)
        return ref.discrete_nstep_loss(s["x"], s["logits"], s["t"], beta_1, n_steps, eps)

    def finish(fn, s):
        return _grads(fn(s), [s["logits"]])

    def fused(backend):
        def call(s):
            loss = bfn.discrete_loss(s["x"], s["logits"], s["t"], beta_1, n_steps, seed=1,
                                     backend=backend)
            return _grads(loss, [s["logits"]])
        return call

    references = {"eager": materialised}
    references.update(_references(reference_o_k, finish, "eager O(K) reference",
                                  "torch.compile (O(K) reference)"))
    moved = batch * dims * (3 * n_classes * 4 + 2 * 8)
    return [_case("bfn_discrete_nstep_loss", f"n=100 text8 B={batch} D={dims} K={n_classes} "
                  "fwd+bwd", p, moved, setup, references, fused, device)]


def step_cases(device, quick):
    c = dict(CIFAR, B=8) if quick else CIFAR
    t8 = dict(TEXT8, B=64) if quick else TEXT8
    cases = []

    def setup_continuous(dev):
        gen = torch.Generator().manual_seed(0)
        return {"mu": torch.randn(c["B"], c["D"], generator=gen).to(dev),
                "rho": torch.ones(c["B"], device=dev),
                "eps_hat": torch.randn(c["B"], c["D"], generator=gen).to(dev)}

    def plain_continuous(s):
        t = torch.full((c["B"],), 0.5, device=s["mu"].device)
        eps = torch.randn_like(s["mu"])
        return ref.continuous_step(s["mu"], s["rho"], s["eps_hat"], t, 2.0, c["sigma_1"], 1e-6,
                                   None, eps)[0]

    def update(fn, s, name="mu"):
        # in place, as the fused step updates: the state tensors stay the ones a CUDA graph read
        s[name].copy_(fn(s))

    def fused_continuous(backend):
        def call(s):
            bfn.continuous_step(s["mu"], s["rho"], s["eps_hat"], 0.5, 2.0, c["sigma_1"], seed=1,
                                backend=backend)
            s["rho"].fill_(1.0)
        return call

    cases.append(_case("bfn_continuous_step", f"CIFAR-10 B={c['B']} D={c['D']}",
                       dict(c, elements=c["B"] * c["D"]), c["B"] * c["D"] * 4 * 3,
                       setup_continuous, _references(plain_continuous, update),
                       fused_continuous, device, elements=c["B"] * c["D"]))

    def setup_discretised(dev):
        state = setup_continuous(dev)
        gen = torch.Generator().manual_seed(1)
        state["mu_x"] = (torch.rand(c["B"], c["D"], generator=gen) * 2 - 1).to(dev)
        state["log_sigma_x"] = (torch.rand(c["B"], c["D"], generator=gen) * 2 - 5).to(dev)
        state["draw"] = torch.empty(c["B"], c["D"], device=dev)
        return state

    def plain_discretised(s):
        eps_draw, eps = torch.randn_like(s["mu"]), torch.randn_like(s["mu"])
        return ref.discretised_step(s["mu"], s["rho"], s["mu_x"], s["log_sigma_x"], 2.0,
                                    256, eps_draw, eps)[0]

    def fused_discretised(backend):
        def call(s):
            bfn.discretised_step(s["mu"], s["rho"], s["mu_x"], s["log_sigma_x"], 2.0, 256,
                                 draw=s["draw"], seed=1, backend=backend)
            s["rho"].fill_(1.0)
        return call

    # read mu, mu_x, log_sigma_x; write mu and the drawn centres
    cases.append(_case("bfn_discretised_step", f"CIFAR-10 256 bins B={c['B']} D={c['D']}",
                       dict(c, n_bins=256, elements=c["B"] * c["D"]), c["B"] * c["D"] * 4 * 5,
                       setup_discretised, _references(plain_discretised, update),
                       fused_discretised, device, elements=c["B"] * c["D"]))

    def setup_discrete(dev):
        gen = torch.Generator().manual_seed(0)
        shape = (t8["B"], t8["D"], t8["K"])
        return {"log_theta": torch.full(shape, -math.log(t8["K"]), device=dev),
                "logits": torch.randn(shape, generator=gen).to(dev),
                "draw": torch.empty(shape[:2], dtype=torch.int64, device=dev)}

    def plain_discrete(s):
        uniform = torch.rand(s["logits"].shape[:2], device=s["logits"].device)
        eps = torch.randn_like(s["logits"])
        return ref.discrete_step(s["log_theta"], s["logits"], 0.01, uniform, eps)[0]

    def fused_discrete(backend):
        def call(s):
            bfn.discrete_step(s["log_theta"], s["logits"], 0.01, draw=s["draw"], seed=1,
                              backend=backend)
        return call

    references = _references(plain_discrete, lambda fn, s: update(fn, s, "log_theta"))
    cases.append(_case("bfn_discrete_step", f"text8 B={t8['B']} D={t8['D']} K={t8['K']}",
                       dict(t8, elements=t8["B"] * t8["D"]),
                       t8["B"] * t8["D"] * t8["K"] * 4 * 3, setup_discrete, references,
                       fused_discrete, device, elements=t8["B"] * t8["D"]))
    return cases


def update_cases(device, quick):
    """The Bayesian updates alone (the generation steps above fuse them with their draws) and the
    discretised bin probabilities (the sampling op), no gradient."""
    c = dict(CIFAR, B=8) if quick else CIFAR
    t8 = dict(TEXT8, B=64) if quick else TEXT8
    bins = dict(CIFAR, B=2 if quick else 8, n_bins=256)
    cases = []

    def returned(fn, s):
        return fn(s)

    def setup_continuous(dev):
        gen = torch.Generator().manual_seed(0)
        return {"mu": torch.randn(c["B"], c["D"], generator=gen).to(dev),
                "y": torch.randn(c["B"], c["D"], generator=gen).to(dev),
                "rho": (torch.rand(c["B"], generator=gen) + 1).to(dev),
                "alpha": (torch.rand(c["B"], generator=gen) + 0.5).to(dev)}

    def plain_continuous(s):
        return ref.continuous_update(s["mu"], s["rho"][:, None], s["y"], s["alpha"][:, None])

    def fused_continuous(backend):
        return lambda s: bfn.continuous_update(s["mu"], s["rho"], s["y"], s["alpha"],
                                               backend=backend)

    # read mu and y, write mu' (the [B] precisions are negligible)
    cases.append(_case("bfn_continuous_update", f"CIFAR-10 B={c['B']} D={c['D']}",
                       dict(c, elements=c["B"] * c["D"]), c["B"] * c["D"] * 4 * 3,
                       setup_continuous, _references(plain_continuous, returned),
                       fused_continuous, device))

    def setup_discrete(dev):
        gen = torch.Generator().manual_seed(0)
        shape = (t8["B"], t8["D"], t8["K"])
        return {"log_theta": torch.log_softmax(torch.randn(shape, generator=gen), -1).to(dev),
                "y": torch.randn(shape, generator=gen).to(dev)}

    def plain_discrete(s):
        return ref.discrete_update(s["log_theta"], s["y"])

    def fused_discrete(backend):
        return lambda s: bfn.discrete_update(s["log_theta"], s["y"], backend=backend)

    elements = t8["B"] * t8["D"] * t8["K"]
    cases.append(_case("bfn_discrete_update", f"text8 B={t8['B']} D={t8['D']} K={t8['K']}",
                       dict(t8, elements=elements), elements * 4 * 3, setup_discrete,
                       _references(plain_discrete, returned), fused_discrete, device))

    def setup_bins(dev):
        gen = torch.Generator().manual_seed(0)
        return {"mu_x": (torch.randn(bins["B"], bins["D"], generator=gen) * 0.5).to(dev),
                "log_sigma": (torch.randn(bins["B"], bins["D"], generator=gen) - 2).to(dev)}

    def plain_bins(s):
        return ref.discretised_probs(s["mu_x"], s["log_sigma"], bins["n_bins"])

    def fused_bins(backend):
        return lambda s: bfn.discretised_probs(s["mu_x"], s["log_sigma"], bins["n_bins"],
                                               backend=backend)

    # read mu_x and log sigma, write K probabilities per element
    cases.append(_case("bfn_discretised_probs", f"256 bins B={bins['B']} D={bins['D']}", bins,
                       bins["B"] * bins["D"] * 4 * (2 + bins["n_bins"]), setup_bins,
                       _references(plain_bins, returned), fused_bins, device))
    return cases


FAMILIES = {"text8": text8_cases, "cifar": cifar_cases, "discretised": discretised_cases,
            "nstep": nstep_cases, "steps": step_cases, "updates": update_cases}
FAMILY_HELP = {"text8": "discrete flow + loss at text8's shape",
               "cifar": "continuous flow + loss at CIFAR-10's shape",
               "discretised": "discretised loss, 256 bins", "nstep": "n-step discrete loss",
               "steps": "generation steps",
               "updates": "Bayesian updates alone and the discretised bin probabilities"}
