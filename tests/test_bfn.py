"""Bayesian Flow Networks: every backend against the float64 reference, distributions of the
random paths, gradients, numerics, bad inputs, torch.compile / opcheck, and the sm_90 compile of
every Triton specialisation."""

import math

import numpy as np
import pytest
import torch

import gfn_fast
from gfn_fast import bfn
from gfn_fast.reference import bfn as ref
from tests.conftest import backend_params

BACKENDS = backend_params()
F64 = torch.float64
# (dtype, relative tolerance of values, of gradients), relative to the largest magnitude.
DTYPES = [(torch.float64, 1e-9, 1e-9), (torch.float32, 2e-5, 2e-4), (torch.bfloat16, 2e-3, 2e-2),
          (torch.float16, 2e-3, 2e-2)]
DTYPE_IDS = ["f64", "f32", "bf16", "f16"]


def close(actual, expected, rtol, what=""):
    actual, expected = actual.double().cpu(), expected.double().cpu()
    scale = expected.abs().max().item() + 1e-12
    err = (actual - expected).abs().max().item()
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:.1g} * {scale:.3g}"


def _continuous(batch, dims, dtype, device):
    x = torch.rand(batch, dims, device=device).mul(2).sub(1).to(dtype)
    mu = torch.randn(batch, dims, device=device).mul(0.5).to(dtype)
    eps_hat = torch.randn(batch, dims, device=device).to(dtype)
    t = torch.rand(batch, device=device).mul(0.9).add(0.05)
    return x, mu, eps_hat, t


def _grad(loss, inputs):
    return torch.autograd.grad(loss.sum(), inputs)


# ----------------------------------------------------------------- noise-free ops vs reference

