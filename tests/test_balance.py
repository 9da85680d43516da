"""Trajectory balance and VarGrad: every backend against the float64 reference."""

import math

import pytest
import torch
from conftest import backend_params
from triton_compile import compile_in_subprocess

import gfn_fast

LOSSES = ["squared", "half_squared", "absolute", "huber(0.5)", "shifted_cosh", "linex(-0.7)"]
REDUCTIONS = ["mean", "sum", "none"]
LAYOUTS = ["padded", "time_major", "strided", "packed"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (forward rtol, gradient rtol) per input dtype: outputs accumulate in float32 (float64 for
# float64); gradients come back in the input dtype, so half types carry its rounding.
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-10, 1e-10),
             torch.float16: (1e-5, 2e-3), torch.bfloat16: (1e-5, 1.6e-2)}


def make_batch(batch, steps, dtype, layout, *, device="cpu", lengths=None, with_pb=True,
               log_z="scalar", beta="vector", scale=3.0):
    """Random inputs in the requested layout (fresh values, padding filled with NaN so that a
    kernel reading it poisons the result)."""
    if lengths is None:
        lengths = torch.randint(1, steps + 1, (batch,), device=device)
    valid = torch.arange(steps, device=device)[None, :] < lengths[:, None]

    def steps_tensor():
        values = (torch.randn(batch, steps, device=device, dtype=torch.float64) * scale)
        values = values.masked_fill(~valid, math.nan).to(dtype)
        if layout == "padded":
            return values.contiguous()
        if layout == "time_major":
            return values.T.contiguous().T
        if layout == "strided":
            wide = torch.full((batch, 2 * steps), math.nan, device=device, dtype=dtype)
            wide[:, ::2] = values
            return wide[:, ::2]
        return values[valid]  # packed, flat

    inputs = {"log_pf": steps_tensor(), "log_pb": steps_tensor() if with_pb else None}
    inputs["log_reward"] = torch.randn(batch, device=device, dtype=torch.float64).to(
        torch.float32 if dtype != torch.float64 else dtype) * 2
    if log_z == "scalar":
        inputs["log_z"] = torch.tensor(0.7, device=device, dtype=inputs["log_reward"].dtype)
    elif log_z == "vector":
        inputs["log_z"] = torch.randn(batch, device=device, dtype=inputs["log_reward"].dtype)
    if beta == "vector":
        inputs["beta"] = torch.rand(batch, device=device, dtype=inputs["log_reward"].dtype) + 0.5
    elif beta == "scalar":
        inputs["beta"] = torch.tensor(1.5, device=device, dtype=inputs["log_reward"].dtype)
    if layout == "packed":
        cu = torch.zeros(batch + 1, dtype=torch.int64, device=device)
        cu[1:] = torch.cumsum(lengths, 0)
        layout_args = {"cu_seqlens": cu}
    else:
        layout_args = {"lengths": lengths}
    return inputs, layout_args


def leaves(inputs, dtype=None):
    """Fresh leaf copies that require grad (optionally cast, e.g. to float64 for the reference)."""
    out = {}
    for name, value in inputs.items():
        if value is None:
            out[name] = None
            continue
        copy = value.detach().clone() if dtype is None else value.detach().to(dtype)
        out[name] = copy.requires_grad_(True)
    return out


def run(op, inputs, layout_args, backend, **kwargs):
    """Loss and the gradient of sum(loss * w) w.r.t. every tensor input."""
    if op is gfn_fast.trajectory_balance:
        loss = op(inputs["log_pf"], inputs["log_pb"], inputs["log_reward"], inputs["log_z"],
                  beta=inputs.get("beta"), backend=backend, **layout_args, **kwargs)
    else:
        loss = op(inputs["log_pf"], inputs["log_pb"], inputs["log_reward"],
                  beta=inputs.get("beta"), backend=backend, **layout_args, **kwargs)
    weights = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    names = [n for n, v in inputs.items() if v is not None and v.requires_grad
             and not (op is gfn_fast.log_partition_variance and n == "log_z")]
    grads = torch.autograd.grad((loss * weights.to(loss.device)).sum(),
                                [inputs[n] for n in names], allow_unused=True)
    return loss.detach(), dict(zip(names, grads, strict=True))


