"""Masked, logit-scaled, epsilon-exploring action sampling and action_log_prob."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import gfn_fast
from gfn_fast.reference import sampling as ref
from tests.conftest import backend_params

BACKENDS = backend_params()
TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.float16: 2e-5, torch.bfloat16: 2e-5}


def _inputs(rows, width, dtype=torch.float32, device="cpu", mask_kind="bool", density=0.6,
            layout="contiguous"):
    if layout == "transposed":
        logits = (torch.randn(width, rows) * 2).to(dtype).to(device).T
    elif layout == "strided":
        logits = (torch.randn(rows, 2 * width) * 2).to(dtype).to(device)[:, ::2]
    else:
        logits = (torch.randn(rows, width) * 2).to(dtype).to(device)
    mask = None
    if mask_kind != "none":
        mask = torch.rand(rows, width, device=device) < density
        mask[torch.arange(rows), torch.randint(0, width, (rows,))] = True
    return logits, mask


def _as_kind(mask, kind):
    return ref.pack_mask(mask) if kind == "packed" and mask is not None else mask


def _exact(logits, mask, actions, scale=None, temperature=None, clip=None, epsilon=0.0):
    """float64 log pi, log mu, entropy at the given actions."""
    to64 = lambda v: v.double() if isinstance(v, torch.Tensor) else v  # noqa: E731
    inv_t = None if temperature is None else 1.0 / torch.as_tensor(to64(temperature),
                                                                   dtype=torch.float64)
    scale = None if scale is None else torch.as_tensor(to64(scale), dtype=torch.float64)
    # the rate the coin explores at: epsilon rounded up to a multiple of 2^-24 (_checks)
    eps = torch.ceil(torch.as_tensor(to64(epsilon), dtype=torch.float64) * 2**24) / 2**24
    pi, mu = ref.distribution(logits.double().cpu(), None if mask is None else mask.cpu(),
                              None if scale is None else scale.cpu(),
                              None if inv_t is None else inv_t.cpu(), clip, eps.cpu())
    index = actions.cpu()[:, None]
    log_p = torch.log(pi)
    entropy = -torch.where(pi > 0, pi * log_p, torch.zeros_like(pi)).sum(1)
    return log_p.gather(1, index)[:, 0], torch.log(mu.gather(1, index)[:, 0]), entropy


CONFIGS = {
    "plain": {},
    "scale": dict(scale=1.7),
    "row_scale_temp": dict(scale="rows", temperature="rows"),
    "clip": dict(scale=3.0, clip=(-2.0, 1.5)),
    "epsilon": dict(epsilon=0.3),
    "all": dict(scale="rows", temperature=0.6, clip=(-3.0, 3.0), epsilon="rows"),
}


def _config(name, rows, device="cpu"):
    kwargs = dict(CONFIGS[name])
    for key in ("scale", "temperature", "epsilon"):
        if kwargs.get(key) == "rows":
            low, high = (0.0, 1.0) if key == "epsilon" else (0.3, 2.0)
            kwargs[key] = (torch.rand(rows) * (high - low) + low).to(device)
    return kwargs


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("mask_kind", ["none", "bool", "packed"])
def test_matches_reference_and_exact(backend, device, config, mask_kind):
    rows, width = 97, 45
    logits, mask = _inputs(rows, width, device=device, mask_kind=mask_kind)
    kwargs = _config(config, rows, device)
    out = gfn_fast.sample_actions(logits, _as_kind(mask, mask_kind), seed=11, offset=3,
                                  return_log_mu=True, return_entropy=True, backend=backend,
                                  **kwargs)
    expected = gfn_fast.sample_actions(logits.cpu(), None if mask is None else _as_kind(
        mask.cpu(), mask_kind), seed=11, offset=3, return_log_mu=True, return_entropy=True,
        backend="reference", **{k: v.cpu() if isinstance(v, torch.Tensor) else v
                                for k, v in kwargs.items()})
    actions = out[0].cpu()
    assert actions.dtype == torch.int64
    assert (actions == expected[0]).float().mean() >= 0.99
    if mask is not None:
        assert mask.cpu()[torch.arange(rows), actions].all()
    log_pi, log_mu, entropy = _exact(logits, mask, actions, **kwargs)
    for got, want in zip(out[1:], (log_pi, log_mu, entropy), strict=False):
        torch.testing.assert_close(got.cpu().double(), want, rtol=2e-5, atol=2e-5)


def _argmax_of_every_key(logits, mask, seed):
    """The policy-branch draw of the Numba sampler's contract with no key skipped: the first
    allowed action of the largest key z + Gumbel (NaN keys count as -inf), every key computed
    by the same Numba functions as gfn_fast/cpu/sampling.py."""
    numba = pytest.importorskip("numba")
    from gfn_fast.cpu import _philox as px
    from gfn_fast.cpu import sampling as cpu_sampling

    @numba.njit(cache=False)
    def every_key(logits, mask, k0, k1, one, lo, hi, out):
        zero = np.uint64(0)
        for r in range(logits.shape[0]):
            best, best_key = -1, logits.dtype.type(-np.inf)
            for a in range(logits.shape[1]):
                if not mask[r, a]:
                    continue
                words = px.philox4x32(k0, k1, np.uint64(a >> 1), np.uint64(r), zero, zero)
                bits = words[0] if a % 2 == 0 else words[2]
                key = cpu_sampling._scaled(logits[r, a], one, lo, hi, one) + px.gumbel(bits)
                if key != key:
                    key = -np.inf
                if best < 0 or key > best_key:
                    best, best_key = a, key
            out[r] = max(best, 0)

    out = np.empty(logits.shape[0], dtype=np.int64)
    f32 = np.float32
    every_key(logits.numpy(), mask.numpy(), np.uint64(seed), np.uint64(0), f32(1.0), f32(-np.inf),
              f32(np.inf), out)
    return torch.from_numpy(out)


@pytest.mark.parametrize("width", [5, 40, 256, 257, 2100])
@pytest.mark.parametrize("order", ["random", "ascending"])
@pytest.mark.parametrize("values", ["1", "30", "1e4", "3e5", "inf and nan"])
def test_numba_gumbel_skip_keeps_the_exact_argmax(values, order, width):
    """Rows of up to 256 actions take their Gumbel noise from a vectorised pre-pass over a chunk
    of rows (16 or more) and compute every key; wider rows skip the Gumbel key of elements that
    provably cannot win (module docstring of gfn_fast/cpu/sampling.py), by a bound renewed when
    the running max or the best key changes. Ascending rows renew the max at every element;
    spreads beyond 1e5 take the never-skip branch. Either way the draws must be exactly those of
    computing every key one by one. The Philox words come from a pre-pass too, whose loop runs
    over rows (chunks of 16 rows or more) or over a row's pairs (257: 15 rows a chunk; 2100: one
    row a chunk)."""
    generator = torch.Generator().manual_seed(len(values) * 7 + len(order) + width)
    spread = 1.0 if values == "inf and nan" else float(values)
    rows = 6000 if width <= 40 else 150
    logits = torch.randn(rows, width, generator=generator, dtype=torch.float64) * spread
    if order == "ascending":
        logits = logits.sort(dim=1).values
    logits = logits.float()
    if values == "inf and nan":
        special = torch.rand(logits.shape, generator=generator)
        logits[special < 0.01] = math.inf
        logits[(special > 0.01) & (special < 0.02)] = math.nan
        logits[(special > 0.02) & (special < 0.2)] = -math.inf
    mask = torch.rand(rows, width, generator=generator) < 0.8
    mask[:, -1] = True
    got = gfn_fast.sample_actions(logits, mask, seed=5, backend="numba")[0]
    assert torch.equal(got, _argmax_of_every_key(logits, mask, 5))
    expected = gfn_fast.sample_actions(logits, mask, seed=5, backend="reference")[0]
    assert (got == expected).float().mean() >= 0.999


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_dtypes_and_layouts(backend, device, dtype, layout):
    rows, width = 33, 70
    logits, mask = _inputs(rows, width, dtype, device, layout=layout)
    out = gfn_fast.sample_actions(logits, mask, scale=0.8, epsilon=0.1, seed=5,
                                  return_log_mu=True, return_entropy=True, backend=backend)
    expected = gfn_fast.sample_actions(logits.cpu(), mask.cpu(), scale=0.8, epsilon=0.1, seed=5,
                                       backend="reference")
    assert torch.equal(out[0].cpu(), expected[0])
    assert out[1].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    log_pi, log_mu, entropy = _exact(logits, mask, out[0], scale=0.8, epsilon=0.1)
    tol = TOL[dtype]
    for got, want in zip(out[1:], (log_pi, log_mu, entropy), strict=False):
        torch.testing.assert_close(got.cpu().double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (1, 2), (5, 3), (2, 1031)])
def test_odd_shapes(backend, device, shape):
    logits, mask = _inputs(*shape, device=device)
    out = gfn_fast.sample_actions(logits, mask, seed=1, return_entropy=True, backend=backend)
    ref_out = gfn_fast.sample_actions(logits.cpu(), mask.cpu(), seed=1, backend="reference")
    assert torch.equal(out[0].cpu(), ref_out[0])
    torch.testing.assert_close(out[1].cpu(), ref_out[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("split", [False, True])
def test_wide_rows(backend, device, split, monkeypatch):
    if split and backend == "triton":
        from gfn_fast.kernels import sampling as kernels

        monkeypatch.setattr(kernels, "MAX_CHUNK", 8192)
    elif split:
        pytest.skip("only the Triton launcher takes a forced chunk")
    rows, width = 2, 262144
    logits, mask = _inputs(rows, width, device=device, mask_kind="packed")
    packed = ref.pack_mask(mask)
    out = gfn_fast.sample_actions(logits, packed, scale=2.0, epsilon=0.5, seed=3,
                                  return_log_mu=True, return_entropy=True, backend=backend)
    expected = gfn_fast.sample_actions(logits.cpu(), packed.cpu(), scale=2.0, epsilon=0.5,
                                       seed=3, backend="reference")
    assert torch.equal(out[0].cpu(), expected[0])
    log_pi, log_mu, entropy = _exact(logits, mask, out[0], scale=2.0, epsilon=0.5)
    for got, want in zip(out[1:], (log_pi, log_mu, entropy), strict=False):
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-4)
    lp = gfn_fast.action_log_prob(logits, out[0], packed, scale=2.0, backend=backend)
    torch.testing.assert_close(lp.cpu().double(), log_pi, rtol=1e-4, atol=1e-4)


# ---- distribution: chi-square against mu ----

DIST_CASES = {
    "mask": dict(mask=[True, False, True, True, False, True]),
    "scale": dict(scale=2.5),
    "temperature": dict(temperature=0.5),
    "clip": dict(scale=4.0, clip=(-1.0, 1.0)),
    "epsilon": dict(epsilon=0.35, mask=[True, True, False, True, True, True]),
    "epsilon_one": dict(epsilon=1.0, mask=[False, True, True, False, True, True]),
    "hot": dict(temperature=1e6),
}
BASE_LOGITS = [1.2, -0.7, 0.3, 2.0, -1.5, 0.0]


def _frequencies(backend, device, draws, case, seed):
    kwargs = dict(DIST_CASES[case])
    mask_list = kwargs.pop("mask", None)
    logits = torch.tensor(BASE_LOGITS, device=device).expand(draws, -1)
    mask = None if mask_list is None else torch.tensor(mask_list, device=device).expand(draws, -1)
    actions = gfn_fast.sample_actions(logits, mask, seed=seed, backend=backend, **kwargs)[0]
    counts = torch.bincount(actions.cpu(), minlength=len(BASE_LOGITS)).double()
    eps = kwargs.pop("epsilon", 0.0)
    temperature = kwargs.pop("temperature", None)
    inv_t = None if temperature is None else torch.tensor(1.0 / temperature, dtype=torch.float64)
    scale = kwargs.get("scale")
    _, mu = ref.distribution(logits[:1].cpu().double(), None if mask is None else mask[:1].cpu(),
                             None if scale is None else torch.tensor(scale, dtype=torch.float64),
                             inv_t, kwargs.get("clip"), torch.tensor(eps, dtype=torch.float64))
    return counts, mu[0], mask_list


def _chi_square(counts, mu):
    support = mu > 0
    assert (counts[~support] == 0).all(), "an action of probability 0 was drawn"
    expected = mu[support] * counts.sum()
    return stats.chisquare(counts[support].numpy(), expected.numpy()).pvalue


@pytest.mark.parametrize("case", list(DIST_CASES))
def test_chi_square_numba_1e6(case):
    counts, mu, _ = _frequencies("numba", "cpu", 1_000_000, case, seed=2024)
    assert _chi_square(counts, mu) > 1e-4


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.id != "numba-cpu"])
@pytest.mark.parametrize("case", list(DIST_CASES))
def test_chi_square_gpu_backends(backend, device, case):
    draws = 200_000 if device == "cuda" else 40_000
    counts, mu, _ = _frequencies(backend, device, draws, case, seed=77)
    assert _chi_square(counts, mu) > 1e-4


def test_epsilon_one_is_uniform_and_hot_is_uniform():
    counts, mu, mask = _frequencies("numba", "cpu", 300_000, "epsilon_one", seed=5)
    allowed = torch.tensor(mask)
    assert torch.allclose(mu[allowed], torch.full((int(allowed.sum()),), 1 / allowed.sum(),
                                                  dtype=torch.float64))
    assert _chi_square(counts, mu) > 1e-4
    counts, mu, _ = _frequencies("numba", "cpu", 300_000, "hot", seed=6)
    assert torch.allclose(mu, torch.full_like(mu, 1 / 6), atol=1e-5)
    assert _chi_square(counts, torch.full_like(mu, 1 / 6)) > 1e-4


# ---- randomness contract ----

@pytest.mark.parametrize("backend,device", BACKENDS)
def test_seed_reproducible_generator_advances(backend, device):
    logits, mask = _inputs(64, 50, device=device)
    a = gfn_fast.sample_actions(logits, mask, seed=9, offset=1, backend=backend)[0]
    b = gfn_fast.sample_actions(logits, mask, seed=9, offset=1, backend=backend)[0]
    c = gfn_fast.sample_actions(logits, mask, seed=9, offset=2, backend=backend)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator(device=device).manual_seed(4)
    first = gfn_fast.sample_actions(logits, mask, generator=gen, backend=backend)[0]
    second = gfn_fast.sample_actions(logits, mask, generator=gen, backend=backend)[0]
    assert not torch.equal(first, second)
    gen.manual_seed(4)
    assert torch.equal(first, gfn_fast.sample_actions(logits, mask, generator=gen,
                                                      backend=backend)[0])


def test_numba_triton_agree_on_many_rows():
    pytest.importorskip("triton")
    if "cpu" not in gfn_fast.backends()["triton"]["devices"]:
        pytest.skip("triton interpreter not active")
    logits, mask = _inputs(20000, 24)
    kwargs = dict(mask=mask, scale=1.3, temperature=0.9, epsilon=0.2, seed=123, offset=7)
    numba_actions = gfn_fast.sample_actions(logits, backend="numba", **kwargs)[0]
    triton_actions = gfn_fast.sample_actions(logits, backend="triton", **kwargs)[0]
    assert (numba_actions == triton_actions).float().mean() >= 0.9995


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nan_logits(backend, device):
    logits, mask = _inputs(4, 10, device=device, mask_kind="none")
    logits[1, 3] = float("nan")
    logits[2] = float("nan")
    actions, log_pi, entropy = gfn_fast.sample_actions(logits, seed=0, return_entropy=True,
                                                       backend=backend)
    assert ((actions >= 0) & (actions < 10)).all()
    assert torch.isnan(log_pi[1:3]).all() and torch.isfinite(log_pi[[0, 3]]).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("width", [10, 300])  # a chunk of rows, and a row of its own (> 256)
def test_rows_with_no_finite_allowed_logit(backend, device, width):
    """Every allowed scaled logit -inf (given so, or finite logits overflowing under the scale):
    the row's sum of exponentials is 0. Like the reference, log pi and the entropy are NaN and
    the action is in range; Numba's entropy divided by that 0 and raised ZeroDivisionError."""
    logits, _ = _inputs(4, width, device=device, mask_kind="none")
    logits[1] = -math.inf
    logits[2] = -3e38
    scale = torch.tensor([1.0, 1.0, 10.0, 1.0], device=device)
    actions, log_pi, entropy = gfn_fast.sample_actions(logits, scale=scale, seed=0,
                                                       return_entropy=True, backend=backend)
    assert ((actions >= 0) & (actions < width)).all()
    for values in (log_pi, entropy):
        assert values[1:3].isnan().all() and values[[0, 3]].isfinite().all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_log_mu_near_zero_keeps_its_relative_precision(backend, device):
    """log mu = log((1 - eps) pi + eps / n) ~ -eps (1 - 1/n) for pi ~ 1 and tiny eps: the
    reference, CUDA and Numba use log1p; Triton's log(1 - eps) lost 1e-4 of it at eps = 1e-12."""
    logits = torch.tensor([[40.0, 0.0]], dtype=torch.float64, device=device)
    for eps in (1e-12, 3e-9):
        got = gfn_fast.sample_actions(logits, epsilon=eps, seed=0, return_log_mu=True,
                                      backend=backend)[2].cpu()
        want = gfn_fast.sample_actions(logits.cpu(), epsilon=eps, seed=0, return_log_mu=True,
                                       backend="reference")[2]
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference-cpu"),
                                            *BACKENDS])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "packed"])