@pytest.mark.parametrize("dtype,rtol,gtol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("n_steps,x_range", [(None, None), (10, None), (None, (-1.0, 1.0))])
def test_continuous_loss_and_output(backend, device, dtype, rtol, gtol, n_steps, x_range):
    x, mu, eps_hat, t = _continuous(5, 37, dtype, device)
    eps_hat.requires_grad_(True)
    loss = bfn.continuous_loss(x, mu, eps_hat, t, 0.02, n_steps, x_range=x_range,
                               backend=backend)
    (grad,) = _grad(loss, [eps_hat])
    eps64 = eps_hat.detach().double().requires_grad_(True)
    expected = bfn.continuous_loss(x.double(), mu.double(), eps64, t.double(), 0.02, n_steps,
                                   x_range=x_range, backend="reference")
    (expected_grad,) = _grad(expected, [eps64])
    assert loss.dtype == (F64 if dtype == F64 else torch.float32) and grad.dtype == dtype
    close(loss, expected, rtol, "loss")
    close(grad, expected_grad, gtol, "grad eps_hat")
    x_hat = bfn.continuous_output(mu, eps_hat.detach(), t, 0.02, x_range=x_range,
                                  backend=backend)
    assert x_hat.dtype == dtype
    close(x_hat, ref.continuous_output(mu.double(), eps64.detach(), t.double(), 0.02, 1e-6,
                                       x_range), max(rtol, 8e-3 if dtype.itemsize == 2 else 0),
          "x_hat")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("x_range", [None, (-1.0, 1.0)])
def test_continuous_loss_op_without_saved_gradient(backend, device, x_range):
    """The loss op writes d loss / d eps_hat in its forward only when asked (want_grad, set by
    `continuous_loss` when eps_hat needs a gradient). Called directly without it, as opcheck or
    another caller may, the backward recomputes it: same gradient either way, and the same as
    the public function's."""
    x, mu, eps_hat, t = _continuous(4, 33, torch.float64, device)
    clamp = x_range is not None
    config = (0.05, 0, 1e-6, *(x_range or (0.0, 0.0)), clamp, backend)
    grads = []
    for want_grad in (False, True):
        e = eps_hat.clone().requires_grad_(True)
        loss, unit = bfn._continuous_loss_op(x, mu, e, t, *config, want_grad)
        assert unit.shape == ((4, 33) if want_grad else (0,))
        grads.append(torch.autograd.grad((loss * torch.arange(1.0, 5.0, dtype=F64,
                                                              device=device)).sum(), [e])[0])
    e = eps_hat.clone().requires_grad_(True)
    public = bfn.continuous_loss(x, mu, e, t, 0.05, x_range=x_range, backend="reference")
    (expected,) = torch.autograd.grad((public * torch.arange(1.0, 5.0, dtype=F64,
                                                             device=device)).sum(), [e])
    close(grads[0], expected, 1e-12, "grad, recomputed in the backward")
    close(grads[1], expected, 1e-12, "grad, saved by the forward")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_continuous_loss_double_backward_raises(backend, device):
    """The fused gradient is once differentiable: a second derivative must fail loudly, not come
    back without the part through eps_hat's own saved gradient (nor, added to a loss, leave it
    out: tests/test_ops.py)."""
    x, mu, eps_hat, t = _continuous(3, 7, torch.float64, device)
    eps_hat.requires_grad_(True)
    loss = bfn.continuous_loss(x, mu, eps_hat, t, 0.05, backend=backend)
    (grad,) = torch.autograd.grad(loss.pow(2).sum(), [eps_hat], create_graph=True)
    with pytest.raises(RuntimeError, match="bfn.continuous_loss is differentiable once"):
        grad.sum().backward()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_continuous_loss_second_derivative_through_the_incoming_gradient_raises(backend,
                                                                                device):
    """The loss weighted by a parameter w that eps_hat does not depend on: the gradient
    w * unit depends on w through the incoming gradient, so a penalty on it must raise when
    differentiated w.r.t. w, not leave that term out."""
    x, mu, eps_hat, t = _continuous(3, 7, torch.float64, device)
    eps_hat.requires_grad_(True)
    w = torch.tensor(1.5, dtype=torch.float64, device=device, requires_grad=True)
    total = (w * bfn.continuous_loss(x, mu, eps_hat, t, 0.05, backend=backend)).sum()
    (grad,) = torch.autograd.grad(total, [eps_hat], create_graph=True)
    with pytest.raises(RuntimeError, match="bfn.continuous_loss is differentiable once"):
        torch.autograd.grad(total + grad.pow(2).sum(), [w])


@pytest.mark.parametrize("dtype,rtol,gtol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("n_bins", [2, 16, 256])
def test_discretised_loss_and_probs(backend, device, dtype, rtol, gtol, n_bins):
    batch, dims = 4, 29
    x = ((2 * torch.randint(0, n_bins, (batch, dims), device=device) + 1) / n_bins - 1).to(dtype)
    mu_x = torch.randn(batch, dims, device=device).mul(0.6).to(dtype).requires_grad_(True)
    log_sigma = torch.randn(batch, dims, device=device).mul(2).sub(2).to(dtype).requires_grad_(True)
    t = torch.rand(batch, device=device)
    # sigma_1 = 0.05 keeps d loss / d mu_x representable in float16 (sigma_1 = 1e-3 weights the
    # loss by up to 1e6: see test_numerics_edges_finite).
    loss = bfn.discretised_loss(x, mu_x, log_sigma, t, 0.05, n_bins, backend=backend)
    grads = _grad(loss, [mu_x, log_sigma])
    mu64 = mu_x.detach().double().requires_grad_(True)
    ls64 = log_sigma.detach().double().requires_grad_(True)
    expected = ref.discretised_loss(x.double(), mu64, ls64, t.double(), 0.05, n_bins, 0)
    expected_grads = _grad(expected, [mu64, ls64])
    close(loss, expected, rtol, "loss")
    close(grads[0], expected_grads[0], gtol, "grad mu_x")
    close(grads[1], expected_grads[1], gtol, "grad log_sigma_x")
    probs = bfn.discretised_probs(mu_x.detach(), log_sigma.detach(), n_bins, backend=backend)
    assert probs.shape == (batch, dims, n_bins)
    close(probs, ref.discretised_probs(mu64.detach(), ls64.detach(), n_bins), max(rtol, 1e-6),
          "probs")


@pytest.mark.parametrize("dtype,rtol,gtol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("n_classes", [2, 27])
def test_discrete_loss_and_update(backend, device, dtype, rtol, gtol, n_classes):
    batch, dims = 3, 17
    x_index = torch.randint(0, n_classes, (batch, dims), device=device)
    logits = torch.randn(batch, dims, n_classes, device=device).mul(2).to(dtype)
    logits.requires_grad_(True)
    t = torch.rand(batch, device=device)
    loss = bfn.discrete_loss(x_index, logits, t, 0.5625, backend=backend)
    (grad,) = _grad(loss, [logits])
    l64 = logits.detach().double().requires_grad_(True)
    expected = ref.discrete_loss(x_index, l64, t.double(), 0.5625)
    (expected_grad,) = _grad(expected, [l64])
    close(loss, expected, rtol, "loss")
    close(grad, expected_grad, gtol, "grad logits")
    y = torch.randn(batch, dims, n_classes, device=device).mul(5).to(dtype)
    log_theta = torch.log_softmax(torch.randn(batch, dims, n_classes, device=device), -1).to(dtype)
    updated = bfn.discrete_update(log_theta, y, backend=backend)
    assert updated.dtype == dtype
    close(updated, ref.discrete_update(log_theta.double(), y.double()),
          max(rtol, 8e-3 if dtype.itemsize == 2 else 0), "log theta'")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("per_element", [False, True])
def test_continuous_update(backend, device, per_element):
    kw = dict(dtype=F64, device=device)
    mu, y = torch.randn(4, 3, 5, **kw), torch.randn(4, 3, 5, **kw)
    rho = torch.rand(4, 3, 5, **kw) + 0.5 if per_element else torch.rand(4, **kw) + 1
    alpha = torch.rand(4, **kw) + 0.1
    new_mu, new_rho = bfn.continuous_update(mu, rho, y, alpha, backend=backend)
    rho_b = rho if per_element else rho.reshape(4, 1, 1)
    expected_rho = rho_b + alpha.reshape(4, 1, 1)
    close(new_mu, (rho_b * mu + alpha.reshape(4, 1, 1) * y) / expected_rho, 1e-12, "mu'")
    close(new_rho, expected_rho if per_element else expected_rho.reshape(4), 1e-15, "rho'")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_updates_at_parallel_sizes(backend, device):
    """The updates over enough rows that the CPU kernels run threaded: discrete rows in blocks
    (2100 rows of [..., K], a partial last block, a row of -inf beliefs giving NaN as in the
    reference), continuous with one precision per sample (its coefficient per row) and per
    element, against the float64 reference."""
    log_theta = torch.log_softmax(torch.randn(3, 700, 7, device=device), -1)
    y = torch.randn(3, 700, 7, device=device).mul(3)
    log_theta[1, 5] = -math.inf
    updated = bfn.discrete_update(log_theta, y, backend=backend)
    expected = ref.discrete_update(log_theta.double(), y.double())
    assert torch.equal(updated.isnan(), expected.isnan()) and updated[1, 5].isnan().all()
    finite = ~expected.isnan()
    close(updated[finite], expected[finite], 1e-5, "log theta'")
    mu, y = torch.randn(64, 2000, device=device), torch.randn(64, 2000, device=device)
    alpha = torch.rand(64, device=device) + 0.1
    for rho in (torch.rand(64, device=device) + 1, torch.rand(64, 2000, device=device) + 1):
        new_mu, _ = bfn.continuous_update(mu, rho, y, alpha, backend=backend)
        rho_b = (rho if rho.dim() == 2 else rho[:, None]).double()
        a = alpha.double()[:, None]
        close(new_mu, (rho_b * mu.double() + a * y.double()) / (rho_b + a), 1e-6, "mu'")


# ----------------------------------------------------------------- random ops vs reference

def _same_draw_fraction(a, b):
    return (a == b).double().mean().item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_flows_match_reference_noise(backend, device, dtype):
    seed, offset = 2**64 - 5, 2**40 + 3
    # 2 x 2057: rows start off a Philox block boundary and span three of the Numba fill's
    # 256-block chunks, with a partial last chunk and ragged ends
    for batch, dims in ((2, 2057), (3, 41)):  # t of the last is used below
        x, _, _, t = _continuous(batch, dims, dtype, device)
        mu = bfn.continuous_flow(x, t, 0.01, seed=seed, offset=offset, backend=backend)
        expected = bfn.continuous_flow(x.double(), t.double(), 0.01, seed=seed, offset=offset,
                                       backend="reference")
        close(mu, expected, 1e-5, "continuous flow")
    x_index = torch.randint(0, 7, (3, 13), device=device)
    for log in (False, True):
        theta = bfn.discrete_flow(x_index, t, 0.5, 7, log=log, dtype=dtype, seed=seed,
                                  offset=offset, backend=backend)
        expected = bfn.discrete_flow(x_index, t.double(), 0.5, 7, log=log, dtype=F64, seed=seed,
                                     offset=offset, backend="reference")
        close(theta, expected, 1e-5, "discrete flow")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_generation_steps_match_reference_noise(backend, device, dtype):
    batch, dims, n_classes = 3, 23, 5
    kw = dict(seed=77, offset=4)
    mu = torch.randn(batch, dims, dtype=dtype, device=device)
    rho = torch.rand(batch, dtype=dtype, device=device) + 1
    eps_hat = torch.randn(batch, dims, dtype=dtype, device=device)
    states = []
    for name in (backend, "reference"):
        m, r = mu.clone().double() if name == "reference" else mu.clone(), rho.clone()
        if name == "reference":
            r = r.double()
        bfn.continuous_step(m, r, eps_hat.double() if name == "reference" else eps_hat, 0.3, 2.5,
                            0.01, x_range=(-1.0, 1.0), backend=name, **kw)
        states.append((m, r))
    close(states[0][0], states[1][0], 1e-5, "continuous step mu")
    close(states[0][1], states[1][1], 1e-7, "continuous step rho")

    mu_x = torch.randn(batch, dims, dtype=dtype, device=device) * 0.5
    log_sigma = torch.randn(batch, dims, dtype=dtype, device=device) - 2
    outs = []
    for name in (backend, "reference"):
        m, r = mu.clone(), rho.clone()
        draw = bfn.discretised_step(m, r, mu_x, log_sigma, 3.0, 16, backend=name, **kw)
        outs.append((m, draw))
    assert _same_draw_fraction(outs[0][1], outs[1][1]) > 0.98
    same = outs[0][1] == outs[1][1]
    close(outs[0][0][same], outs[1][0][same], 1e-5, "discretised step mu")
    final = bfn.discretised_step(None, None, mu_x, log_sigma, 1.0, 16, backend=backend, **kw)
    assert _same_draw_fraction(final, outs[1][1]) > 0.98

    logits = torch.randn(batch, dims, n_classes, dtype=dtype, device=device) * 2
    log_theta = torch.log_softmax(torch.randn(batch, dims, n_classes, dtype=dtype,
                                              device=device), -1)
    results = []
    for name in (backend, "reference"):
        lt = log_theta.clone()
        k = bfn.discrete_step(lt, logits, 0.7, backend=name, **kw)
        results.append((lt, k))
    same = results[0][1] == results[1][1]
    assert same.double().mean() > 0.98
    close(results[0][0][same], results[1][0][same], 1e-5, "discrete step log theta")
    assert torch.allclose(results[0][0].exp().sum(-1), torch.ones((), dtype=dtype, device=device),
                          atol=1e-5)


# (7, 5): rows of 5 normals, so a row's noise starts mid-way through a Philox block of 4
@pytest.mark.parametrize("dims,n_classes", [(7, 4), (7, 5)])
@pytest.mark.parametrize("dtype,rtol,gtol", DTYPES[:2], ids=DTYPE_IDS[:2])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nstep_discrete_loss_matches_materialised(backend, device, dtype, rtol, gtol, dims,
                                                  n_classes):
    """The K-dimensional mixture receiver computed directly ([B, D, K, K] log densities) with the
    same sender noise as the fused kernels."""
    batch, n_steps, beta_1 = 3, 20, 3.0
    x_index = torch.randint(0, n_classes, (batch, dims), device=device)
    logits = (torch.randn(batch, dims, n_classes, device=device) * 2).to(dtype)
    logits.requires_grad_(True)
    t = torch.randint(0, n_steps, (batch,), device=device).double() / n_steps
    seed, offset = 31337, 12
    loss = bfn.discrete_loss(x_index, logits, t, beta_1, n_steps, seed=seed, offset=offset,
                             backend=backend)
    (grad,) = _grad(loss, [logits])

    l64 = logits.detach().double().requires_grad_(True)
    eps = ref.philox_normals(seed, offset, (batch, dims, n_classes), device)
    i = t * n_steps + 1
    alpha = (beta_1 * (2 * i - 1) / n_steps**2).reshape(batch, 1, 1)
    eye = torch.eye(n_classes, dtype=F64, device=device)
    means = alpha.unsqueeze(-1) * (n_classes * eye - 1)  # [B,1,K,K]
    one_hot = torch.nn.functional.one_hot(x_index, n_classes).double()
    y = alpha * (n_classes * one_hot - 1) + torch.sqrt(alpha * n_classes) * eps.double()
    var = (alpha * n_classes).unsqueeze(-1)
    log_normal = -0.5 * (y.unsqueeze(-2) - means) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)
    per_class = log_normal.sum(-1)  # [B, D, K]: ln N(y | alpha (K e_k - 1), alpha K I)
    log_sender = (per_class * one_hot).sum(-1)
    log_receiver = torch.logsumexp(torch.log_softmax(l64, -1) + per_class, -1)
    expected = n_steps * (log_sender - log_receiver).sum(-1)
    (expected_grad,) = _grad(expected, [l64])
    close(loss, expected, max(rtol, 2e-5), "n-step loss")
    close(grad, expected_grad, max(gtol, 2e-5), "n-step grad")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nstep_discrete_loss_with_n_squared_past_int32(backend, device):
    """n = 10^5: n^2 > 2^31. Triton took n as an i32 and n * n wrapped (NaN at n = 46341, the
    loss off by 3x at 10^5); alpha must follow the float64 reference."""
    x_index = torch.randint(0, 4, (2, 3), device=device)
    logits = torch.randn(2, 3, 4, dtype=F64, device=device, requires_grad=True)
    l64 = logits.detach().clone().requires_grad_(True)
    for n_steps in (46341, 100_000):
        loss = bfn.discrete_loss(x_index, logits, 0.5, 2.0, n_steps, seed=1, backend=backend)
        expected = bfn.discrete_loss(x_index, l64, 0.5, 2.0, n_steps, seed=1,
                                     backend="reference")
        # float32 normals on both sides, from different float32 transcendentals: ~1e-7
        close(loss, expected, 2e-6, f"n-step loss n={n_steps}")
        close(_grad(loss, [logits])[0], _grad(expected, [l64])[0], 2e-5,
              f"n-step grad n={n_steps}")


@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference-cpu"),
                                            *BACKENDS])
