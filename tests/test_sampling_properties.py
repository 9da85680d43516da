"""Property-based checks of sample_actions / action_log_prob: random shapes, layouts (contiguous,
transposed, sliced views), dtypes, masks (none, bool, packed; sparse down to one allowed action),
scale / temperature / clip / epsilon, each CPU backend against the float64 reference.

The CI profile runs 12 examples per backend and op; `HYPOTHESIS_PROFILE=long pytest
tests/test_sampling_properties.py` runs many more by hand.
"""


import pytest
import torch
from conftest import available_backends, property_settings
from hypothesis import example, given
from hypothesis import strategies as st

import gfn_fast
from gfn_fast.reference import sampling as ref

PROFILE = property_settings(ci=12, long=1000)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@st.composite
def problems(draw):
    return {
        "rows": draw(st.integers(1, 48)),
        "width": draw(st.sampled_from([1, 2, 3, 7, 8, 9, 31, 64, 130, 700])),
        "dtype": draw(st.sampled_from(DTYPES)),
        "layout": draw(st.sampled_from(["contiguous", "transposed", "sliced"])),
        "mask": draw(st.sampled_from(["none", "bool", "packed"])),
        "density": draw(st.sampled_from([0.0, 0.3, 0.9])),  # 0.0: one allowed action per row
        "scale": draw(st.sampled_from([None, "scalar", "rows"])),
        "temperature": draw(st.sampled_from([None, "scalar", "rows"])),
        "clip": draw(st.sampled_from([None, (-2.0, 2.5)])),
        "epsilon": draw(st.sampled_from([0.0, 0.25, "rows", 1.0])),
        "magnitude": draw(st.sampled_from([0.5, 3.0, 30.0])),
        "seed": draw(st.integers(0, 2**62)),
        "offset": draw(st.integers(0, 2**40)),
    }


def build(problem):
    generator = torch.Generator().manual_seed(problem["seed"] % 2**31)
    rows, width, dtype = problem["rows"], problem["width"], problem["dtype"]
    values = torch.randn(rows, width, generator=generator) * problem["magnitude"]
    if problem["layout"] == "transposed":
        logits = values.to(dtype).T.contiguous().T
    elif problem["layout"] == "sliced":
        wide = torch.full((rows + 2, 3 * width), float("nan"), dtype=dtype)
        wide[1:-1, ::3] = values.to(dtype)
        logits = wide[1:-1, ::3]
    else:
        logits = values.to(dtype)
    mask = None
    if problem["mask"] != "none":
        mask = torch.rand(rows, width, generator=generator) < problem["density"]
        mask[torch.arange(rows), torch.randint(0, width, (rows,), generator=generator)] = True
    kwargs = {}
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    for name, low, high in (("scale", -1.5, 2.0), ("temperature", 0.3, 3.0)):
        if problem[name] == "scalar":
            kwargs[name] = float(torch.empty(()).uniform_(low, high, generator=generator))
        elif problem[name] == "rows":
            kwargs[name] = (torch.rand(rows, generator=generator) * (high - low) + low).to(compute)
    kwargs["clip"] = problem["clip"]
    epsilon = problem["epsilon"]
    kwargs_sample = dict(kwargs, epsilon=torch.rand(rows, generator=generator).to(compute)
                         if epsilon == "rows" else epsilon)
    return logits, mask, kwargs, kwargs_sample


def _pass_mask(mask, kind):
    return ref.pack_mask(mask) if kind == "packed" and mask is not None else mask


def _exact(logits, mask, actions, kwargs):
    """float64 log pi, log mu, entropy at `actions` from the reference distribution."""
    def f64(value):
        return torch.as_tensor(value, dtype=torch.float64) if value is not None else None

    temperature = kwargs.get("temperature")
    inv_t = None if temperature is None else 1.0 / f64(temperature)
    pi, mu = ref.distribution(logits.double(), mask, f64(kwargs.get("scale")), inv_t,
                              kwargs.get("clip"), f64(kwargs.get("epsilon", 0.0)))
    log_pi = torch.log(pi)
    entropy = -torch.where(pi > 0, pi * log_pi, torch.zeros_like(pi)).sum(1)
    index = actions[:, None]
    return log_pi.gather(1, index)[:, 0], torch.log(mu.gather(1, index)[:, 0]), entropy