def test_empty_batch(backend, device, mask_kind):
    """N = 0 rows is a valid batch: [0]-shaped results, and pack_mask gives [0, ceil(A/8)]
    (the reference's reshape(0, -1) had raised, and pack_mask with it)."""
    logits = torch.zeros(0, 11, device=device, requires_grad=True)
    mask = torch.zeros(0, 11, dtype=torch.bool, device=device)
    if mask_kind == "packed":
        mask = gfn_fast.pack_mask(mask)
        assert mask.shape == (0, 2) and mask.dtype == torch.uint8
    mask = None if mask_kind == "none" else mask
    out = gfn_fast.sample_actions(logits.detach(), mask, seed=0, return_log_mu=True,
                                  return_entropy=True, backend=backend)
    assert [tuple(t.shape) for t in out] == [(0,)] * 4
    log_pi = gfn_fast.action_log_prob(logits, out[0], mask, backend=backend)
    assert log_pi.shape == (0,)
    (grad,) = torch.autograd.grad(log_pi.sum(), [logits])
    assert grad.shape == (0, 11)


def test_masked_actions_never_drawn_many_rows():
    logits, mask = _inputs(200_000, 12, density=0.3)
    for eps in (0.0, 0.5, 1.0):
        actions = gfn_fast.sample_actions(logits, mask, epsilon=eps, seed=1, backend="numba")[0]
        assert mask[torch.arange(200_000), actions].all()