@pytest.mark.parametrize("n_bins", [3, 5, 255])
def test_discretised_float64_bin_edges_of_any_bin_count(backend, device, n_bins):
    """K not a power of two: 2/K is inexact, and edges taken in float32 (Triton's 2.0 / n_bins
    of an i32) move by ~1e-8, which at sigma = 1e-3 moves a bin probability by ~1e-5. With mu
    on an edge the two bins beside it hold 1/2 each, and the loss and its gradients follow the
    exact float64 edges."""
    edge = -1.0 + 2.0 * ((n_bins + 1) // 2) / n_bins
    mu_x = torch.tensor([[edge, 0.1]], dtype=F64, device=device)
    log_sigma = torch.full((1, 2), math.log(1e-3), dtype=F64, device=device)
    probs = bfn.discretised_probs(mu_x, log_sigma, n_bins, backend=backend)[0, 0].cpu()
    k = (n_bins + 1) // 2
    assert probs[k - 1].item() == pytest.approx(0.5, abs=1e-12)
    assert probs[k].item() == pytest.approx(0.5, abs=1e-12)
    # the loss a little off the edge (on it, d x_hat / d log_sigma vanishes by symmetry)
    mu_x = mu_x + torch.tensor([[3e-4, 0.0]], dtype=F64, device=device)
    x = torch.tensor([[edge + 1.0 / n_bins, 1.0 / n_bins]], dtype=F64, device=device)
    m = mu_x.clone().requires_grad_(True)
    s = log_sigma.clone().requires_grad_(True)
    loss = bfn.discretised_loss(x, m, s, 0.5, 0.1, n_bins, backend=backend)
    m64, s64 = mu_x.cpu().requires_grad_(True), log_sigma.cpu().requires_grad_(True)
    expected = ref.discretised_loss(x.cpu(), m64, s64, torch.tensor([0.5], dtype=F64), 0.1,
                                    n_bins, 0)
    close(loss, expected, 1e-9, "loss")
    for g, e, what in zip(_grad(loss, [m, s]), _grad(expected, [m64, s64]), ("mu", "log_sigma"),
                          strict=True):
        close(g, e, 1e-9, f"grad {what}")


def test_nstep_loss_estimates_the_kl():
    """Averaged over noise, L_n / n is the KL between sender and receiver, >= 0, and 0 when the
    network predicts x with certainty... approximately: check positivity and the exact limit."""
    x_index = torch.randint(0, 3, (64, 50))
    perfect = torch.nn.functional.one_hot(x_index, 3).double() * 40.0
    t = torch.full((64,), 0.5, dtype=F64)
    loss = bfn.discrete_loss(x_index, perfect, t, 2.0, 10, seed=1, backend="numba")
    assert loss.abs().max() < 1e-6
    uniform = torch.zeros(64, 50, 3, dtype=F64)
    assert bfn.discrete_loss(x_index, uniform, t, 2.0, 10, seed=1, backend="numba").mean() > 0


# ------------------------------------------------------------------- randomness: distribution

def test_continuous_flow_moments_numba():
    """mu ~ N(gamma x, gamma (1 - gamma)): z-tests of the mean and variance over 10^6 draws."""
    n = 1 << 20
    sigma_1, t_value = 0.02, 0.37
    x = torch.full((4, n // 4), 0.3, dtype=F64)
    mu = bfn.continuous_flow(x, t_value, sigma_1, seed=2024, backend="numba")
    g = 1 - sigma_1 ** (2 * t_value)
    mean, var = g * 0.3, g * (1 - g)
    z_mean = (mu.mean().item() - mean) / math.sqrt(var / n)
    sample_var = mu.var().item()
    z_var = (sample_var - var) / (var * math.sqrt(2.0 / n))
    assert abs(z_mean) < 5 and abs(z_var) < 5, (z_mean, z_var)


def test_discrete_flow_mean_numba():
    """K = 2: theta_x = sigmoid(y_x - y_other), y_x - y_other ~ N(2 beta, 4 beta), so
    E[theta_x] = E[sigmoid(N(2 beta, 4 beta))] (Gauss-Hermite quadrature); t = 0 gives 1/K."""
    n = 1 << 20
    beta_1, t_value = 9.0, 0.3
    beta = beta_1 * t_value**2
    x_index = torch.zeros(8, n // 8, dtype=torch.int64)
    theta = bfn.discrete_flow(x_index, t_value, beta_1, 2, dtype=F64, seed=5, backend="numba")
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    values = 1 / (1 + np.exp(-(2 * beta + math.sqrt(4 * beta) * nodes)))
    expected = float((weights * values).sum() / weights.sum())
    second = float((weights * values**2).sum() / weights.sum())
    sample = theta[..., 0]
    z = (sample.mean().item() - expected) / math.sqrt((second - expected**2) / n)
    assert abs(z) < 5, z
    assert torch.allclose(bfn.discrete_flow(x_index[:, :10], 0.0, beta_1, 2, dtype=F64, seed=1,
                                            backend="numba"), torch.tensor(0.5, dtype=F64))


def test_discrete_step_draw_frequencies_numba():
    probs = torch.tensor([0.05, 0.6, 0.1, 0.25], dtype=F64)
    n = 200_000
    logits = probs.log().expand(1, n, 4).contiguous()
    k = bfn.discrete_step(None, logits, 1.0, seed=3, backend="numba")
    counts = torch.bincount(k.reshape(-1), minlength=4).double()
    chi2 = (((counts - n * probs) ** 2) / (n * probs)).sum().item()
    assert chi2 < 20, chi2  # 3 degrees of freedom


def test_discretised_draw_frequencies_numba():
    n, n_bins = 200_000, 8
    mu_x = torch.full((1, n), 0.1, dtype=F64)
    log_sigma = torch.full((1, n), math.log(0.4), dtype=F64)
    centres = bfn.discretised_step(None, None, mu_x, log_sigma, 1.0, n_bins, seed=8,
                                   backend="numba")
    k = ((centres + 1) * n_bins / 2 - 0.5).round().long().reshape(-1)
    counts = torch.bincount(k, minlength=n_bins).double()
    probs = ref.discretised_probs(mu_x[:, :1], log_sigma[:, :1], n_bins).reshape(-1)
    chi2 = (((counts - n * probs) ** 2) / (n * probs)).sum().item()
    assert chi2 < 30, chi2  # 7 degrees of freedom


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_generator_reproducible_and_advances(backend, device):
    x = torch.randn(2, 9, device=device)
    gen = torch.Generator(device=device).manual_seed(4)
    first = bfn.continuous_flow(x, 0.5, 0.1, generator=gen, backend=backend)
    second = bfn.continuous_flow(x, 0.5, 0.1, generator=gen, backend=backend)
    gen.manual_seed(4)
    again = bfn.continuous_flow(x, 0.5, 0.1, generator=gen, backend=backend)
    assert torch.equal(first, again) and not torch.equal(first, second)


# ----------------------------------------------------------------------------------- gradcheck

@pytest.mark.parametrize("backend", ["reference", "numba", "triton"])
def test_gradcheck(backend):
    x, mu, eps_hat, t = _continuous(2, 5, F64, "cpu")
    eps_hat.requires_grad_(True)
    for n_steps in (None, 7):
        assert torch.autograd.gradcheck(
            lambda e, n=n_steps: bfn.continuous_loss(x, mu, e, t, 0.05, n, backend=backend),
            (eps_hat,))
    mu_x = (torch.randn(2, 5, dtype=F64) * 0.5).requires_grad_(True)
    log_sigma = (torch.randn(2, 5, dtype=F64) - 1).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda m, s: bfn.discretised_loss(x, m, s, t, 0.05, 16, backend=backend),
        (mu_x, log_sigma))
    x_index = torch.randint(0, 4, (2, 3))
    logits = torch.randn(2, 3, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda lg: bfn.discrete_loss(x_index, lg, t, 0.7, backend=backend), (logits,))
    assert torch.autograd.gradcheck(
        lambda lg: bfn.discrete_loss(x_index, lg, t, 0.7, 12, seed=3, backend=backend),
        (logits,))


# ------------------------------------------------------------------------------------ numerics

@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gamma_where_sigma_1_to_the_2t_underflows(backend, device):
    """gamma = -expm1(2 t ln sigma_1) = 1 where sigma_1^(2t) underflows (float32, sigma_1 = 1e-25
    at t = 1): Triton's expm1 gave 0 there, so x_hat was NaN and the flow 0 instead of x."""
    kw = dict(dtype=torch.float32, device=device)
    mu, eps_hat = torch.tensor([[0.5, -0.25]], **kw), torch.tensor([[0.1, 0.2]], **kw)
    x = torch.tensor([[0.3, -0.7]], **kw)
    for out, expected in (
            (bfn.continuous_output(mu, eps_hat, 1.0, 1e-25, backend=backend), mu),
            (bfn.continuous_flow(x, 1.0, 1e-25, seed=1, backend=backend), x)):
        torch.testing.assert_close(out.cpu(), expected.cpu(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference-cpu"),
                                            *BACKENDS])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_discretised_clamped_sigma_has_zero_gradient(backend, device, dtype):
    """sigma = clamp(exp(log_sigma), 1e-3, 10): no gradient to log_sigma beyond either end, also
    where exp overflows (log_sigma = 100 in float32, where the reference's clamp backward gave
    0 * inf = NaN), and a finite one to mu_x."""
    x = torch.tensor([[0.5, -0.5, 0.25]], dtype=dtype, device=device)
    mu_x = torch.tensor([[0.1, 0.2, 0.3]], dtype=dtype, device=device, requires_grad=True)
    log_sigma = torch.tensor([[100.0, -30.0, 1e4]], dtype=dtype, device=device,
                             requires_grad=True)
    loss = bfn.discretised_loss(x, mu_x, log_sigma, 0.5, 0.1, 16, backend=backend)
    grad_mu, grad_log_sigma = _grad(loss, [mu_x, log_sigma])
    assert torch.isfinite(loss).all() and torch.isfinite(grad_mu).all()
    assert (grad_log_sigma == 0).all(), grad_log_sigma



@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["f32", "f16", "bf16"])
def test_numerics_edges_finite(backend, device, dtype):
    batch, dims = 5, 16
    x, mu, eps_hat, _ = _continuous(batch, dims, dtype, device)
    t = torch.tensor([0.0, 1e-6, 0.5e-6, 1.0, 0.999], device=device)
    for sigma_1 in (1e-3, 0.5):
        loss = bfn.continuous_loss(x, mu, eps_hat.requires_grad_(True), t, sigma_1,
                                   backend=backend)
        (grad,) = _grad(loss, [eps_hat])
        assert torch.isfinite(loss).all()
        # In float16, d/d eps_hat overflows where the math exceeds 65504: at t = t_min (x_hat
        # amplifies eps_hat ~1e3 times) and at t = 1 for sigma_1 = 1e-3 (weight ~1e7).
        rows = [0, 2, 4] if dtype == torch.float16 else list(range(5))
        if dtype != torch.float16 or sigma_1 > 0.1:
            assert torch.isfinite(grad[rows].float()).all()
        assert loss[3].item() > 0  # sigma_1^(-2) weight at t = 1 kept in float32
        x_hat = bfn.continuous_output(mu, eps_hat.detach(), t, sigma_1, backend=backend)
        finite_rows = [0, 2, 3, 4] if dtype == torch.float16 else list(range(5))
        assert (x_hat[0] == 0).all() and (x_hat[2] == 0).all()
        assert torch.isfinite(x_hat[finite_rows]).all()
        flow = bfn.continuous_flow(x, t, sigma_1, seed=1, backend=backend)
        assert torch.isfinite(flow).all() and (flow[0] == 0).all()
    mu_x = torch.randn(batch, dims, device=device).to(dtype).requires_grad_(True)
    log_sigma = torch.full((batch, dims), -30.0, device=device).to(dtype).requires_grad_(True)
    loss = bfn.discretised_loss(x, mu_x, log_sigma, t, 1e-3, 256, backend=backend)
    grads = _grad(loss, [mu_x, log_sigma])
    assert torch.isfinite(loss).all()
    if dtype == torch.float32:  # in half precision d/d mu_x (~1e9 here) is not representable
        assert torch.isfinite(grads[0]).all()
    assert (grads[1] == 0).all()  # sigma clamped at 1e-3: no gradient
    # large alpha: the precision-weighted mean stays finite and lands on y
    new_mu, new_rho = bfn.continuous_update(mu, 1.0, x, 1e30, backend=backend)
    close(new_mu, x.double(), 1e-2)
    # log-space discrete update with huge sender logits
    y = torch.randn(batch, dims, 27, device=device).mul(1e4).to(dtype)
    log_theta = torch.full((batch, dims, 27), -math.log(27), device=device).to(dtype)
    updated = bfn.discrete_update(log_theta, y, backend=backend)
    assert torch.isfinite(updated.float()).all() and (updated <= 0).all()
    logits = torch.randn(batch, dims, 27, device=device).mul(50).to(dtype)
    x_index = torch.randint(0, 27, (batch, dims), device=device)
    assert torch.isfinite(bfn.discrete_loss(x_index, logits, t, 0.5625, backend=backend)).all()
    big = bfn.discrete_loss(x_index, logits, t, 0.5625, 1000, seed=1, backend=backend)
    assert torch.isfinite(big).all()
    theta = bfn.discrete_flow(x_index, t, 100.0, 27, seed=3, backend=backend)
    assert torch.isfinite(theta).all() and torch.allclose(theta.sum(-1),
                                                          torch.ones((), device=device))


# --------------------------------------------------------------------------------- generation

class _ToyContinuous(torch.nn.Module):
    def forward(self, mu, t):
        return torch.tanh(mu) * (1 - t.reshape(-1, *([1] * (mu.dim() - 1))))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_generate_all_kinds(backend, device):
    shape = (3, 2, 5)
    out = {}
    for name in (backend, "reference"):
        out[name] = (
            bfn.generate(_ToyContinuous().to(device), shape, 8, kind="continuous", sigma_1=0.02,
                         seed=9, x_range=(-1.0, 1.0), device=device, backend=name),
            bfn.generate(lambda mu, t: (mu * 0.9, torch.full_like(mu, -2.0)), shape, 8,
                         kind="discretised", sigma_1=0.02, n_bins=16, seed=9, device=device,
                         backend=name),
            bfn.generate(lambda theta, t: torch.log(theta) * 2, shape, 8, kind="discrete",
                         n_classes=4, beta_1=3.0, seed=9, device=device, backend=name),
        )
    cont, disc, cat = out[backend]
    assert cont.shape == shape and torch.isfinite(cont).all() and cont.abs().max() <= 1
    close(cont, out["reference"][0], 1e-4, "continuous generation")
    assert disc.shape == shape and _same_draw_fraction(disc, out["reference"][1]) > 0.9
    assert cat.shape == shape and cat.dtype == torch.int64 and 0 <= cat.min() and cat.max() < 4
    assert _same_draw_fraction(cat, out["reference"][2]) > 0.9


# ------------------------------------------------------------- NaN, t < t_min, edges, offsets

@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference-cpu"),
                                            *BACKENDS])
