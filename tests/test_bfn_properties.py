"""Property-based checks of the BFN losses and updates: random shapes (including trailing
dimensions), dtypes, sliced views, times, sigma_1 / beta_1 / n_steps / n_bins, each CPU backend
against the float64 reference. CI profile 10 examples per backend and op;
`HYPOTHESIS_PROFILE=long pytest tests/test_bfn_properties.py` runs many more by hand.
"""


import pytest
import torch
from conftest import available_backends, property_settings
from hypothesis import given
from hypothesis import strategies as st

from gfn_fast import bfn

PROFILE = property_settings(ci=10, long=500)

# relative tolerances (of the largest magnitude) for values and gradients per dtype
TOL = {torch.float64: (1e-9, 1e-9), torch.float32: (2e-5, 2e-4), torch.bfloat16: (2e-3, 2e-2),
       torch.float16: (2e-3, 2e-2)}


@st.composite
def shapes(draw):
    batch = draw(st.integers(1, 9))
    rest = draw(st.lists(st.integers(1, 13), min_size=1, max_size=2))
    return {"shape": (batch, *rest), "dtype": draw(st.sampled_from(list(TOL))),
            "sliced": draw(st.booleans()), "seed": draw(st.integers(0, 2**31 - 1)),
            "t_kind": draw(st.sampled_from(["scalar", "rows", "edges"]))}


def _tensor(generator, shape, dtype, sliced, scale=1.0, shift=0.0):
    values = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale + shift
    if not sliced:
        return values.to(dtype)
    wide = torch.zeros(*shape[:-1], 2 * shape[-1], dtype=dtype)
    wide[..., ::2] = values.to(dtype)
    return wide[..., ::2]


def _times(generator, problem):
    batch = problem["shape"][0]
    if problem["t_kind"] == "scalar":
        return float(torch.rand((), generator=generator)) * 0.9 + 0.05
    if problem["t_kind"] == "edges":
        return torch.tensor([0.0, 1e-7, 1.0] * batch)[:batch]
    return torch.rand(batch, generator=generator)


def _close(actual, expected, rtol, what):
    if actual.dtype in (torch.float16, torch.bfloat16):
        # Exact values beyond the half type's range must come back as inf of the same sign
        # (docs/numerics.md); within 1% of the edge rounding may go either way.
        top = torch.finfo(actual.dtype).max
        magnitude = expected.double().abs()
        over = magnitude > 1.01 * top
        assert bool(torch.isinf(actual[over]).all()), f"{what}: overflow not reported as inf"
        assert bool((actual[over].sign() == expected[over].sign()).all()), what
        keep = magnitude < 0.99 * top
        actual, expected = actual[keep], expected[keep]
        if expected.numel() == 0:
            return
    # A half type cannot hold magnitudes below its smallest subnormal (fp16: 6e-8; a t near 0
    # gives gradients of ~1e-8): rounding to it may be off by up to half that step, on top of
    # the relative error.
    floor = 0.5 * 2.0 ** -24 if actual.dtype == torch.float16 else 0.0
    actual, expected = actual.double(), expected.double()
    scale = float(expected.abs().max()) + 1e-12
    err = float((actual - expected).abs().max())
    assert err <= rtol * scale + floor, \
        f"{what}: max error {err:.3g} > {rtol:.1g} * {scale:.3g} + {floor:.1g}"


def _leaf(tensor, dtype=None):
    return (tensor.detach() if dtype is None else tensor.detach().to(dtype)).requires_grad_(True)


@pytest.mark.parametrize("backend", available_backends("cpu"))
@PROFILE
@given(problem=shapes(), sigma_1=st.sampled_from([1e-3, 0.02, 0.3]),
       n_steps=st.sampled_from([None, 1, 25]), clamp=st.booleans())
def test_continuous_loss_and_output(backend, problem, sigma_1, n_steps, clamp):
    generator = torch.Generator().manual_seed(problem["seed"])
    shape, dtype = problem["shape"], problem["dtype"]
    x = _tensor(generator, shape, dtype, problem["sliced"], 0.5)
    mu = _tensor(generator, shape, dtype, problem["sliced"], 0.5)
    eps_hat = _tensor(generator, shape, dtype, problem["sliced"])
    t = _times(generator, problem)
    x_range = (-1.0, 1.0) if clamp else None
    rtol, gtol = TOL[dtype]
    if dtype in (torch.float16, torch.bfloat16) and sigma_1 < 0.01:
        sigma_1 = 0.05  # the 1e6 weight of sigma_1 = 1e-3 overflows half gradients (numerics.md)
    leaf = _leaf(eps_hat)
    loss = bfn.continuous_loss(x, mu, leaf, t, sigma_1, n_steps, x_range=x_range,
                               backend=backend)
    (grad,) = torch.autograd.grad(loss.sum(), [leaf])
    leaf64 = _leaf(eps_hat, torch.float64)
    t64 = t.double() if isinstance(t, torch.Tensor) else t
    want = bfn.continuous_loss(x.double(), mu.double(), leaf64, t64, sigma_1, n_steps,
                               x_range=x_range, backend="reference")
    (want_grad,) = torch.autograd.grad(want.sum(), [leaf64])
    assert loss.shape == want.shape and grad.dtype == dtype
    _close(loss, want, rtol, "loss")
    _close(grad, want_grad, gtol, "grad eps_hat")
    out = bfn.continuous_output(mu, eps_hat, t, sigma_1, x_range=x_range, backend=backend)
    want_out = bfn.continuous_output(mu.double(), eps_hat.double(), t64, sigma_1,
                                     x_range=x_range, backend="reference")
    _close(out, want_out, max(rtol, 8e-3 if dtype.itemsize == 2 else 0), "x_hat")