# ---- action_log_prob ----

@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("mask_kind", ["none", "bool", "packed"])
def test_log_prob_gradcheck(backend, device, mask_kind):
    rows, width = 6, 9
    logits, mask = _inputs(rows, width, torch.float64, device, mask_kind)
    logits.requires_grad_()
    scale = (torch.rand(rows, dtype=torch.float64, device=device) + 0.5).requires_grad_()
    actions = torch.multinomial(mask.double() if mask is not None else torch.ones(rows, width),
                                1)[:, 0].to(device) if mask is not None else \
        torch.randint(0, width, (rows,), device=device)
    m = _as_kind(mask, mask_kind)
    fn = lambda x, s: gfn_fast.action_log_prob(x, actions, m, scale=s, temperature=0.7,  # noqa
                                               clip=(-50.0, 50.0), backend=backend)
    assert torch.autograd.gradcheck(fn, (logits, scale))
    scalar = torch.tensor(1.3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s: fn(x, s), (logits, scalar))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_log_prob_matches_reference_with_clip(backend, device, dtype):
    rows, width = 40, 130
    logits, mask = _inputs(rows, width, dtype, device)
    logits.requires_grad_()
    scale = (torch.rand(rows, device=device) * 3 + 0.5).requires_grad_()
    actions = torch.multinomial(mask.float(), 1)[:, 0]
    kwargs = dict(scale=scale, temperature=1.4, clip=(-2.0, 2.0))
    out = gfn_fast.action_log_prob(logits, actions, mask, backend=backend, **kwargs)
    want = gfn_fast.action_log_prob(logits, actions, mask, backend="reference", **kwargs)
    grad = torch.randn(rows, device=device)
    got_g = torch.autograd.grad(out, (logits, scale), grad)
    want_g = torch.autograd.grad(want, (logits, scale), grad)
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out, want, rtol=tol, atol=tol)
    for g, w in zip(got_g, want_g, strict=False):
        torch.testing.assert_close(g.float(), w.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("mask_kind", ["none", "bool", "packed"])
def test_log_prob_non_finite_logits_like_reference(backend, device, mask_kind):
    """A +inf, a NaN and -inf logits, and a row with nothing allowed (value checks off): the same
    log-probs as the reference's gather - logsumexp, NaN where it is NaN. The Numba kernel finds
    the max over integer keys and sums exponentials in a second pass, so these are the cases
    where it could part from torch.logsumexp."""
    inf, nan = math.inf, math.nan
    logits = torch.tensor([[inf, 0.5, -1.0, 2.0], [inf, -2.0, 0.0, 1.0], [0.1, nan, 0.3, -0.2],
                           [-inf, -inf, 1.0, 2.0], [3.0, -1.0, 0.5, 0.0], [-inf, 1.0, 2.0, 0.0]],
                          dtype=torch.float64, device=device)
    mask = torch.ones(6, 4, dtype=torch.bool, device=device)
    mask[4] = False  # nothing allowed
    mask[5, 2] = False
    actions = torch.tensor([0, 2, 0, 3, 1, 1], device=device)
    m = _as_kind(mask, mask_kind) if mask_kind != "none" else None
    if mask_kind == "none":
        logits, actions = logits[:4], actions[:4]
    if backend != "numba":
        # Triton's streaming log-sum-exp gives NaN, not +inf, for a row with a +inf logit (so
        # NaN, not -inf, for its other actions; the CUDA kernel streams the same way, unrun
        # here): rows 0-1 check Numba only.
        logits, actions = logits[2:], actions[2:]
        m = m[2:] if m is not None else None
    with gfn_fast.validation(False):
        got = gfn_fast.action_log_prob(logits, actions, m, backend=backend)
        want = gfn_fast.action_log_prob(logits, actions, m, backend="reference")
    torch.testing.assert_close(got, want, equal_nan=True)
    assert math.isfinite(float(got[-1]))  # a finite row stays finite


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_sample_log_pi_is_differentiable(backend, device):
    logits, mask = _inputs(20, 15, device=device)
    logits.requires_grad_()
    scale = torch.tensor(1.5, device=device, requires_grad=True)
    actions, log_pi, log_mu = gfn_fast.sample_actions(logits, mask, scale=scale, epsilon=0.2,
                                                      seed=1, return_log_mu=True,
                                                      backend=backend)
    assert not log_mu.requires_grad
    g_sample = torch.autograd.grad(log_pi.sum(), (logits, scale))
    lp = gfn_fast.action_log_prob(logits, actions, mask, scale=scale, backend=backend)
    g_lp = torch.autograd.grad(lp.sum(), (logits, scale))
    for a, b in zip(g_sample, g_lp, strict=False):
        torch.testing.assert_close(a, b)


# ---- torch.compile and opcheck ----

def test_opcheck():
    logits, mask = _inputs(8, 13)
    scale = torch.rand(8) + 0.5
    inv_t = torch.tensor(1.2)
    eps = torch.full((8,), 0.3)
    logits.requires_grad_()
    scale.requires_grad_()
    torch.library.opcheck(torch.ops.gfn_fast.sample_actions.default,
                          (logits, mask, scale, inv_t, eps, -3.0, 3.0, False, 1, 2, 3, 4, True,
                           True, "numba"))
    actions = torch.multinomial(mask.float(), 1)[:, 0]
    torch.library.opcheck(torch.ops.gfn_fast.action_log_prob_fwd.default,
                          (logits, actions, ref.pack_mask(mask), scale, None, -math.inf,
                           math.inf, True, "numba"))
    lse = torch.randn(8)
    torch.library.opcheck(torch.ops.gfn_fast.action_log_prob_bwd.default,
                          (torch.randn(8), logits.detach(), actions, mask, scale.detach(), inv_t,
                           -3.0, 3.0, False, lse, True, True, "numba"))


def test_torch_compile_fullgraph():
    logits, mask = _inputs(16, 21)
    logits.requires_grad_()
    scale = (torch.rand(16) + 0.5).requires_grad_()

    def step(x, m, s):
        actions, log_pi, log_mu = gfn_fast.sample_actions(x, m, scale=s, epsilon=0.1, seed=3,
                                                          offset=1, return_log_mu=True,
                                                          backend="numba")
        lp = gfn_fast.action_log_prob(x, actions, m, scale=s, clip=(-5.0, 5.0), backend="numba")
        return actions, (lp - log_mu).sum() + log_pi.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    with gfn_fast.validation(False):
        eager_actions, eager_loss = step(logits, mask, scale)
    actions, loss = compiled(logits, mask, scale)
    assert torch.equal(actions, eager_actions)
    torch.testing.assert_close(loss, eager_loss)
    grads = torch.autograd.grad(loss, (logits, scale))
    want = torch.autograd.grad(eager_loss, (logits, scale))
    for g, w in zip(grads, want, strict=False):
        torch.testing.assert_close(g, w)


# ---- bad input ----

def _bad_cases():
    x = torch.randn(4, 6)
    ok_mask = torch.ones(4, 6, dtype=torch.bool)
    empty_row = ok_mask.clone()
    empty_row[2] = False
    return [
        ("logits", TypeError, dict(logits=torch.ones(4, 6, dtype=torch.int64))),
        ("logits", ValueError, dict(logits=torch.randn(24))),
        ("logits", TypeError, dict(logits=[[1.0]])),
        ("mask", ValueError, dict(mask=empty_row)),
        ("mask", ValueError, dict(mask=torch.ones(4, 5, dtype=torch.bool))),
        ("mask", ValueError, dict(mask=torch.ones(4, 2, dtype=torch.uint8))),
        ("mask", TypeError, dict(mask=torch.ones(4, 6))),
        ("scale", ValueError, dict(scale=torch.ones(3))),
        ("scale", TypeError, dict(scale=True)),
        ("temperature", ValueError, dict(temperature=0.0)),
        ("temperature", ValueError, dict(temperature=torch.tensor([1.0, -1.0, 1.0, 1.0]))),
        ("temperature", ValueError, dict(temperature=torch.ones(2, 2))),
        ("temperature", ValueError, dict(temperature=torch.tensor([1.0, 1.0, math.nan, 1.0]))),
        ("epsilon", ValueError, dict(epsilon=1.5)),
        ("epsilon", ValueError, dict(epsilon=torch.tensor([0.1, 0.2, -0.1, 0.0]))),
        ("epsilon", ValueError, dict(epsilon=torch.ones(5) * 0.1)),
        ("epsilon", ValueError, dict(epsilon=torch.tensor([0.1, math.nan, 0.0, 0.0]))),
        ("clip", ValueError, dict(clip=(2.0, 1.0))),
        ("clip", TypeError, dict(clip=3.0)),
        ("seed", TypeError, dict(seed=1.0)),
        ("backend", ValueError, dict(backend="nope")),
    ], x


@pytest.mark.parametrize("index", range(21))
def test_bad_input_sample(index):
    cases, x = _bad_cases()
    arg, exc, kwargs = cases[index]
    logits = kwargs.pop("logits", x)
    mask = kwargs.pop("mask", None)
    with pytest.raises(exc, match=f"`{arg}`"):
        gfn_fast.sample_actions(logits, mask, **kwargs)


def test_bad_input_log_prob():
    x = torch.randn(3, 5)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 2] = False
    with pytest.raises(ValueError, match="`actions`"):
        gfn_fast.action_log_prob(x, torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="`actions`"):
        gfn_fast.action_log_prob(x, torch.tensor([0, 2, 1]), mask)
    with pytest.raises(ValueError, match="`actions`"):
        gfn_fast.action_log_prob(x, torch.tensor([0, 2, 1]), gfn_fast.pack_mask(mask))
    with pytest.raises(TypeError, match="`actions`"):
        gfn_fast.action_log_prob(x, torch.tensor([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="`actions`"):
        gfn_fast.action_log_prob(x, torch.tensor([0, 1]))
    with gfn_fast.validation(False):  # value checks off: no error, a -inf log-prob instead
        out = gfn_fast.action_log_prob(x, torch.tensor([0, 2, 1]), mask, backend="numba")
        assert out[1] == -math.inf


def test_validation_off_skips_value_checks():
    x = torch.randn(3, 5)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    with gfn_fast.validation(False):
        actions = gfn_fast.sample_actions(x, mask, seed=0, backend="numba")[0]
    assert ((actions >= 0) & (actions < 5)).all()


def test_pack_mask_bit_order():
    mask = torch.zeros(1, 11, dtype=torch.bool)
    mask[0, [0, 3, 8, 10]] = True
    packed = gfn_fast.pack_mask(mask)
    assert packed.tolist() == [[0b00001001, 0b00000101]]
    assert torch.equal(ref.unpack_mask(packed, 11), mask)
    assert np.array_equal(packed.numpy(), np.packbits(mask.numpy(), axis=1, bitorder="little"))


# ---- LogitScaler / LogitScaledPolicy ----

def test_logit_scaler_and_policy_head():
    scaler = gfn_fast.nn.LogitScaler(hidden=(16, 16), log_beta=True, init_identity_at=1.0)
    torch.testing.assert_close(scaler(torch.tensor([1.0])), torch.ones(1), atol=1e-6, rtol=0)
    beta = torch.rand(10) * 5 + 0.1
    assert scaler(beta).shape == (10,) and scaler(beta[:, None]).shape == (10,)
    assert scaler(2.0).shape == ()
    policy = gfn_fast.nn.LogitScaledPolicy(scaler, clip=(-20.0, 20.0))
    logits, mask = _inputs(10, 7)
    logits.requires_grad_()
    actions, log_pi = policy.sample(logits.detach(), beta, mask, epsilon=0.1, seed=0,
                                    backend="numba")
    log_prob = policy(logits, beta, actions, mask, backend="numba")
    torch.testing.assert_close(log_prob, log_pi)
    log_prob.sum().backward()
    assert logits.grad is not None
    assert all(p.grad is not None for p in scaler.parameters())


# Known register-spill debt, bytes per thread (tests/triton_compile.py): may not grow.
KNOWN_SPILLS = {"_sample_kernel": 300, "_log_prob_kernel": 8}


# ---- ahead-of-time compilation of every Triton specialisation ----

def _triton_cases():
    ptr = "*fp32"
    cases = []
    common = {"width": "i32", "stride_r": "i64", "stride_a": "i64", "stride_mr": "i64",
              "stride_ma": "i64", "stride_scale": "i64", "stride_inv_t": "i64"}
    for acc, dt in (("tl.float32", "fp32"), ("tl.float32", "bf16"), ("tl.float32", "fp16"),
                    ("tl.float64", "fp64")):
        a = "*fp64" if acc == "tl.float64" else ptr
        for has_mask, packed in ((False, False), (True, False), (True, True)):
            for split in (False, True):
                flags = dict(HAS_MASK=has_mask, PACKED=packed, HAS_SCALE=True, HAS_TEMP=True,
                             HAS_CLIP=True, SPLIT=split, ACC=acc)
                types = dict(common, logits_ptr=f"*{dt}", mask_ptr="*u8", scale_ptr=a,
                             inv_t_ptr=a, eps_ptr=a, clip_ptr=a, actions_ptr="*i64",
                             log_pi_ptr=a, log_mu_ptr=a, entropy_ptr=a, lse_ptr=a,
                             part_f_ptr=a, part_i_ptr="*i64", rows_total="i32",
                             stride_eps="i64", chunk_pairs="i32", splits="i32", seed_lo="i32",
                             seed_hi="i32", off_lo="i32", off_hi="i32")
                cases.append(("_sample_kernel", types, dict(flags, WANT_MU=True, WANT_H=True,
                                                            BLOCK_R=4, BLOCK_P=128)))
                types = dict(common, logits_ptr=f"*{dt}", actions_ptr="*i64", mask_ptr="*u8",
                             scale_ptr=a, inv_t_ptr=a, clip_ptr=a, log_pi_ptr=a, lse_ptr=a,
                             part_ptr=a, rows_total="i32", chunk="i32", splits="i32")
                cases.append(("_log_prob_kernel", types, dict(flags, BLOCK_R=4, BLOCK_A=256)))
            types = dict(common, grad_ptr=a, logits_ptr=f"*{dt}", actions_ptr="*i64",
                         mask_ptr="*u8", scale_ptr=a, inv_t_ptr=a, clip_ptr=a, lse_ptr=a,
                         grad_logits_ptr=f"*{dt}", grad_scale_ptr=a, rows_total="i32",
                         stride_gr="i64", stride_ga="i64", chunk="i32", splits="i32")
            flags = dict(HAS_MASK=has_mask, PACKED=packed, HAS_SCALE=True, HAS_TEMP=True,
                         HAS_CLIP=True, NEED_LOGITS=True, NEED_SCALE=True, ACC=acc)
            cases.append(("_log_prob_backward_kernel", types, dict(flags, BLOCK_R=4,
                                                                   BLOCK_A=256)))
    plain = dict(HAS_MASK=False, PACKED=False, HAS_SCALE=False, HAS_TEMP=False, HAS_CLIP=False,
                 SPLIT=False, ACC="tl.float32")
    types = dict(common, logits_ptr="*fp32", mask_ptr="*u8", scale_ptr=ptr, inv_t_ptr=ptr,
                 eps_ptr=ptr, clip_ptr=ptr, actions_ptr="*i64", log_pi_ptr=ptr, log_mu_ptr=ptr,
                 entropy_ptr=ptr, lse_ptr=ptr, part_f_ptr=ptr, part_i_ptr="*i64",
                 rows_total="i32", stride_eps="i64", chunk_pairs="i32", splits="i32",
                 seed_lo="i32", seed_hi="i32", off_lo="i32", off_hi="i32")
    cases.append(("_sample_kernel", types, dict(plain, WANT_MU=False, WANT_H=False, BLOCK_R=64,
                                                BLOCK_P=4)))
    return cases


def test_triton_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    from tests.triton_compile import compile_in_subprocess

    compile_in_subprocess("gfn_fast.kernels.sampling", _triton_cases(), timeout=1200,
                          known_spills=KNOWN_SPILLS)


# ------------------------------------------------------- audit: reference gradients and entropy

@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference-cpu"),
                                            *BACKENDS])