def test_nan_propagates_through_the_clamps(backend, device):
    """A NaN network output gives NaN, never a finite loss, gradient or sample: the x_range
    clamp, the sigma clamp and the bin clamp must keep it (tl.maximum / tl.minimum drop it)."""
    kw = dict(dtype=F64, device=device)
    x, mu = torch.full((1, 3), 0.5, **kw), torch.zeros(1, 3, **kw)
    nan_at_1 = torch.tensor([[0.1, math.nan, 0.2]], **kw)
    eps_hat = nan_at_1.clone().requires_grad_(True)
    loss = bfn.continuous_loss(x, mu, eps_hat, 0.5, 0.1, x_range=(-1.0, 1.0), backend=backend)
    (grad,) = _grad(loss, [eps_hat])
    # (the NaN element's own gradient is NaN on the kernels and 0 through torch.clamp's backward)
    assert loss.isnan().all() and grad[0, [0, 2]].isfinite().all()
    x_hat = bfn.continuous_output(mu, nan_at_1, 0.5, 0.1, x_range=(-1.0, 1.0), backend=backend)
    assert x_hat[0, 1].isnan() and x_hat[0, [0, 2]].isfinite().all()
    bins = torch.full((1, 3), 1.0 / 16 - 1, **kw)  # a bin centre of 16 bins
    for mu_x, log_sigma in ((nan_at_1, torch.zeros(1, 3, **kw)), (mu, nan_at_1)):
        assert bfn.discretised_loss(bins, mu_x, log_sigma, 0.5, 0.1, 16,
                                    backend=backend).isnan().all()
        probs = bfn.discretised_probs(mu_x, log_sigma, 16, backend=backend)
        assert probs[0, 1].isnan().all() and probs[0, [0, 2]].isfinite().all()
        draw = bfn.discretised_step(None, None, mu_x, log_sigma, 1.0, 16, seed=3,
                                    backend=backend)
        assert draw[0, 1].isnan() and draw[0, [0, 2]].isfinite().all()
    state, rho = torch.zeros(1, 3, **kw), torch.ones(1, **kw)
    bfn.continuous_step(state, rho, nan_at_1, 0.5, 2.0, 0.1, x_range=(-1.0, 1.0), seed=3,
                        backend=backend)
    assert state[0, 1].isnan() and state[0, [0, 2]].isfinite().all()