def assert_close(actual, expected, rtol, what, slack=None):
    """|actual - expected| <= rtol * max(1, max |expected|) (+ `slack`, elementwise, when given),
    NaN equal to NaN."""
    actual = actual.to(torch.float64).cpu()
    expected = expected.to(torch.float64).cpu()
    scale = expected.abs().max().clamp(min=1.0)
    if slack is None:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale,
                                   equal_nan=True, msg=lambda m: f"{what}: {m}")
        return
    error = (actual - expected).abs()
    allowed = rtol * scale + slack
    bad = ~((actual.isnan() & expected.isnan()) | (error <= allowed))
    if bool(bad.any()):
        worst = error[bad].argmax()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements off; worst error "
            f"{error[bad][worst].item():.3g} where {allowed[bad][worst].item():.3g} is allowed "
            f"(of it, {slack[bad][worst].item():.3g} from float32 accumulation)")


def check_against_reference(op, inputs, layout_args, backend, dtype, slack=None, **kwargs):
    """Loss and gradients of `backend` against the float64 reference. `slack`, when given,
    maps the reference's (loss, grads) to extra elementwise allowances {"loss": .., name: ..}."""
    loss, grads = run(op, leaves(inputs), layout_args, backend, **kwargs)
    ref_loss, ref_grads = run(op, leaves(inputs, torch.float64), layout_args, "reference",
                              **kwargs)
    extra = {} if slack is None else slack(ref_loss, ref_grads)
    rtol, grad_rtol = TOLERANCE[dtype]
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(loss, ref_loss, rtol, f"{op.__name__} loss {kwargs}", extra.get("loss"))
    for name, ref in ref_grads.items():
        grad = grads[name]
        assert grad.dtype == inputs[name].dtype and grad.shape == inputs[name].shape
        tol = grad_rtol if name in ("log_pf", "log_pb") else rtol
        assert_close(grad, ref, tol, f"{op.__name__} d/d{name} {kwargs}", extra.get(name))
        if name in ("log_pf", "log_pb") and "lengths" in layout_args:
            steps = torch.arange(grad.shape[1], device=grad.device)
            padding = steps[None, :] >= layout_args["lengths"][:, None]
            assert bool((grad[padding] == 0).all()), "padding must get zero gradient"


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference_over_losses_and_reductions(backend, device, layout, dtype):
    # Half-precision gradients of the exponential losses overflow (> 65504) for |d| >~ 11, as
    # they must; keep the residuals small enough that every gradient is representable.
    scale = 0.2 if dtype in (torch.float16, torch.bfloat16) else 3.0
    inputs, layout_args = make_batch(37, 11, dtype, layout, device=device, scale=scale)
    for op in (gfn_fast.trajectory_balance, gfn_fast.log_partition_variance):
        for loss in LOSSES:
            for reduction in REDUCTIONS:
                check_against_reference(op, inputs, layout_args, backend, dtype, loss=loss,
                                        reduction=reduction, log_reward_clip_min=-1.0)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("log_z", ["scalar", "vector"])
@pytest.mark.parametrize("beta", [None, "scalar", "vector"])
@pytest.mark.parametrize("with_pb", [True, False])
def test_optional_inputs(backend, device, log_z, beta, with_pb):
    for layout in ("padded", "packed"):
        inputs, layout_args = make_batch(23, 9, torch.float32, layout, device=device,
                                         with_pb=with_pb, log_z=log_z, beta=beta)
        for op in (gfn_fast.trajectory_balance, gfn_fast.log_partition_variance):
            check_against_reference(op, inputs, layout_args, backend, torch.float32)