def test_scale_gradient_ignores_infinite_logits_it_does_not_touch(backend, device):
    """d log pi / d scale = l_a - sum_j pi_j l_j over the entries that move with the scale. A
    masked -inf logit, an allowed -inf logit where the clip binds, and an allowed -inf logit
    with no clip (probability 0 at every scale > 0) do not: the reference formed 0 * inf = NaN
    for all three and every kernel for the last. Exact values from the finite entries."""
    kw = dict(dtype=torch.float64, device=device)
    logits = torch.tensor([[0.3, -math.inf, 1.0, -0.5]], **kw)
    action = torch.tensor([2], device=device)
    free = torch.tensor([0.3, 1.0, -0.5], dtype=torch.float64)
    pi = torch.softmax(1.5 * free, 0)
    masked_exact = (1.0 - (pi * free).sum()).item()
    clipped_z = torch.tensor([0.45, -20.0, 1.5, -0.75], dtype=torch.float64)
    clipped_exact = (1.0 - (torch.softmax(clipped_z, 0)[[0, 2, 3]] * free).sum()).item()
    for mask, clip, exact in ((torch.tensor([[True, False, True, True]], device=device), None,
                               masked_exact), (None, (-20.0, 20.0), clipped_exact),
                              (None, None, masked_exact)):
        scale = torch.tensor(1.5, **kw).requires_grad_(True)
        log_pi = gfn_fast.action_log_prob(logits, action, mask, scale=scale, clip=clip,
                                          backend=backend)
        (grad,) = torch.autograd.grad(log_pi.sum(), scale)
        assert grad.item() == pytest.approx(exact, rel=1e-9, abs=0), (mask, clip)
        scale = torch.tensor(1.5, **kw).requires_grad_(True)
        _, log_pi = gfn_fast.sample_actions(logits, mask, scale=scale, clip=clip, seed=3,
                                            backend=backend)
        assert torch.autograd.grad(log_pi.sum(), scale)[0].isfinite()