@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference-cpu"),
                                            *BACKENDS])
def test_discrete_step_draws_the_same_class_for_nan_rows_on_every_backend(backend, device):
    """A row of logits holding a NaN has no distribution to draw from; every backend draws
    class 0 there (Numba and CUDA drew K - 1 where the reference and Triton drew 0) and the
    other rows draw as on the reference. The update only reads the drawn class, so every row's
    state stays finite."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 4, 6, generator=gen, dtype=F64)
    logits[0, 1, 2] = math.nan
    logits[2, 3] = math.nan  # a whole row
    logits = logits.to(device)
    log_theta = torch.full((3, 4, 6), -math.log(6), dtype=F64, device=device)
    draw = bfn.discrete_step(log_theta, logits, 1.5, seed=11, backend=backend)
    expected = bfn.discrete_step(None, logits.cpu(), 1.5, seed=11, backend="reference")
    assert draw[0, 1] == 0 and draw[2, 3] == 0
    assert torch.equal(draw.cpu(), expected)
    assert log_theta.isfinite().all()


@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference-cpu"),
                                            *BACKENDS])
def test_x_hat_is_zero_below_t_min_whatever_the_network_says(backend, device):
    """x_hat = 0 where t < t_min (spec): an inf or NaN eps_hat there must not give 0 * inf."""
    kw = dict(dtype=F64, device=device)
    mu, x = torch.zeros(2, 3, **kw), torch.full((2, 3), 0.5, **kw)
    eps_hat = torch.tensor([[math.inf, -math.inf, math.nan], [1.0, 2.0, 3.0]], **kw)
    t = torch.tensor([0.0, 0.5], **kw)
    x_hat = bfn.continuous_output(mu, eps_hat, t, 0.1, backend=backend)
    assert (x_hat[0] == 0).all() and x_hat[1].isfinite().all()
    loss = bfn.continuous_loss(x, mu, eps_hat, t, 0.1, backend=backend)
    assert loss[0].item() == pytest.approx(-math.log(0.1) * 3 * 0.25) and loss[1].isfinite()
    state, rho = mu.clone(), torch.ones(2, **kw)
    bfn.continuous_step(state, rho, eps_hat, 0.0, 1e6, 0.1, seed=5, backend=backend)
    assert state.isfinite().all() and state.abs().max() < 0.1  # y = 0 + N(0, 1e-6) noise


@pytest.mark.parametrize("kind", ["continuous", "discretised", "discrete"])
def test_generate_offsets_stay_inside_what_the_generator_is_advanced_by(monkeypatch, kind):
    """generate takes one (seed, offset) advancing a generator by n + 1 offset steps (4 each);
    its n + 1 noisy calls must use exactly those offsets, so that the next generator-driven
    call draws fresh noise (the final draw once sat at the next call's first offset)."""
    from gfn_fast import _rng
    seen, increments = [], []
    real_seed_offset = _rng.seed_offset

    def seed_offset(op, device, generator=None, seed=None, offset=None, increment=1):
        if op == "generate":
            increments.append(increment)
        elif offset is not None:
            seen.append(offset)
        return real_seed_offset(op, device, generator, seed, offset, increment)

    monkeypatch.setattr(_rng, "seed_offset", seed_offset)
    models = {"continuous": lambda mu, t: torch.zeros_like(mu),
              "discretised": lambda mu, t: (mu, torch.full_like(mu, -2.0)),
              "discrete": lambda theta, t: torch.log(theta)}
    extra = {"n_classes": 3} if kind == "discrete" else {}
    bfn.generate(models[kind], (2, 4), 5, kind=kind, seed=1, offset=40, **extra)
    used = seen if kind != "continuous" else seen + [40 + 4 * 5]  # its final call draws nothing
    assert increments == [6] and sorted(used) == [40 + 4 * i for i in range(6)]


def test_generate_keeps_no_graph():
    """Sampling is not trained through: whatever the model's parameters, the result carries no
    graph on any backend (the reference path used to chain one across all the steps)."""
    net = torch.nn.Linear(4, 4)
    for backend in ("reference", "numba"):
        out = bfn.generate(lambda mu, t: net(mu), (2, 4), 3, seed=1, backend=backend)
        assert not out.requires_grad and out.grad_fn is None


@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference-cpu"),
                                            *BACKENDS])
def test_ops_without_gradient_agree_on_every_backend(backend, device):
    """Only the losses are differentiable (w.r.t. the network outputs). The other ops give
    outputs without a graph on every backend, the reference included, so that switching backend
    never silently changes which gradients flow."""
    def leaf(*shape):
        return torch.randn(*shape, dtype=F64, device=device, requires_grad=True)
    t = torch.tensor([0.3, 0.6], dtype=F64, device=device, requires_grad=True)
    index = torch.randint(0, 4, (2, 3), device=device)
    outputs = [bfn.continuous_output(leaf(2, 3), leaf(2, 3), t, 0.1, backend=backend),
               *bfn.continuous_update(leaf(2, 3), leaf(2).detach().abs() + 1, leaf(2, 3), 1.0,
                                      backend=backend),
               bfn.continuous_flow(leaf(2, 3), t, 0.1, seed=1, backend=backend),
               bfn.discrete_flow(index, t, 1.0, 4, seed=1, backend=backend),
               bfn.discrete_update(leaf(2, 3, 4), leaf(2, 3, 4), backend=backend),
               bfn.discretised_probs(leaf(2, 3), leaf(2, 3), 8, backend=backend)]
    assert not any(out.requires_grad for out in outputs)
    x = leaf(2, 3)
    losses = [bfn.continuous_loss(x, leaf(2, 3), leaf(2, 3), t, 0.1, backend=backend),
              bfn.discretised_loss(x, leaf(2, 3), leaf(2, 3), t, 0.1, 8, backend=backend),
              bfn.discrete_loss(index, leaf(2, 3, 4), t, 1.0, backend=backend)]
    grads = torch.autograd.grad(sum(loss.sum() for loss in losses), [x, t], allow_unused=True)
    assert grads == (None, None)  # data and time are not differentiated


@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference-cpu"),
                                            *BACKENDS])
@pytest.mark.parametrize("margin", [8.0, 20.0, 30.0])
def test_discrete_loss_keeps_its_digits_when_confident(backend, device, margin):
    """One logit `margin` above K - 1 zeros: loss and gradient against closed forms written
    without cancellation (p_o = 1 / (e^m + K - 1) for the others, q = (K - 1) p_o = 1 - p_x).
    The kernels used to form 1 - p_x, or sum e^2 / s^2 - 2 e_x / s + 1: at m = 30 the loss was
    0 or 3e-4 off in float64."""
    n_classes, t, beta_1 = 5, 0.7, 1.0
    logits = torch.zeros(1, 1, n_classes, dtype=F64, device=device)
    logits[0, 0, 2] = margin
    logits.requires_grad_(True)
    index = torch.tensor([[2]], device=device)
    loss = bfn.discrete_loss(index, logits, t, beta_1, backend=backend)
    (grad,) = _grad(loss, [logits])
    p_o = 1.0 / (math.exp(margin) + n_classes - 1)
    p_x, q = math.exp(margin) * p_o, (n_classes - 1) * p_o
    scale = n_classes * beta_1 * t
    sum_sq = (n_classes - 1) * p_o * p_o
    assert loss.item() == pytest.approx(scale * (sum_sq + q * q), rel=1e-12, abs=0)
    expected = torch.full((n_classes,), 2 * scale * p_o * (p_o + q * p_x - sum_sq), dtype=F64)
    expected[2] = -2 * scale * p_x * (sum_sq + q * q)
    torch.testing.assert_close(grad.reshape(-1).cpu(), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend,device", [
    pytest.param("reference", "cpu", id="reference-cpu"),
    *[b for b in BACKENDS if "triton" not in b.id]])