@pytest.mark.parametrize("backend", available_backends("cpu"))
@PROFILE
@given(problem=shapes(), n_classes=st.sampled_from([2, 5, 27]),
       beta_1=st.sampled_from([0.5625, 3.0]))
def test_discrete_loss_and_update(backend, problem, n_classes, beta_1):
    generator = torch.Generator().manual_seed(problem["seed"])
    shape, dtype = problem["shape"], problem["dtype"]
    x_index = torch.randint(0, n_classes, shape, generator=generator)
    logits = _tensor(generator, (*shape, n_classes), dtype, problem["sliced"], 2.0)
    t = _times(generator, problem)
    rtol, gtol = TOL[dtype]
    leaf = _leaf(logits)
    loss = bfn.discrete_loss(x_index, leaf, t, beta_1, backend=backend)
    (grad,) = torch.autograd.grad(loss.sum(), [leaf])
    leaf64 = _leaf(logits, torch.float64)
    t64 = t.double() if isinstance(t, torch.Tensor) else t
    want = bfn.discrete_loss(x_index, leaf64, t64, beta_1, backend="reference")
    (want_grad,) = torch.autograd.grad(want.sum(), [leaf64])
    _close(loss, want, rtol, "loss")
    _close(grad, want_grad, gtol, "grad logits")
    log_theta = torch.log_softmax(logits.double(), -1).to(dtype)
    y = _tensor(generator, (*shape, n_classes), dtype, problem["sliced"], 3.0)
    updated = bfn.discrete_update(log_theta, y, backend=backend)
    want_update = bfn.discrete_update(log_theta.double(), y.double(), backend="reference")
    _close(updated, want_update, max(rtol, 8e-3 if dtype.itemsize == 2 else 0), "update")


@pytest.mark.parametrize("backend", available_backends("cpu"))
@PROFILE
@given(problem=shapes(), n_bins=st.sampled_from([2, 16, 256]),
       n_steps=st.sampled_from([None, 20]))
def test_discretised_loss_and_probs(backend, problem, n_bins, n_steps):
    generator = torch.Generator().manual_seed(problem["seed"])
    shape, dtype = problem["shape"], problem["dtype"]
    bins = torch.randint(0, n_bins, shape, generator=generator)
    x = ((2 * bins + 1) / n_bins - 1).to(dtype)
    mu_x = _tensor(generator, shape, dtype, problem["sliced"], 0.6)
    log_sigma = _tensor(generator, shape, dtype, problem["sliced"], 1.5, -2.0)
    t = _times(generator, problem)
    rtol, gtol = TOL[dtype]
    leaves = [_leaf(mu_x), _leaf(log_sigma)]
    loss = bfn.discretised_loss(x, *leaves, t, 0.05, n_bins, n_steps, backend=backend)
    grads = torch.autograd.grad(loss.sum(), leaves)
    leaves64 = [_leaf(mu_x, torch.float64), _leaf(log_sigma, torch.float64)]
    t64 = t.double() if isinstance(t, torch.Tensor) else t
    want = bfn.discretised_loss(x.double(), *leaves64, t64, 0.05, n_bins, n_steps,
                                backend="reference")
    want_grads = torch.autograd.grad(want.sum(), leaves64)
    _close(loss, want, rtol, "loss")
    for grad, want_grad, name in zip(grads, want_grads, ("mu_x", "log_sigma_x"), strict=True):
        _close(grad, want_grad, gtol, f"grad {name}")
    probs = bfn.discretised_probs(mu_x, log_sigma, n_bins, backend=backend)
    want_probs = bfn.discretised_probs(mu_x.double(), log_sigma.double(), n_bins,
                                       backend="reference")
    _close(probs, want_probs, max(rtol, 8e-3 if dtype.itemsize == 2 else 0), "probs")