@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference-cpu"),
                                            *BACKENDS])
def test_only_log_pi_has_a_gradient_and_nan_entropy_stays_nan(backend, device):
    """log_mu and entropy come without a gradient on every backend (the reference had one, so
    an entropy bonus changed the gradient with the backend), and a NaN logit in an allowed
    position gives a NaN entropy (the reference's p > 0 test made it 0)."""
    logits = torch.tensor([[0.5, 0.1, -1.0], [0.5, math.nan, -1.0]], dtype=torch.float64,
                          device=device, requires_grad=True)
    _, log_pi, log_mu, entropy = gfn_fast.sample_actions(
        logits, epsilon=0.1, seed=0, return_log_mu=True, return_entropy=True, backend=backend)
    assert log_pi.requires_grad and not log_mu.requires_grad and not entropy.requires_grad
    assert entropy[0].isfinite() and entropy[1].isnan()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("as_tensor", [False, True])
def test_log_mu_uses_the_exploration_rate_the_draws_follow(backend, device, as_tensor):
    """A row explores when its coin's top 24 bits, as k / 2^24, fall below epsilon: with
    probability ceil(epsilon 2^24) / 2^24 (2^-24 for epsilon = 1e-9, 60 times more). log mu
    was computed with epsilon itself, so importance weights were off by that factor; epsilon
    is now rounded up to the coin's resolution for both."""
    logits = torch.tensor([[0.0, -40.0, 1.5]] * 4, dtype=torch.float64, device=device)
    for epsilon, rate in ((1e-9, 2.0 ** -24), (0.3, math.ceil(0.3 * 2**24) / 2**24),
                          (0.0, 0.0), (1.0, 1.0)):
        eps = torch.full((4,), epsilon, dtype=torch.float64, device=device) if as_tensor \
            else epsilon
        actions, _, log_mu = gfn_fast.sample_actions(
            logits, epsilon=eps, seed=3, return_log_mu=True, backend=backend)
        pi = torch.softmax(logits, 1).gather(1, actions[:, None]).squeeze(1)
        expected = torch.log((1 - rate) * pi + rate / 3)
        # float64: at 1e-9 the two rates differ by ~1e-7 in log mu
        torch.testing.assert_close(log_mu, expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_a_temperature_with_an_infinite_reciprocal_is_refused(backend, device):
    """The kernels multiply by 1 / temperature in the compute dtype; below 2 / float32 max
    (~5.9e-39) that overflowed to inf and gave the first allowed action with log pi NaN. Such
    temperatures are refused; float64 logits take them."""
    logits = torch.tensor([[1e-3, 2e-3, -1.0]], device=device)
    for temperature in (1e-39, torch.tensor([1e-39], device=device)):
        with pytest.raises(ValueError, match="`temperature` must be >= 5.88e-39"):
            gfn_fast.sample_actions(logits, temperature=temperature, seed=0, backend=backend)
        with pytest.raises(ValueError, match="`temperature` must be >= 5.88e-39"):
            gfn_fast.action_log_prob(logits, torch.tensor([1], device=device),
                                     temperature=temperature, backend=backend)
    actions, log_pi = gfn_fast.sample_actions(logits, temperature=1e-37, seed=0,
                                              backend=backend)
    assert actions.tolist() == [1] and log_pi.tolist() == [0.0]
    actions, log_pi = gfn_fast.sample_actions(logits.double(), temperature=1e-39, seed=0,
                                              backend=backend)
    assert actions.tolist() == [1] and log_pi.tolist() == [0.0]


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_log_prob_of_strided_and_expanded_actions(backend, device):
    """int64 actions were handed to the Triton and CUDA kernels with their strides, which read
    action r at actions_ptr + r: a step-sliced or an expanded actions tensor gave other rows'
    log-probs and gradients (an expanded one read past its one element)."""
    logits, mask = _inputs(6, 9, device=device, mask_kind="none")
    buffer = torch.tensor([0, 7, 1, 7, 2, 7, 3, 7, 4, 7, 8, 7], device=device)
    for actions in (buffer[::2], torch.tensor([3], device=device).expand(6)):
        leaf = logits.clone().requires_grad_(True)
        got = gfn_fast.action_log_prob(leaf, actions, backend=backend)
        (grad,) = torch.autograd.grad(got.sum(), [leaf])
        leaf_ref = logits.clone().requires_grad_(True)
        want = gfn_fast.action_log_prob(leaf_ref, actions.contiguous(), backend="reference")
        (grad_ref,) = torch.autograd.grad(want.sum(), [leaf_ref])
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(grad, grad_ref, rtol=2e-5, atol=2e-5)


def test_rows_past_the_philox_row_word_are_refused():
    """A row is one 32-bit word of the Philox counter: in a batch of 2^32 rows or more, row
    r + 2^32 drew row r's noise on the reference and Triton (Numba passed the high bits on).
    Refused before anything is read (the logits here are a stride-0 view, no memory)."""
    logits = torch.zeros(1, 3).expand(2**32, 3)
    with pytest.raises(ValueError, match="fewer than 2\\^32 rows"):
        gfn_fast.sample_actions(logits, seed=0, backend="numba")
    with pytest.raises(ValueError, match="fewer than 2\\^32 rows"):
        gfn_fast.action_log_prob(logits, torch.zeros(1, dtype=torch.long).expand(2**32),
                                 backend="numba")