def test_discretised_probs_far_tail_keeps_relative_precision(backend, device):
    """Bins right of the mean are differences of upper tails (the docstring: all but Triton):
    against Phi computed from math.erfc, bins down to 1e-54 keep 1e-12 relative precision."""
    mu, sigma, n_bins = -0.9, 0.05, 16
    probs = bfn.discretised_probs(torch.tensor([mu], dtype=F64, device=device),
                                  torch.tensor([math.log(sigma)], dtype=F64, device=device),
                                  n_bins, backend=backend).reshape(-1).cpu()

    def upper(edge):
        return 0.5 * math.erfc((edge - mu) / sigma / math.sqrt(2.0))
    for k in range(2, 8):
        left, right = -1 + 2 * k / n_bins, -1 + 2 * (k + 1) / n_bins
        exact = upper(left) - upper(right)
        assert 0 < exact < 2e-3 and probs[k].item() == pytest.approx(exact, rel=1e-12, abs=0)


@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference-cpu"),
                                            *BACKENDS])
def test_empty_dimensions_and_rho_shapes(backend, device):
    """D = 0 gives empty outputs (zero losses), and continuous_update's rho' keeps rho's shape."""
    kw = dict(dtype=F64, device=device)
    empty = torch.zeros(2, 0, **kw)
    mu_new, rho_new = bfn.continuous_update(empty, 1.0, empty, 1.0, backend=backend)
    assert mu_new.shape == (2, 0) and rho_new.tolist() == [2.0, 2.0]
    index, logits = torch.zeros(2, 0, dtype=torch.int64, device=device), torch.zeros(2, 0, 4, **kw)
    assert bfn.discrete_loss(index, logits, 0.5, 1.0, backend=backend).tolist() == [0.0, 0.0]
    assert bfn.discrete_loss(index, logits, 0.5, 1.0, 10, seed=1,
                             backend=backend).tolist() == [0.0, 0.0]
    mu, y = torch.randn(3, 1, **kw), torch.randn(3, 1, **kw)
    for rho, shape in ((torch.ones(3, 1, **kw), (3, 1)), (torch.ones(3, **kw), (3,)),
                       (2.0, (3,)), (torch.tensor(2.0, **kw), (3,))):
        assert bfn.continuous_update(mu, rho, y, 0.5, backend=backend)[1].shape == shape
    mu = torch.randn(3, 2, 2, **kw)
    rho_new = bfn.continuous_update(mu, torch.ones(3, 1, 1, **kw), mu, 0.5, backend=backend)[1]
    assert rho_new.shape == (3, 1, 1)


# ---------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call,exc,arg", [
    (lambda x: bfn.continuous_loss(x, x, x, 1.5, 0.1), ValueError, "t"),
    (lambda x: bfn.continuous_loss(x, x, x, torch.tensor([0.1, -0.2]), 0.1), ValueError, "t"),
    (lambda x: bfn.continuous_loss(x, x, x, torch.tensor([0.1, math.nan]), 0.1), ValueError, "t"),
    (lambda x: bfn.continuous_flow(x, torch.tensor([math.nan, 0.1]), 0.1, seed=1), ValueError,
     "t"),
    (lambda x: bfn.continuous_loss(x, x, x, 0.5, 1.0), ValueError, "sigma_1"),
    (lambda x: bfn.continuous_loss(x, x, x, 0.5, 0.0), ValueError, "sigma_1"),
    (lambda x: bfn.continuous_loss(x, x[:, :2], x, 0.5, 0.1), ValueError, "mu"),
    (lambda x: bfn.continuous_loss(x, x.to("meta"), x, 0.5, 0.1), ValueError, "mu"),
    (lambda x: bfn.continuous_loss(x, x.long(), x, 0.5, 0.1), TypeError, "mu"),
    (lambda x: bfn.continuous_loss(x, x, x, torch.tensor([1, 0]), 0.1), TypeError, "t"),
    (lambda x: bfn.gamma(torch.tensor([1, 0]), 0.1), TypeError, "t"),
    (lambda x: bfn.beta(torch.tensor([1, 0]), 0.5), TypeError, "t"),
    (lambda x: bfn.continuous_loss(x, x, x, 0.5, 0.1, 0), ValueError, "n_steps"),
    (lambda x: bfn.continuous_flow(x, 0.5, 2.0, seed=1), ValueError, "sigma_1"),
    (lambda x: bfn.continuous_update(x, 1.0, x, 0.0), ValueError, "alpha"),
    (lambda x: bfn.continuous_update(x, 1.0, x, torch.tensor([1.0, -1.0])), ValueError, "alpha"),
    (lambda x: bfn.continuous_update(x, 1.0, x, torch.tensor([1.0, math.nan])), ValueError,
     "alpha"),
    (lambda x: bfn.discretised_loss(x, x, x, 0.5, 0.1, 1), ValueError, "n_bins"),
    (lambda x: bfn.discrete_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, 4), 0.5,
                                 0.0), ValueError, "beta_1"),
    (lambda x: bfn.discrete_loss(torch.full((2, 3), 4), torch.zeros(2, 3, 4), 0.5, 1.0),
     ValueError, "x_index"),
    (lambda x: bfn.discrete_loss(torch.full((2, 3), -1), torch.zeros(2, 3, 4), 0.5, 1.0),
     ValueError, "x_index"),
    (lambda x: bfn.discrete_loss(torch.zeros(2, 3), torch.zeros(2, 3, 4), 0.5, 1.0), TypeError,
     "x_index"),
    (lambda x: bfn.discrete_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, 4), 0.5,
                                 1.0), ValueError, "logits_out"),
    (lambda x: bfn.discrete_flow(torch.full((2, 3), 5), 0.5, 1.0, 5, seed=1), ValueError,
     "x_index"),
    (lambda x: bfn.discrete_flow(torch.zeros(2, 3, dtype=torch.long), 0.5, -1.0, 5, seed=1),
     ValueError, "beta_1"),
    (lambda x: bfn.discrete_step(None, torch.zeros(2, 3, 4), -1.0, seed=1), ValueError, "alpha"),
    (lambda x: bfn.discrete_update(torch.zeros(2, 3), torch.zeros(2, 4)), ValueError, "y"),
    (lambda x: bfn.generate(lambda *a: a[0], (2, 3), 4, kind="bogus"), ValueError, "kind"),
    (lambda x: bfn.discretised_step(x.to("meta"), torch.ones(2, device="meta"), x, x, 1.0, 16,
                                    seed=1), ValueError, "mu"),
    (lambda x: bfn.discretised_step(None, None, x, x, 1.0, 16, draw=x.to("meta"), seed=1),
     ValueError, "draw"),
    (lambda x: bfn.discrete_step(None, torch.randn(2, 3, 4), 1.0,
                                 draw=torch.zeros(2, 3, dtype=torch.int64, device="meta"), seed=1),
     ValueError, "draw"),
])
def test_bad_input(call, exc, arg):
    x = torch.randn(2, 3)
    with pytest.raises(exc, match=f"`{arg}`"):
        call(x)


def _step_call(step, backend, state, rho, draw):
    """One generation step on small CPU inputs, writing into state, rho and draw (where given)."""
    if step == "continuous_step":
        return bfn.continuous_step(state, rho, torch.randn(2, 3), 0.5, 2.0, 0.1, seed=1,
                                   backend=backend)
    if step == "discretised_step":
        return bfn.discretised_step(state, rho, torch.randn(2, 3), torch.randn(2, 3), 2.0, 16,
                                    draw=draw, seed=1, backend=backend)
    return bfn.discrete_step(state, torch.randn(2, 3, 4), 2.0, seed=1, backend=backend)


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("step", ["continuous_step", "discretised_step"])
@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan])
def test_steps_refuse_precisions_that_are_not_positive(backend, step, bad):
    """rho is a precision: mu' = mu + alpha / (rho + alpha) (y - mu) is silently wrong for
    rho <= 0 (infinite at rho = -alpha) and NaN for a NaN. The steps refuse it before writing
    anything, unless the value checks are off; generate, which makes rho itself, skips the
    check (it would be a host sync per step on a GPU) and samples as before."""
    state, rho = torch.randn(2, 3), torch.tensor([1.0, bad])
    before = state.clone()
    with pytest.raises(ValueError, match="`rho` must be > 0"):
        _step_call(step, backend, state, rho, torch.zeros(2, 3))
    assert torch.equal(state, before) and rho[0].item() == 1.0
    with gfn_fast.validation(False):
        _step_call(step, backend, state, rho, torch.zeros(2, 3))
    assert not torch.equal(state, before)
    kind = step.split("_")[0]
    model = ((lambda mu, t: torch.zeros_like(mu)) if kind == "continuous" else
             (lambda mu, t: (mu, torch.full_like(mu, -2.0))))
    sample = bfn.generate(model, (2, 3), 5, kind=kind, seed=3, backend=backend)
    assert sample.shape == (2, 3) and torch.isfinite(sample).all()


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("step,arg", [
    ("continuous_step", "mu"), ("continuous_step", "rho"), ("discretised_step", "mu"),
    ("discretised_step", "rho"), ("discretised_step", "draw"), ("discrete_step", "log_theta")])