@pytest.mark.parametrize("backend,device", backend_params())
def test_fixed_backward_policy_gets_no_gradient(backend, device):
    """log_pb that does not require grad (a fixed P_B): no gradient for it, the same gradients
    for everything else as when it does."""
    for layout in ("padded", "packed"):
        inputs, layout_args = make_batch(11, 6, torch.float32, layout, device=device)
        for op in (gfn_fast.trajectory_balance, gfn_fast.log_partition_variance):
            args = [inputs["log_pf"], inputs["log_pb"], inputs["log_reward"]]
            if op is gfn_fast.trajectory_balance:
                args.append(inputs["log_z"])
            grads = {}
            for pb_grad in (True, False):
                leaves = [a.detach().clone().requires_grad_(a is not args[1] or pb_grad)
                          for a in args]
                loss = op(*leaves, backend=backend, **layout_args)
                loss.backward()
                grads[pb_grad] = [leaf.grad for leaf in leaves]
            assert grads[False][1] is None and grads[True][1] is not None
            for with_pb, without_pb in zip(grads[True], grads[False], strict=True):
                if without_pb is not None:
                    assert torch.equal(with_pb, without_pb)


ODD_SHAPES = {
    "B=1": (1, 7, None),
    "T=1": (9, 1, None),
    "all lengths 1": (13, 6, "ones"),
    "all lengths T": (13, 6, "full"),
    "T=1000": (5, 1000, None),
    "B=100000": (100_000, 3, None),
}


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("shape", list(ODD_SHAPES), ids=list(ODD_SHAPES))
def test_odd_shapes(backend, device, shape):
    batch, steps, kind = ODD_SHAPES[shape]
    lengths = None
    if kind == "ones":
        lengths = torch.ones(batch, dtype=torch.int64, device=device)
    elif kind == "full":
        lengths = torch.full((batch,), steps, dtype=torch.int64, device=device)
    for layout in ("padded", "time_major", "packed"):
        inputs, layout_args = make_batch(batch, steps, torch.float32, layout, device=device,
                                         lengths=lengths)
        check_against_reference(gfn_fast.trajectory_balance, inputs, layout_args, backend,
                                torch.float32)