@pytest.mark.parametrize("backend", available_backends("cpu"))
@PROFILE
@given(problem=problems())
def test_sample_actions_match_reference(backend, problem):
    logits, mask, _, kwargs = build(problem)
    passed = _pass_mask(mask, problem["mask"])
    out = gfn_fast.sample_actions(logits, passed, seed=problem["seed"], offset=problem["offset"],
                                  return_log_mu=True, return_entropy=True, backend=backend,
                                  **kwargs)
    expected = gfn_fast.sample_actions(logits, passed, seed=problem["seed"],
                                       offset=problem["offset"], backend="reference", **kwargs)
    actions = out[0]
    assert actions.dtype == torch.int64 and actions.shape == (problem["rows"],)
    assert bool(((actions >= 0) & (actions < problem["width"])).all())
    if mask is not None:
        assert bool(mask[torch.arange(problem["rows"]), actions].all()), "drew a masked action"
    # the same (seed, offset) draws the same actions on every backend, up to float-rounding ties
    # of two perturbed logits (rare; allowed on at most one row)
    assert int((actions != expected[0]).sum()) <= 1
    tol = 1e-9 if problem["dtype"] == torch.float64 else 3e-5
    for got, want, what in zip(out[1:], _exact(logits, mask, actions, kwargs),
                               ("log_pi", "log_mu", "entropy"), strict=True):
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * max(
            1.0, float(want.abs().max())), msg=lambda m, w=what: f"{w}: {m}")


@pytest.mark.parametrize("backend", available_backends("cpu"))
@PROFILE
@given(problem=problems())
# One allowed action with a large scaled logit: its gradients are exactly 0. Numba's backward
# once recomputed that logit with a fused multiply-add and gave ~5e-4 for the scale.
@example(problem={"rows": 18, "width": 1, "dtype": torch.float32, "layout": "contiguous",
                  "mask": "bool", "density": 0.0, "scale": "rows", "temperature": "scalar",
                  "clip": None, "epsilon": 0.0, "magnitude": 30.0, "seed": 3, "offset": 0})
@example(problem={"rows": 26, "width": 1, "dtype": torch.float32, "layout": "contiguous",
                  "mask": "none", "density": 0.0, "scale": "rows", "temperature": "scalar",
                  "clip": None, "epsilon": 0.0, "magnitude": 30.0, "seed": 1, "offset": 0})
def test_action_log_prob_and_gradients_match_reference(backend, problem):
    logits, mask, kwargs, _ = build(problem)
    passed = _pass_mask(mask, problem["mask"])
    rows, width = problem["rows"], problem["width"]
    allowed = mask if mask is not None else torch.ones(rows, width, dtype=torch.bool)
    actions = torch.multinomial(allowed.double(), 1, generator=torch.Generator().manual_seed(
        problem["seed"] % 2**31))[:, 0]
    leaf = logits.detach().requires_grad_(True)
    scale = kwargs.get("scale")
    if isinstance(scale, torch.Tensor):
        scale = scale.clone().requires_grad_(True)
    got = gfn_fast.action_log_prob(leaf, actions, passed, **dict(kwargs, scale=scale),
                                   backend=backend)
    weights = torch.linspace(0.5, 1.5, rows, dtype=got.dtype)
    inputs = [leaf] + ([scale] if isinstance(scale, torch.Tensor) else [])
    grads = torch.autograd.grad((got * weights).sum(), inputs)

    leaf64 = logits.detach().double().requires_grad_(True)
    scale64 = scale.detach().double().requires_grad_(True) if isinstance(
        scale, torch.Tensor) else scale
    temperature = kwargs.get("temperature")
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.double()
    want = gfn_fast.action_log_prob(leaf64, actions, mask, scale=scale64,
                                    temperature=temperature, clip=kwargs["clip"],
                                    backend="reference")
    inputs64 = [leaf64] + ([scale64] if isinstance(scale64, torch.Tensor) else [])
    want_grads = torch.autograd.grad((want * weights.double()).sum(), inputs64)

    half = problem["dtype"] in (torch.float16, torch.bfloat16)
    # half inputs: the float64 reference reads the same rounded logits, so only the gradient
    # (returned in the input dtype) carries half rounding
    tol = 1e-9 if problem["dtype"] == torch.float64 else 3e-5
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * max(
        1.0, float(want.abs().max())))
    for grad, expected, name in zip(grads, want_grads, ("logits", "scale"), strict=False):
        gtol = 1.6e-2 if half and name == "logits" else tol * 10
        scale_of = max(1.0, float(expected.abs().max()))
        torch.testing.assert_close(grad.double(), expected, rtol=gtol, atol=gtol * scale_of,
                                   msg=lambda m, n=name: f"grad {n}: {m}")
        if name == "logits":
            assert grad.dtype == logits.dtype
            assert bool((grad[~allowed] == 0).all()), "masked logits must get zero gradient"