@pytest.mark.parametrize("leaf", [True, False], ids=["leaf", "non_leaf"])
def test_steps_refuse_to_write_into_tensors_autograd_tracks(backend, step, arg, leaf):
    """A step has no gradient: writing into a tensor that requires grad either changed a leaf
    behind autograd's back (the Numba path raised nothing) or kept a non-leaf's graph of its old
    values, so gradients through it came out silently wrong. Under no_grad both are allowed, as
    for torch's own in-place ops."""
    tensors = {"rho": None if step == "discrete_step" else torch.ones(2),
               "draw": torch.zeros(2, 3) if step == "discretised_step" else None,
               "state": (torch.randn(2, 3, 4).log_softmax(-1) if step == "discrete_step"
                         else torch.randn(2, 3))}
    key = arg if arg in tensors else "state"
    source = tensors[key].clone().requires_grad_(True)
    tensors[key] = source if leaf else source * 1.0
    before = {k: v.detach().clone() for k, v in tensors.items() if v is not None}
    with pytest.raises(ValueError, match=f"`{arg}` is written in place .* requires grad"):
        _step_call(step, backend, **tensors)
    for k, v in before.items():  # refused before anything was written
        assert torch.equal(tensors[k].detach(), v), k
    with torch.no_grad():
        _step_call(step, backend, **tensors)
    assert not torch.equal(tensors["state"].detach(), before["state"])


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("step,arg", [
    ("continuous_step", "mu"), ("continuous_step", "rho"), ("discretised_step", "mu"),
    ("discretised_step", "rho"), ("discretised_step", "draw"), ("discrete_step", "log_theta")])
def test_steps_refuse_inference_tensors_outside_inference_mode(backend, step, arg):
    """torch refuses an in-place update of a tensor made under inference_mode once outside it;
    the Numba steps wrote into one through NumPy (the reference raised torch's error, after
    writing mu: continuous_step failed at rho.add_). Both refuse before writing now, and take
    it inside inference_mode."""
    with torch.inference_mode():
        tensors = {"rho": None if step == "discrete_step" else torch.ones(2),
                   "draw": torch.zeros(2, 3) if step == "discretised_step" else None,
                   "state": (torch.randn(2, 3, 4).log_softmax(-1) if step == "discrete_step"
                             else torch.randn(2, 3))}
    key = arg if arg in tensors else "state"
    for k in tensors:  # only `arg` is an inference tensor
        if k != key and tensors[k] is not None:
            tensors[k] = tensors[k].clone()
    before = {k: v.clone() for k, v in tensors.items() if v is not None}
    with pytest.raises(ValueError, match=f"`{arg}` is an inference tensor"):
        _step_call(step, backend, **tensors)
    for k, v in before.items():
        assert torch.equal(tensors[k], v), k
    with torch.inference_mode():
        _step_call(step, backend, **tensors)
    assert not torch.equal(tensors["state"], before["state"])


# ------------------------------------------------------------------------ compile and opcheck

def test_opcheck_custom_ops():
    from torch.library import opcheck

    x, mu, eps_hat, t = _continuous(3, 6, torch.float32, "cpu")
    eps_hat.requires_grad_(True)
    cfg = (0.05, 0, 1e-6, 0.0, 0.0, False, "numba")
    opcheck(torch.ops.gfn_fast.bfn_continuous_loss_fwd.default, (x, mu, eps_hat, t, *cfg))
    opcheck(torch.ops.gfn_fast.bfn_continuous_output.default,
            (mu, eps_hat.detach(), t, 0.05, 1e-6, -1.0, 1.0, True, "numba"))
    log_sigma = torch.randn(3, 6).requires_grad_(True)
    opcheck(torch.ops.gfn_fast.bfn_discretised_loss_fwd.default,
            (x, mu.requires_grad_(True), log_sigma, t, 0.05, 0, 16, "numba"))
    x_index = torch.randint(0, 5, (3, 4))
    logits = torch.randn(3, 4, 5, requires_grad=True)
    opcheck(torch.ops.gfn_fast.bfn_discrete_loss_fwd.default, (x_index, logits, t, 0.5, "numba"))
    opcheck(torch.ops.gfn_fast.bfn_discrete_nstep_loss_fwd.default,
            (x_index, logits, t, 0.5, 10, 3, 0, "numba"))
    opcheck(torch.ops.gfn_fast.bfn_discrete_update.default,
            (logits.detach(), logits.detach(), "numba"))
    opcheck(torch.ops.gfn_fast.bfn_continuous_flow.default, (x, t, 0.05, -7, 2, "numba"))
    opcheck(torch.ops.gfn_fast.bfn_discrete_flow.default,
            (x_index, t, 0.5, 5, 1, 0, False, "numba"))
    opcheck(torch.ops.gfn_fast.bfn_discrete_step.default,
            (logits.detach().clone(), logits.detach(), 0.5, 1, 0, True,
             torch.empty(3, 4, dtype=torch.int64), "numba"))


def _no_gradient_ops(mu, net_out, net_logits, rho, alpha, t):
    """The ops documented as having no gradient, fed tensors that require grad (the flows a
    time that does: a learned schedule's output)."""
    x_index = torch.arange(6).reshape(3, 2) % 5
    return [bfn.continuous_output(mu, net_out, 0.5, 0.05, backend="numba"),
            *bfn.continuous_update(mu, rho, net_out, alpha, backend="numba"),
            bfn.discretised_probs(net_out, net_out, 16, backend="numba"),
            bfn.discrete_update(net_logits, net_logits, backend="numba"),
            bfn.continuous_flow(mu, t, 0.05, seed=1, backend="numba"),
            bfn.discrete_flow(x_index, t, 0.5, 5, seed=1, backend="numba")]


def test_no_gradient_ops_take_inputs_that_require_grad():
    """A network output that requires grad (x_hat for logging, an auxiliary term) gives results
    without a graph on every path: eager, the op path that compile and dispatch modes take, and
    torch.compile(fullgraph=True). Before, the op path and compile handed the custom ops (which
    have no autograd formula) the graph-tracking inputs: "no autograd formula was registered"."""
    from gfn_fast import _ops

    mu = torch.randn(3, 6)
    net_out = torch.randn(3, 6, requires_grad=True)
    net_logits = torch.randn(3, 6, 5, requires_grad=True)
    args = (mu, net_out, net_logits, torch.ones(3, requires_grad=True),
            torch.full((3,), 2.0, requires_grad=True), torch.rand(3, requires_grad=True))
    eager = _no_gradient_ops(*args)
    with _ops.force_op_path():
        op_path = _no_gradient_ops(*args)
    compiled = torch.compile(_no_gradient_ops, fullgraph=True, backend="aot_eager")(*args)
    for results in (op_path, compiled):
        for value, expected in zip(results, eager, strict=True):
            assert not value.requires_grad and not expected.requires_grad
            torch.testing.assert_close(value, expected)
    # the inputs' own graph is untouched
    (grad,) = torch.autograd.grad(net_out.pow(2).sum() + compiled[0].sum(), [net_out])
    torch.testing.assert_close(grad, 2 * net_out.detach())


def test_torch_compile_fullgraph():
    x, mu, eps_hat, t = _continuous(3, 6, torch.float32, "cpu")
    x_index = torch.randint(0, 5, (3, 4))
    logits = torch.randn(3, 4, 5, requires_grad=True)
    eps_hat.requires_grad_(True)

    def step(x, mu, eps_hat, t, x_index, logits):
        return (bfn.continuous_loss(x, mu, eps_hat, t, 0.05, backend="numba").sum()
                + bfn.discrete_loss(x_index, logits, t, 0.5, backend="numba").sum()
                + bfn.discrete_loss(x_index, logits, t, 0.5, 10, seed=3,
                                    backend="numba").sum())

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager = step(x, mu, eps_hat, t, x_index, logits)
    value = compiled(x, mu, eps_hat, t, x_index, logits)
    torch.testing.assert_close(value, eager)
    grads = torch.autograd.grad(value, [eps_hat, logits])
    expected = torch.autograd.grad(eager, [eps_hat, logits])
    for g, e in zip(grads, expected, strict=False):
        torch.testing.assert_close(g, e)