@pytest.mark.parametrize("backend,device", backend_params())
def test_mask_equals_lengths_and_default_is_full(backend, device):
    inputs, layout_args = make_batch(17, 8, torch.float64, "padded", device=device)
    lengths = layout_args["lengths"]
    mask = torch.arange(8, device=device)[None, :] < lengths[:, None]
    args = (inputs["log_pf"], inputs["log_pb"], inputs["log_reward"], inputs["log_z"])
    by_lengths = gfn_fast.trajectory_balance(*args, lengths=lengths, backend=backend)
    by_mask = gfn_fast.trajectory_balance(*args, mask=mask, backend=backend)
    torch.testing.assert_close(by_mask, by_lengths, rtol=0, atol=0)
    full, _ = make_batch(17, 8, torch.float64, "padded", device=device,
                         lengths=torch.full((17,), 8, device=device))
    args = (full["log_pf"], full["log_pb"], full["log_reward"], full["log_z"])
    torch.testing.assert_close(gfn_fast.trajectory_balance(*args, backend=backend),
                               gfn_fast.trajectory_balance(*args, lengths=torch.full(
                                   (17,), 8, device=device), backend=backend), rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("loss", ["squared", "huber(0.8)", "linex(0.6)", "shifted_cosh"])
def test_gradcheck_float64(backend, device, loss):
    for layout in ("padded", "packed"):
        inputs, layout_args = make_batch(6, 5, torch.float64, layout, device=device,
                                         log_z="vector", beta="vector", scale=0.5)
        names = ["log_pf", "log_pb", "log_reward", "log_z", "beta"]
        tensors = [inputs[n].detach().clone().requires_grad_(True) for n in names]

        def tb(log_pf, log_pb, log_reward, log_z, beta, layout_args=layout_args):
            return gfn_fast.trajectory_balance(log_pf, log_pb, log_reward, log_z, beta=beta,
                                               loss=loss, backend=backend, **layout_args)

        def vargrad(log_pf, log_pb, log_reward, log_z, beta, layout_args=layout_args):
            return gfn_fast.log_partition_variance(log_pf, log_pb, log_reward, beta=beta,
                                                   loss=loss, reduction="none",
                                                   backend=backend, **layout_args)

        assert torch.autograd.gradcheck(tb, tensors, eps=1e-6, atol=1e-7)
        assert torch.autograd.gradcheck(vargrad, tensors[:3] + [tensors[3], tensors[4]],
                                        eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend,device", backend_params())
def test_clipped_reward_gets_no_gradient_and_neg_inf_reward(backend, device):
    log_pf = torch.randn(4, 3, device=device, requires_grad=True)
    log_reward = torch.tensor([-5.0, 0.0, -math.inf, 1.0], device=device, requires_grad=True)
    beta = torch.full((4,), 2.0, device=device, requires_grad=True)
    loss = gfn_fast.trajectory_balance(log_pf, None, log_reward, 0.0, beta=beta,
                                       log_reward_clip_min=-2.0, backend=backend)
    assert torch.isfinite(loss)
    grad_reward, grad_beta = torch.autograd.grad(loss, [log_reward, beta])
    assert grad_reward[0] == 0 and grad_reward[2] == 0
    assert grad_reward[1] != 0 and grad_reward[3] != 0
    d0 = log_pf[0].sum() - 2.0 * -2.0
    torch.testing.assert_close(grad_beta[0], (2 * d0 / 4 * 2.0).detach())
    unclipped = gfn_fast.trajectory_balance(log_pf, None, log_reward.detach(), 0.0,
                                            backend=backend)
    assert unclipped == math.inf


@pytest.mark.parametrize("backend,device", backend_params())
def test_nan_propagates_and_check_finite_raises(backend, device):
    inputs, layout_args = make_batch(5, 4, torch.float32, "padded", device=device,
                                     lengths=torch.full((5,), 4, device=device))
    inputs["log_pf"][2, 1] = math.nan
    args = (inputs["log_pf"], inputs["log_pb"], inputs["log_reward"], inputs["log_z"])
    assert torch.isnan(gfn_fast.trajectory_balance(*args, backend=backend, **layout_args))
    per_row = gfn_fast.trajectory_balance(*args, reduction="none", backend=backend,
                                          **layout_args)
    assert torch.isnan(per_row[2]) and bool(torch.isfinite(per_row[[0, 1, 3, 4]]).all())
    with pytest.raises(ValueError, match="`log_pf`.*NaN"):
        gfn_fast.trajectory_balance(*args, check_finite=True, backend=backend, **layout_args)
    reward = inputs["log_reward"].clone()
    reward[0] = math.nan
    with pytest.raises(ValueError, match="`log_reward`.*NaN"):
        gfn_fast.trajectory_balance(inputs["log_pb"], None, reward, 0.0, check_finite=True,
                                    backend=backend, **layout_args)


@pytest.mark.parametrize("backend,device", backend_params())
def test_linex_gradient_where_exp_underflows(backend, device):
    """LinEx: d rho / d d = expm1(a d) / a -> -1/a for a d far below 0. Triton's expm1 gave -0
    where exp(a d) underflows (a residual of -150 in float32, -800 in float64), drifted from -1
    where it is subnormal, and gave NaN for an impossible transition (log_pf = -inf)."""
    for dtype, shift in ((torch.float32, -150.0), (torch.float32, -103.0),
                         (torch.float64, -800.0), (torch.float64, -740.0)):
        gen = torch.Generator().manual_seed(0)
        log_pf, log_pb = (torch.randn(3, 4, dtype=dtype, generator=gen) for _ in range(2))
        log_reward = torch.randn(3, dtype=dtype, generator=gen)
        log_reward[0] -= shift
        grads = []
        for name, dev in ((backend, device), ("reference", "cpu")):
            pf = log_pf.to(dev).requires_grad_(True)
            log_z = torch.zeros((), dtype=dtype, device=dev, requires_grad=True)
            loss = gfn_fast.trajectory_balance(pf, log_pb.to(dev), log_reward.to(dev), log_z,
                                               loss=("linex", 1.0), reduction="sum",
                                               backend=name)
            grads.append([g.cpu() for g in torch.autograd.grad(loss, [pf, log_z])])
        assert grads[1][0][0].eq(-1.0).all()
        for got, want in zip(*grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    log_pf = torch.full((2, 3), -0.5, dtype=torch.float64, device=device)
    log_pf[0, 1] = -math.inf
    pf = log_pf.requires_grad_(True)
    loss = gfn_fast.trajectory_balance(pf, None, torch.zeros(2, dtype=torch.float64,
                                                             device=device), 0.0,
                                       loss=("linex", 0.5), reduction="sum", backend=backend)
    (grad,) = torch.autograd.grad(loss, [pf])
    assert loss == math.inf and grad[0].eq(-2.0).all()


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("loss", ["absolute", "huber(0.5)"])
def test_nan_residual_has_the_references_gradient(backend, device, loss):
    """A NaN residual: NaN loss, and gradient 0 there (torch.sign(NaN) = 0 in the reference, as
    in the Triton and CUDA kernels; Numba's sign gave NaN, so CPU and GPU runs differed)."""
    log_pf = torch.full((2, 3), -0.5, dtype=torch.float64)
    log_pf[0, 1] = math.nan
    results = []
    for name, dev in ((backend, device), ("reference", "cpu")):
        pf = log_pf.to(dev).requires_grad_(True)
        log_reward = torch.full((2,), -5.0, dtype=torch.float64, device=dev, requires_grad=True)
        value = gfn_fast.trajectory_balance(pf, None, log_reward, 0.0, loss=loss,
                                            reduction="sum", backend=name)
        results.append([value.detach().cpu()] + [g.cpu() for g in torch.autograd.grad(
            value, [pf, log_reward])])
    assert results[1][0].isnan() and results[1][1][0].eq(0).all()
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("backend,device", backend_params())
def test_deterministic(backend, device):
    inputs, layout_args = make_batch(301, 33, torch.float32, "padded", device=device)
    first = run(gfn_fast.trajectory_balance, leaves(inputs), layout_args, backend)
    second = run(gfn_fast.trajectory_balance, leaves(inputs), layout_args, backend)
    assert torch.equal(first[0], second[0])
    for name in first[1]:
        assert torch.equal(first[1][name], second[1][name])


@pytest.mark.parametrize("backend,device", backend_params())
def test_validation_off_never_reads_out_of_bounds(backend, device):
    log_pf = torch.randn(4, 5, device=device)
    bad_lengths = torch.tensor([0, 9, -3, 5], device=device)
    with gfn_fast.validation(False):
        loss = gfn_fast.trajectory_balance(log_pf, None, torch.zeros(4, device=device), 0.0,
                                           lengths=bad_lengths, reduction="none",
                                           backend=backend)
    expected = torch.stack([torch.tensor(0.0), log_pf[1].sum().cpu(), torch.tensor(0.0),
                            log_pf[3].sum().cpu()]) ** 2
    torch.testing.assert_close(loss.cpu(), expected)
    with pytest.raises(ValueError, match="`lengths`"):
        gfn_fast.trajectory_balance(log_pf, None, torch.zeros(4, device=device), 0.0,
                                    lengths=bad_lengths, backend=backend)


def test_torch_compile_fullgraph_and_opcheck():
    inputs, layout_args = make_batch(12, 6, torch.float32, "padded")
    tensors = leaves(inputs)

    def step(log_pf, log_pb, log_reward, log_z, beta):
        tb = gfn_fast.trajectory_balance(log_pf, log_pb, log_reward, log_z, beta=beta,
                                         backend="numba", **layout_args)
        vg = gfn_fast.log_partition_variance(log_pf, log_pb, log_reward, beta=beta,
                                             backend="numba", **layout_args)
        return tb + vg

    args = [tensors[n] for n in ("log_pf", "log_pb", "log_reward", "log_z", "beta")]
    compiled = torch.compile(step, fullgraph=True)
    eager_loss = step(*args)
    eager_grads = torch.autograd.grad(eager_loss, args)
    compiled_loss = compiled(*args)
    compiled_grads = torch.autograd.grad(compiled_loss, args)
    torch.testing.assert_close(compiled_loss, eager_loss)
    for got, expected in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, expected)

    from gfn_fast.balance import _tb_forward
    lengths = layout_args["lengths"]
    for log_z, reduction in ((args[3], 0), (None, 2)):
        torch.library.opcheck(_tb_forward.op, (args[0], args[1], lengths, args[2], log_z, args[4],
                                            False, -1.0, 0, 0.0, reduction, "numba"))


BAD_INPUTS = {
    "shape mismatch": (dict(log_pb=lambda a: a["log_pb"][:, :-1]), ValueError, "`log_pb`"),
    "lengths zero": (dict(lengths=lambda a: a["lengths"] * 0), ValueError, "`lengths`"),
    "lengths above T": (dict(lengths=lambda a: a["lengths"] + 100), ValueError, "`lengths`"),
    "lengths shape": (dict(lengths=lambda a: a["lengths"][:-1]), ValueError, "`lengths`"),
    "float lengths": (dict(lengths=lambda a: a["lengths"].float()), TypeError, "`lengths`"),
    "integer log_pf": (dict(log_pf=lambda a: a["log_pf"].long()), TypeError, "`log_pf`"),
    "integer log_z": (dict(log_z=lambda a: torch.tensor(1)), TypeError, "`log_z`"),
    "log_z shape": (dict(log_z=lambda a: torch.zeros(3)), ValueError, "`log_z`"),
    "log_reward shape": (dict(log_reward=lambda a: a["log_reward"][:-1]), ValueError,
                         "`log_reward`"),
    "beta shape": (dict(beta=lambda a: torch.ones(2, 2)), ValueError, "`beta`"),
    "dtype mismatch": (dict(log_pb=lambda a: a["log_pb"].double()), TypeError, "`log_pb`"),
    "device mismatch": (dict(log_reward=lambda a: a["log_reward"].to("meta")), ValueError,
                        "`log_reward`"),
    "unknown loss": (dict(loss=lambda a: "cubic"), ValueError, "`loss`"),
    "bad huber": (dict(loss=lambda a: "huber(-1)"), ValueError, "`loss`"),
    "infinite huber": (dict(loss=lambda a: "huber(inf)"), ValueError, "`loss`"),
    "bool huber": (dict(loss=lambda a: ("huber", True)), ValueError, "`loss`"),
    "unknown reduction": (dict(reduction=lambda a: "max"), ValueError, "`reduction`"),
    "unknown backend": (dict(backend=lambda a: "opencl"), ValueError, "`backend`"),
    "nan clip": (dict(log_reward_clip_min=lambda a: math.nan), ValueError,
                 "`log_reward_clip_min`"),
    "mask not prefix": (dict(lengths=lambda a: None, mask=lambda a: torch.tensor(
        [[True, False, True]] * 4)), ValueError, "`mask`"),
    "mask and lengths": (dict(mask=lambda a: torch.ones(4, 3, dtype=torch.bool)), ValueError,
                         "`mask`"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_naming_the_argument(case):
    changes, error, name = BAD_INPUTS[case]
    args = {"log_pf": torch.randn(4, 3), "log_pb": torch.randn(4, 3),
            "log_reward": torch.randn(4), "log_z": torch.tensor(0.0),
            "lengths": torch.tensor([1, 2, 3, 3])}
    for key, make in changes.items():
        args[key] = make(args)
    log_pf, log_pb, log_reward, log_z = (args.pop(k) for k in
                                         ("log_pf", "log_pb", "log_reward", "log_z"))
    with pytest.raises(error, match=name):
        gfn_fast.trajectory_balance(log_pf, log_pb, log_reward, log_z, **args)


PACKED_BAD = {
    "not increasing": ([0, 2, 2, 5], "strictly increasing"),
    "wrong end": ([0, 2, 3, 4], "must end at"),
    "not starting at 0": ([1, 2, 3, 5], "start at 0"),
}


@pytest.mark.parametrize("case", list(PACKED_BAD), ids=list(PACKED_BAD))
def test_bad_cu_seqlens(case):
    cu, message = PACKED_BAD[case]
    with pytest.raises(ValueError, match=f"`cu_seqlens`.*{message}"):
        gfn_fast.trajectory_balance(torch.randn(5), None, torch.randn(3), 0.0,
                                    cu_seqlens=torch.tensor(cu))
    with pytest.raises(ValueError, match="`log_pf`"):
        gfn_fast.trajectory_balance(torch.randn(3, 5), None, torch.randn(3), 0.0,
                                    cu_seqlens=torch.tensor([0, 1, 2, 5]))


def test_backend_dispatch(monkeypatch):
    report = gfn_fast.backends()
    assert set(report) == {"cuda", "triton", "numba", "reference"}
    assert report["reference"]["available"] and "cpu" in report["numba"]["devices"]
    log_pf, reward = torch.randn(3, 2), torch.randn(3)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend 'cuda' cannot run on cpu"):
            gfn_fast.trajectory_balance(log_pf, None, reward, 0.0, backend="cuda")
    monkeypatch.setenv("GFN_FAST_BACKEND", "reference")
    from gfn_fast import _backends
    assert _backends.resolve("op", None, torch.device("cpu")) == "reference"
    assert _backends.resolve("op", "numba", torch.device("cpu")) == "numba"
    monkeypatch.delenv("GFN_FAST_BACKEND")
    assert _backends.resolve("op", None, torch.device("cpu")) == "numba"
    monkeypatch.setattr(_backends, "_import_status",
                        lambda name: (name != "numba", "numba missing"))
    monkeypatch.setattr(_backends, "_warned", set())
    with pytest.warns(RuntimeWarning, match="numba unavailable"):
        assert _backends.resolve("op", None, torch.device("cpu")) == "reference"


def test_cli_info_lists_backends():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "gfn_fast", "info"], capture_output=True,
                         text=True, check=True).stdout
    for name in ("cuda", "triton", "numba", "reference"):
        assert name in out


# Known register-spill debt, bytes per thread (tests/triton_compile.py): may not grow.
KNOWN_SPILLS = {"_rows_forward_kernel": 468}


def _triton_cases():
    cases = []
    types = {"lengths_ptr": "*i64", "batch": "i64", "steps": "i64", "clip_min": "fp64",
             "loss_param": "fp64", "weight": "fp64"}
    for name in ("stride_pf_b", "stride_pf_t", "stride_pb_b", "stride_pb_t", "stride_log_z",
                 "stride_beta", "stride_grad_rows", "stride_gpf_b", "stride_gpf_t",
                 "stride_gpb_b", "stride_gpb_t"):
        types[name] = "i64"
    for dtype, acc in (("fp32", "fp32"), ("fp64", "fp64"), ("fp16", "fp32"), ("bf16", "fp32")):
        step_types = dict(types, pf_ptr="*" + dtype, pb_ptr="*" + dtype, grad_pf_ptr="*" + dtype,
                          grad_pb_ptr="*" + dtype)
        for name in ("log_reward_ptr", "log_z_ptr", "beta_ptr", "d_ptr", "loss_ptr",
                     "grad_rows_ptr", "grad_row_ptr", "grad_log_reward_ptr", "grad_beta_ptr"):
            step_types[name] = "*" + acc
        tl_acc = "tl.float64" if acc == "fp64" else "tl.float32"
        for loss in range(6):
            flag = loss % 2 == 0
            cases.append(("_rows_forward_kernel", step_types, dict(
                HAS_PB=flag, HAS_LOG_Z=not flag, HAS_BETA=flag, PACKED=loss in (1, 4),
                APPLY_LOSS=loss != 3, LOSS=loss, ACC=tl_acc, BLOCK_B=32, BLOCK_T=128)))
            cases.append(("_rows_backward_kernel", step_types, dict(
                HAS_PB=not flag, HAS_BETA=flag, PACKED=loss in (0, 5), FROM_RESIDUAL=loss != 2,
                NEED_LOG_REWARD=flag, NEED_BETA=not flag, LOSS=loss, ACC=tl_acc, BLOCK_B=16,
                BLOCK_T=64)))
    return cases


def test_triton_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    compile_in_subprocess("gfn_fast.kernels.balance", _triton_cases(), arch=90,
                          known_spills=KNOWN_SPILLS)