# -------------------------------------------------------------------- Triton sm_90 compilation

def _triton_cases():
    """Every specialisation the launchers produce when compiled, with their block sizes at K <= 32
    and 256 bins (kernels/bfn.py: _block, _ROW_TILE, _FLOW_TILE, _NOISE_TILE)."""
    f, i = "*fp32", "i32"
    cases = []
    scalar = "fp64"  # float arguments are annotated tl.float64 in every kernel
    for acc, fp in (("tl.float32", "*fp32"), ("tl.float64", "*fp64"), ("tl.float32", "*bf16"),
                    ("tl.float32", "*fp16")):
        accp = "*fp64" if acc == "tl.float64" else f
        for clamp in (False, True):
            cases.append(("_continuous_output_kernel",
                          dict(mu_ptr=fp, eps_ptr=fp, t_ptr=accp, out_ptr=fp, n_elements=i,
                               dims=i, log_s=scalar, t_min=scalar, x_min=scalar, x_max=scalar),
                          dict(CLAMP=clamp, ACC=acc, BLOCK=1024)))
            for unit in (False, True):
                cases.append(("_continuous_loss_fwd_kernel",
                              dict(x_ptr=fp, mu_ptr=fp, eps_ptr=fp, t_ptr=accp, out_ptr=accp,
                                   unit_ptr=accp, dims=i, log_s=scalar, w_scale=scalar,
                                   t_min=scalar, x_min=scalar, x_max=scalar),
                              dict(CLAMP=clamp, UNIT=unit, ACC=acc, BLOCK=1024)))
            cases.append(("_continuous_step_kernel",
                          dict(mu_ptr=fp, rho_ptr=accp, eps_hat_ptr=fp, n_elements=i, dims=i,
                               a=scalar, c=scalar, inv_sqrt_alpha=scalar, alpha=scalar,
                               x_min=scalar, x_max=scalar, seed_lo=i, seed_hi=i, off_lo=i,
                               off_hi=i), dict(CLAMP=clamp, ACC=acc, BLOCK=512)))
        cases += [
            ("_continuous_update_kernel",
             dict(mu_ptr=fp, rho_ptr=accp, y_ptr=fp, alpha_ptr=accp, out_ptr=fp, n_elements=i,
                  dims=i, stride_rho_b=i, stride_rho_d=i), dict(ACC=acc, BLOCK=1024)),
            ("_discretised_loss_fwd_kernel",
             dict(x_ptr=fp, mu_ptr=fp, log_sigma_ptr=fp, t_ptr=accp, out_ptr=accp, dims=i,
                  n_bins=i, log_s=scalar, w_scale=scalar), dict(ACC=acc, BLOCK=256)),
            ("_discretised_loss_bwd_kernel",
             dict(grad_ptr=accp, x_ptr=fp, mu_ptr=fp, log_sigma_ptr=fp, t_ptr=accp,
                  grad_mu_ptr=fp, grad_log_sigma_ptr=fp, n_elements=i, dims=i, n_bins=i,
                  log_s=scalar, w_scale=scalar), dict(ACC=acc, BLOCK=256)),
            ("_discretised_probs_kernel",
             dict(mu_ptr=fp, log_sigma_ptr=fp, out_ptr=accp, n_rows=i, n_bins=i),
             dict(ACC=acc, BLOCK_R=8, BLOCK_K=256)),
            ("_discrete_loss_fwd_kernel",
             dict(x_index_ptr="*i64", logits_ptr=fp, t_ptr=accp, out_ptr=accp, dims=i,
                  n_classes=i, beta_1=scalar), dict(ACC=acc, BLOCK_D=64, BLOCK_K=32)),
            ("_discrete_loss_bwd_kernel",
             dict(grad_ptr=accp, x_index_ptr="*i64", logits_ptr=fp, t_ptr=accp, out_ptr=fp,
                  n_rows=i, dims=i, n_classes=i, beta_1=scalar),
             dict(ACC=acc, BLOCK_R=64, BLOCK_K=32)),
            ("_discrete_update_kernel",
             dict(log_theta_ptr=fp, y_ptr=fp, out_ptr=fp, n_rows=i, n_classes=i),
             dict(ACC=acc, BLOCK_R=64, BLOCK_K=32)),
            ("_continuous_flow_kernel",
             dict(x_ptr=fp, t_ptr=accp, out_ptr=fp, n_elements=i, dims=i, log_s=scalar,
                  seed_lo=i, seed_hi="i64", off_lo="i64", off_hi=i), dict(ACC=acc, BLOCK=1024)),
            ("_discrete_nstep_fwd_kernel",
             dict(x_index_ptr="*i64", logits_ptr=fp, t_ptr=accp, out_ptr=accp, dims=i,
                  n_classes=i, beta_1=scalar, n_steps=scalar, seed_lo=i, seed_hi=i, off_lo=i,
                  off_hi=i), dict(ACC=acc, BLOCK_D=16, BLOCK_K=32, QUADS=128)),
            ("_discrete_nstep_bwd_kernel",
             dict(grad_ptr=accp, x_index_ptr="*i64", logits_ptr=fp, t_ptr=accp, out_ptr=fp,
                  n_rows=i, dims=i, n_classes=i, beta_1=scalar, n_steps=scalar, seed_lo=i,
                  seed_hi=i, off_lo=i, off_hi=i),
             dict(ACC=acc, BLOCK_R=16, BLOCK_K=32, QUADS=128)),
        ]
        for update in (False, True):
            cases += [
                ("_discretised_step_kernel",
                 dict(mu_ptr=fp, rho_ptr=accp, mu_x_ptr=fp, log_sigma_ptr=fp, draw_ptr=fp,
                      n_elements=i, dims=i, n_bins=i, inv_sqrt_alpha=scalar, alpha=scalar,
                      seed_lo=i, seed_hi=i, off_lo=i, off_hi=i),
                 dict(UPDATE=update, ACC=acc, BLOCK=512)),
                ("_discrete_step_kernel",
                 dict(log_theta_ptr=fp, logits_ptr=fp, draw_ptr="*i64", n_rows=i, n_classes=i,
                      alpha=scalar, spread=scalar, seed_lo=i, seed_hi=i, off_lo=i, off_hi=i),
                 dict(UPDATE=update, ACC=acc, BLOCK_R=16, BLOCK_K=32, QUADS=128)),
            ]
        if acc != "tl.float32" or fp == f:
            for log in (False, True):
                cases.append(("_discrete_flow_kernel",
                              dict(x_index_ptr="*i64", t_ptr=accp, out_ptr=accp, n_rows=i,
                                   dims=i, n_classes=i, beta_1=scalar, seed_lo=i, seed_hi=i,
                                   off_lo=i, off_hi=i),
                              dict(LOG=log, ACC=acc, BLOCK_R=32, BLOCK_K=32, QUADS=256)))
    return cases


@pytest.mark.slow
def test_triton_kernels_compile_for_sm90():
    from tests.triton_compile import compile_in_subprocess

    compile_in_subprocess("gfn_fast.kernels.bfn", _triton_cases(), timeout=1800)


@pytest.mark.parametrize("op", ["discrete_loss", "discrete_update", "discrete_flow",
                                "discrete_step"])
def test_triton_refuses_more_classes_than_one_tile_holds(op):
    """The Triton discrete kernels hold a row of K in one tile, at most Triton's largest tensor
    (2^20 elements): K = 2^20 + 1 failed inside Triton ("numel exceeds triton maximum tensor
    numel"); it is refused up front now, naming K. The other backends loop over K."""
    if "cpu" not in gfn_fast.backends()["triton"]["devices"]:
        pytest.skip("triton interpreter not active")
    classes = (1 << 20) + 1
    x = torch.zeros(1, 1, dtype=torch.int64)
    logits = torch.zeros(1, 1, classes)
    calls = {
        "discrete_loss": lambda b: bfn.discrete_loss(x, logits, 0.5, 0.5, backend=b),
        "discrete_update": lambda b: bfn.discrete_update(logits[0], logits[0], backend=b),
        "discrete_flow": lambda b: bfn.discrete_flow(x, 0.5, 0.5, classes, seed=1, backend=b),
        "discrete_step": lambda b: bfn.discrete_step(None, logits, 1.0, seed=1, backend=b)}
    with pytest.raises(ValueError, match=f"at most {1 << 20} classes.*K = {classes}"):
        calls[op]("triton")
    assert torch.isfinite(_tensor_of(calls[op]("numba"))).all()


def _tensor_of(result):
    return result if isinstance(result, torch.Tensor) else result[0]
