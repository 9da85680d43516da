"""Detailed balance and sub-trajectory balance: every backend against the float64 reference,
over layouts (padded, time-major .T views, packed), dtypes, losses, weightings and odd shapes;
gradients (gradcheck), long-trajectory accuracy, torch.compile, opcheck, bad inputs, memory."""

import math

import pytest
import torch
from conftest import backend_params

import gfn_fast
import gfn_fast.nn
from gfn_fast import subtb as subtb_module

WEIGHTINGS = ["geometric_within", "equal_within", "geometric", "equal", "TB", "DB"]
LOSSES = ["squared", "half_squared", "absolute", "huber(0.5)", "shifted_cosh", "linex(0.7)"]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2,
             torch.float16: 1e-2}


def make_batch(batch, steps, *, lengths=None, dtype=torch.float32, device="cpu",
               layout="padded", scale=1.0, state_reward=True, with_pb=True, with_beta=True,
               seed=None):
    """Inputs in float64 (the reference's) and the same values in `dtype` laid out as asked.
    Returns (kwargs for the op in `dtype`, kwargs for the float64 reference)."""
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    if lengths is None:
        lengths = torch.randint(1, steps + 1, (batch,), generator=gen)
    lengths = torch.as_tensor(lengths, dtype=torch.int64)
    names = ["log_pf", "log_pb", "log_flow", "log_state_reward"]
    values = {n: scale * torch.randn(batch, steps, generator=gen, dtype=torch.float64)
              for n in names}
    values["log_pf"] = -values["log_pf"].abs()
    values["log_pb"] = -values["log_pb"].abs()
    if not with_pb:
        values["log_pb"] = None
    if not state_reward:
        values["log_state_reward"] = None
    log_reward = scale * torch.randn(batch, generator=gen, dtype=torch.float64)
    beta = (0.5 + torch.rand(batch, generator=gen, dtype=torch.float64)) if with_beta else None
    log_reward = log_reward.to(dtype).to(torch.float64)
    beta = beta.to(dtype).to(torch.float64) if beta is not None else None
    # round to `dtype` first so both sides see the same numbers
    rounded = {n: (v.to(dtype).to(torch.float64) if v is not None else None)
               for n, v in values.items()}
    ref = dict(rounded, log_reward=log_reward, beta=beta, lengths=lengths)
    op = {}
    for name, value in rounded.items():
        if value is None:
            op[name] = None
        elif layout == "padded":
            op[name] = value.to(dtype).to(device)
        elif layout == "time_major":
            op[name] = value.T.contiguous().to(dtype).to(device).T
        else:
            valid = torch.arange(steps)[None, :] < lengths[:, None]
            op[name] = value[valid].to(dtype).to(device)
    op.update(log_reward=log_reward.to(dtype).to(device),
              beta=None if beta is None else beta.to(dtype).to(device))
    if layout == "packed":
        op["cu_seqlens"] = torch.cat([torch.zeros(1, dtype=torch.int64),
                                      lengths.cumsum(0)]).to(device)
    else:
        op["lengths"] = lengths.to(device)
    return op, ref


def call(fn, args, **kwargs):
    args = dict(args)
    positional = [args.pop("log_pf"), args.pop("log_pb"), args.pop("log_flow"),
                  args.pop("log_reward")]
    return fn(*positional, **args, **kwargs)


def leaves(args, dtype=None):
    """Copy every floating tensor as a leaf requiring grad."""
    out = {}
    for name, value in args.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            value = value.detach().clone()
            out[name] = value.requires_grad_()
        else:
            out[name] = value
    return out


GRAD_NAMES = ["log_pf", "log_pb", "log_flow", "log_state_reward", "log_reward", "beta"]


def grads_of(args, value, upstream):
    value.backward(upstream)
    return {n: args[n].grad for n in GRAD_NAMES if args.get(n) is not None}


def compare(op_args, ref_args, fn, dtype, layout, **kwargs):
    """Value and every gradient of `fn` on op_args vs the float64 reference on ref_args."""
    op_args, ref_args = leaves(op_args), leaves(ref_args)
    value = call(fn, op_args, **kwargs)
    expected = call(fn, ref_args, backend="reference",
                    **{k: v for k, v in kwargs.items() if k != "backend"})
    tol = TOLERANCE[dtype]
    assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    lengths = ref_args["lengths"]
    valid = torch.arange(ref_args["log_pf"].shape[1])[None, :] < lengths[:, None]
    upstream = torch.randn(expected.shape, dtype=torch.float64)
    if layout == "packed" and expected.dim() == 2:  # reduction="none": flat [N] vs [B, T]
        upstream = torch.where(valid, upstream, torch.zeros_like(upstream))
        torch.testing.assert_close(value.cpu().double(), expected.detach()[valid], rtol=tol,
                                   atol=tol)
        got = grads_of(op_args, value, upstream[valid].to(value.dtype).to(value.device))
    else:
        torch.testing.assert_close(value.cpu().double(), expected.detach(), rtol=tol, atol=tol)
        got = grads_of(op_args, value, upstream.to(value.dtype).to(value.device))
    want = grads_of(ref_args, expected, upstream)
    for name in want:
        g, w = got[name].cpu().double(), want[name]
        if name in GRAD_NAMES[:4]:
            if layout == "packed":
                w = w[valid]
            else:
                assert bool((g[~valid] == 0).all()), f"{name}: padding gradient not zero"
        scale = max(1.0, float(w.abs().max()))
        torch.testing.assert_close(g, w, rtol=tol, atol=tol * scale, msg=name)


BACKENDS = backend_params()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("layout", ["padded", "time_major", "packed"])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_subtb_layouts_and_weightings(backend, device, layout, weighting):
    for dtype in (torch.float64, torch.float32):
        op, ref = make_batch(6, 9, dtype=dtype, device=device, layout=layout)
        compare(op, ref, gfn_fast.subtrajectory_balance, dtype, layout, weighting=weighting,
                lamda=0.8, log_reward_clip_min=-0.5, backend=backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("weighting", ["geometric_within", "equal", "geometric"])
def test_subtb_losses(backend, device, loss, weighting):
    op, ref = make_batch(5, 8, dtype=torch.float64, device=device, layout="time_major")
    compare(op, ref, gfn_fast.subtrajectory_balance, torch.float64, "time_major",
            weighting=weighting, loss=loss, backend=backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("layout", ["padded", "time_major", "packed"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("loss", ["squared", "huber(0.5)", "linex(0.7)"])
def test_db(backend, device, layout, reduction, loss):
    for dtype in (torch.float64, torch.float32):
        op, ref = make_batch(7, 10, dtype=dtype, device=device, layout=layout)
        compare(op, ref, gfn_fast.detailed_balance, dtype, layout, reduction=reduction,
                loss=loss, log_reward_clip_min=-0.5, backend=backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(backend, device, dtype):
    for weighting in ("geometric_within", "DB"):
        op, ref = make_batch(4, 6, dtype=dtype, device=device)
        compare(op, ref, gfn_fast.subtrajectory_balance, dtype, "padded", weighting=weighting,
                backend=backend)
    op, ref = make_batch(4, 6, dtype=dtype, device=device, layout="packed")
    compare(op, ref, gfn_fast.detailed_balance, dtype, "packed", reduction="none",
            backend=backend)


SHAPES = {
    "B1": dict(batch=1, steps=5),
    "T1": dict(batch=4, steps=1),
    "all_one": dict(batch=5, steps=6, lengths=[1] * 5),
    "all_full": dict(batch=5, steps=6, lengths=[6] * 5),
}


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_odd_shapes(backend, device, shape, weighting):
    for layout in ("padded", "packed"):
        op, ref = make_batch(**SHAPES[shape], dtype=torch.float64, device=device, layout=layout)
        compare(op, ref, gfn_fast.subtrajectory_balance, torch.float64, layout,
                weighting=weighting, backend=backend)
    op, ref = make_batch(**SHAPES[shape], dtype=torch.float64, device=device)
    compare(op, ref, gfn_fast.detailed_balance, torch.float64, "padded", reduction="none",
            backend=backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("options", [dict(with_pb=False), dict(state_reward=False),
                                     dict(with_beta=False), dict(with_pb=False,
                                                                 state_reward=False)])
def test_optional_inputs(backend, device, options):
    for weighting in ("geometric_within", "TB", "DB", "geometric"):
        op, ref = make_batch(5, 7, dtype=torch.float64, device=device, **options)
        compare(op, ref, gfn_fast.subtrajectory_balance, torch.float64, "padded",
                weighting=weighting, backend=backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_scalar_beta_and_lambda_one(backend, device):
    op, ref = make_batch(5, 7, dtype=torch.float64, device=device, with_beta=False)
    op["beta"] = torch.tensor(0.7, dtype=torch.float64, device=device)  # a 0-dim tensor
    ref["beta"] = torch.tensor(0.7, dtype=torch.float64)
    for weighting in ("geometric_within", "geometric"):
        compare(op, ref, gfn_fast.subtrajectory_balance, torch.float64, "padded",
                weighting=weighting, lamda=1.0, backend=backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("weighting", ["geometric_within", "equal_within", "equal"])
def test_long_trajectories_large_logprobs(backend, device, weighting):
    """T=1000, |log-probs| ~ 100: the O(T) running sums in float64 and float32 stay close to the
    float64 reference (a naive a_i^2 + a_j^2 - 2 a_i a_j expansion loses everything here)."""
    if backend == "triton" and device == "cpu":
        steps, batch = 1000, 2
    else:
        steps, batch = 1000, 3
    lengths = [steps] + [steps // 2 + 17] * (batch - 1)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-4)):
        op, ref = make_batch(batch, steps, lengths=lengths, dtype=dtype, device=device,
                             scale=100.0)
        op, ref = leaves(op), leaves(ref)
        value = call(gfn_fast.subtrajectory_balance, op, weighting=weighting, backend=backend)
        expected = call(gfn_fast.subtrajectory_balance, ref, weighting=weighting,
                        backend="reference")
        assert abs(float(value) - float(expected)) <= tol * abs(float(expected))
        got = grads_of(op, value, torch.ones((), dtype=value.dtype, device=value.device))
        want = grads_of(ref, expected, torch.ones((), dtype=torch.float64))
        for name in want:
            scale = float(want[name].abs().max())
            error = float((got[name].cpu().double() - want[name]).abs().max())
            assert error <= tol * 10 * scale, (name, error, scale)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradcheck(backend, device):
    op, _ = make_batch(3, 5, lengths=[5, 2, 3], dtype=torch.float64, device=device,
                       layout="time_major")
    names = GRAD_NAMES

    def subtb(weighting, loss):
        def fn(*tensors):
            args = dict(op, **dict(zip(names, tensors, strict=False)))
            return call(gfn_fast.subtrajectory_balance, args, weighting=weighting, loss=loss,
                        log_reward_clip_min=-0.5, backend=backend)
        return fn

    inputs = [op[n].detach().clone().requires_grad_() for n in names]
    for weighting in WEIGHTINGS:
        assert torch.autograd.gradcheck(subtb(weighting, "squared"), inputs)
    for loss in ("huber(0.5)", "linex(0.7)", "shifted_cosh"):
        assert torch.autograd.gradcheck(subtb("geometric_within", loss), inputs)

    def db(*tensors):
        args = dict(op, **dict(zip(names, tensors, strict=False)))
        return call(gfn_fast.detailed_balance, args, reduction="none", loss="huber(0.5)",
                    backend=backend)

    assert torch.autograd.gradcheck(db, inputs)


def test_nan_propagates():
    op, _ = make_batch(3, 4, lengths=[4, 4, 4], dtype=torch.float32)
    op["log_flow"] = op["log_flow"].clone()
    op["log_flow"][1, 2] = float("nan")
    for backend in ("reference", "numba"):
        assert torch.isnan(call(gfn_fast.subtrajectory_balance, op, backend=backend))
        assert torch.isnan(call(gfn_fast.detailed_balance, op, backend=backend))
    with pytest.raises(ValueError, match="log_flow"):
        call(gfn_fast.subtrajectory_balance, op, check_finite=True)


def test_no_quadratic_memory():
    """The saved state of SubTB is O(B T): the autograd graph holds nothing of size B T^2."""
    op, _ = make_batch(64, 256, dtype=torch.float32)
    args = leaves(op)
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = call(gfn_fast.subtrajectory_balance, args, loss="huber", backend="numba")
    value.backward()
    assert max(saved) <= 64 * 257


@pytest.mark.parametrize("lamda", [0.9, 1.0])
def test_reference_geometric_weighting_compiles_without_graph_breaks(lamda):
    """The reference's `geometric` weighting read the longest length on the host (int(n.max()))
    and stacked a Python list over it: torch.compile(fullgraph=True) failed on it, the one
    weighting of the reference that did. It is computed on the device now, as before."""
    op, _ = make_batch(4, 6, dtype=torch.float64, layout="padded")
    args = leaves(op)

    def fn(log_pf, log_pb, log_flow, log_reward, lengths):
        return gfn_fast.subtrajectory_balance(log_pf, log_pb, log_flow, log_reward,
                                              lengths=lengths, lamda=lamda,
                                              weighting="geometric", backend="reference")

    inputs = [args[n] for n in ("log_pf", "log_pb", "log_flow", "log_reward", "lengths")]
    eager = fn(*inputs)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(*inputs)
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=0)
    fused = gfn_fast.subtrajectory_balance(*inputs[:4], lengths=inputs[4], lamda=lamda,
                                           weighting="geometric", backend="numba")
    torch.testing.assert_close(fused, eager, rtol=1e-10, atol=0)


@pytest.mark.parametrize("lamda", [1 - 1e-6, 1 - 1e-12])
def test_geometric_weighting_near_one_in_float32(lamda):
    """`geometric`'s weights have 1 - lambda^M in their denominator. The float32 reference
    formed it in float32: the loss was 1.3% off at lambda = 1 - 1e-6, and inf (NaN gradients) at
    1 - 1e-12. The weights are float64 now, with the differences from 1 as expm1."""
    op, _ = make_batch(5, 9, dtype=torch.float64, layout="padded")
    args = leaves(op)
    names = ("log_pf", "log_pb", "log_flow", "log_reward")

    def loss(dtype, backend):
        inputs = [args[n].detach().to(dtype).requires_grad_() for n in names]
        value = gfn_fast.subtrajectory_balance(*inputs, lengths=args["lengths"], lamda=lamda,
                                               weighting="geometric", backend=backend)
        return value, torch.autograd.grad(value, inputs[0])[0]

    exact, exact_grad = loss(torch.float64, "reference")
    for backend in ("reference", "numba"):
        value, grad = loss(torch.float32, backend)
        torch.testing.assert_close(value.double(), exact, rtol=1e-5, atol=0)
        torch.testing.assert_close(grad.double(), exact_grad, rtol=1e-4, atol=1e-6)


def test_geometric_weights_keep_their_relative_precision_near_one():
    """w_k = lambda^(k-1) (1 - lambda) / (1 - lambda^M) against lambda^(k-1) / sum_{j<M} lambda^j
    (a sum of M terms near 1, exact to a few ulp with fsum)."""
    from gfn_fast.reference.subtb import geometric_weights

    longest = 1000
    for lamda in (0.5, 1 - 1e-6, 1 - 1e-12):
        k = torch.tensor([1.0, 2.0, 500.0, 1000.0], dtype=torch.float64)
        got = geometric_weights(lamda, k, torch.tensor(float(longest), dtype=torch.float64))
        total = math.fsum(lamda ** j for j in range(longest))
        want = torch.tensor([lamda ** (kk - 1) / total for kk in k.tolist()], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-13, atol=0)


def test_compile_and_opcheck():
    op, _ = make_batch(4, 6, dtype=torch.float32, layout="time_major")
    args = leaves(op)

    def fn(log_pf, log_pb, log_flow, log_state_reward, log_reward, beta, lengths):
        a = gfn_fast.subtrajectory_balance(log_pf, log_pb, log_flow, log_reward, lengths=lengths,
                                           log_state_reward=log_state_reward, beta=beta,
                                           backend="numba")
        b = gfn_fast.subtrajectory_balance(log_pf, log_pb, log_flow, log_reward, lengths=lengths,
                                           weighting="geometric", backend="numba")
        c = gfn_fast.detailed_balance(log_pf, log_pb, log_flow, log_reward, lengths=lengths,
                                      backend="numba")
        return a + b + c

    inputs = [args[n] for n in GRAD_NAMES] + [args["lengths"]]
    eager = fn(*inputs)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(*inputs)
    torch.testing.assert_close(compiled, eager)
    compiled.backward()

    f64 = {n: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
           for n, v in op.items()}
    lengths = f64["lengths"]
    row_weight = torch.full((4,), 0.1, dtype=torch.float64)
    table = torch.full((6,), 0.05, dtype=torch.float64)
    for running, tab in ((True, None), (False, table)):
        torch.library.opcheck(
            subtb_module._subtb_forward.op,
            (f64["log_pf"].requires_grad_(), f64["log_pb"], f64["log_flow"],
             f64["log_state_reward"], lengths, f64["log_reward"], f64["beta"], row_weight, tab,
             False, -math.inf, 0, 0.0, 0.9, running, "numba"))
    for reduction in (0, 1, 2):
        torch.library.opcheck(
            subtb_module._db_forward.op,
            (f64["log_pf"].requires_grad_(), f64["log_pb"], f64["log_flow"].requires_grad_(),
             None, lengths, f64["log_reward"], None, False, -math.inf, 3, 0.5, reduction,
             "numba"))


BAD_INPUTS = [
    ("log_flow", dict(log_flow=torch.zeros(3, 5)), ValueError),
    ("log_flow", dict(log_flow=None), TypeError),
    ("log_flow", dict(log_flow=torch.zeros(3, 4, dtype=torch.int64)), TypeError),
    ("log_state_reward", dict(log_state_reward=torch.zeros(3, 4, dtype=torch.float64)),
     TypeError),
    ("log_pb", dict(log_pb=torch.zeros(2, 4)), ValueError),
    ("log_pf", dict(log_pf=torch.zeros(3, 4, dtype=torch.int32)), TypeError),
    ("lengths", dict(lengths=torch.tensor([1, 0, 2])), ValueError),
    ("lengths", dict(lengths=torch.tensor([1, 5, 2])), ValueError),
    ("lengths", dict(lengths=torch.tensor([1.0, 2.0, 2.0])), TypeError),
    ("log_reward", dict(log_reward=torch.zeros(4)), ValueError),
    ("log_reward", dict(log_reward=torch.zeros(3, dtype=torch.int64)), TypeError),
    ("beta", dict(beta=torch.zeros(5)), ValueError),
    ("loss", dict(loss="cubic"), ValueError),
    ("mask", dict(mask=torch.tensor([[True, False, True, False]] * 3)), ValueError),
]


@pytest.mark.parametrize("arg,change,error", BAD_INPUTS, ids=[f"{a}-{i}" for i, (a, _, _) in
                                                              enumerate(BAD_INPUTS)])
def test_bad_inputs(arg, change, error):
    base = dict(log_pf=torch.zeros(3, 4), log_pb=torch.zeros(3, 4), log_flow=torch.zeros(3, 4),
                log_reward=torch.zeros(3), lengths=torch.tensor([1, 2, 4]))
    kwargs = dict(base, **change)
    if "mask" in change:
        kwargs.pop("lengths")
    for fn in (gfn_fast.subtrajectory_balance, gfn_fast.detailed_balance):
        with pytest.raises(error, match=f"`{arg}`"):
            call(fn, kwargs)


def test_bad_arguments():
    base = dict(log_pf=torch.zeros(3, 4), log_pb=None, log_flow=torch.zeros(3, 4),
                log_reward=torch.zeros(3))
    for lamda in (0.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="`lamda`"):
            call(gfn_fast.subtrajectory_balance, base, lamda=lamda)
    with pytest.raises(TypeError, match="`lamda`"):
        call(gfn_fast.subtrajectory_balance, base, lamda="0.9")
    with pytest.raises(ValueError, match="`weighting`"):
        call(gfn_fast.subtrajectory_balance, base, weighting="ModifiedDB")
    with pytest.raises(ValueError, match="`reduction`"):
        call(gfn_fast.detailed_balance, base, reduction="max")
    with pytest.raises(ValueError, match="`cu_seqlens`"):
        call(gfn_fast.detailed_balance, dict(base, log_pf=torch.zeros(6),
                                             log_flow=torch.zeros(6)),
             cu_seqlens=torch.tensor([0, 4, 2, 6]))
    with pytest.raises(ValueError, match="`cu_seqlens`"):
        call(gfn_fast.detailed_balance, dict(base, log_pf=torch.zeros(6),
                                             log_flow=torch.zeros(6)),
             cu_seqlens=torch.tensor([0, 2, 4, 5]))
    with pytest.raises(ValueError, match="`backend`"):
        call(gfn_fast.detailed_balance, base, backend="fortran")


# Known register-spill debt, bytes per thread (tests/triton_compile.py): may not grow.
KNOWN_SPILLS = {"_db_forward_kernel": 12972, "_db_backward_kernel": 13804,
                "_subtb_forward_kernel": 36, "_subtb_backward_kernel": 36}


def _triton_cases():
    """Every kernel x element type x loss, with the boolean specialisations rotated so each
    value of each flag is compiled (RUNNING and USE_TABLE in all their used combinations)."""
    floats = ("clip_min", "loss_param", "lam")
    cases = []
    for dtype, acc in (("fp32", "fp32"), ("fp64", "fp64"), ("fp16", "fp32"), ("bf16", "fp32")):
        types = {name: "fp64" for name in floats}
        for name in ("pf_ptr", "pb_ptr", "flow_ptr", "sr_ptr", "grad_pf_ptr", "grad_pb_ptr",
                     "grad_flow_ptr"):
            types[name] = "*" + dtype
        for name in ("log_reward_ptr", "beta_ptr", "rows_out_ptr", "steps_out_ptr",
                     "row_weight_ptr", "table_ptr", "a_ptr", "g_ptr", "grad_ptr",
                     "grad_loss_ptr", "grad_log_reward_ptr", "grad_beta_ptr"):
            types[name] = "*" + acc
        types["lengths_ptr"] = "*i64"
        for name in ("batch", "steps", "stride_pf_b", "stride_pf_t", "stride_pb_b",
                     "stride_pb_t", "stride_fl_b", "stride_fl_t", "stride_sr_b", "stride_sr_t",
                     "stride_out_b", "stride_out_t", "stride_beta", "stride_g_b", "stride_g_t",
                     "stride_row_weight"):
            types[name] = "i64"
        tl_acc = "tl.float64" if acc == "fp64" else "tl.float32"
        for loss in range(6):
            flag = loss % 2 == 0
            packed = loss in (1, 4)
            cases.append(("_db_forward_kernel", types, dict(
                HAS_PB=flag, HAS_SR=not flag, HAS_BETA=flag, PACKED=packed,
                PER_STEP=loss in (0, 1, 3), LOSS=loss, ACC=tl_acc, BLOCK_B=32, BLOCK_T=128)))
            cases.append(("_db_backward_kernel", types, dict(
                HAS_PB=not flag, HAS_SR=flag, HAS_BETA=not flag, PACKED=not packed,
                NEED_LOG_REWARD=flag, NEED_BETA=not flag, LOSS=loss, ACC=tl_acc, BLOCK_B=32,
                BLOCK_T=128)))
            modes = [(False, False), (False, True)] + ([(True, False)] if loss < 2 else [])
            for running, table in modes:
                cases.append(("_subtb_forward_kernel", types, dict(
                    HAS_PB=flag, HAS_SR=not flag, HAS_BETA=flag, PACKED=packed, RUNNING=running,
                    USE_TABLE=table, LOSS=loss, ACC=tl_acc, BLOCK_B=32, BLOCK_T=32)))
                cases.append(("_subtb_backward_kernel", types, dict(
                    HAS_PB=not flag, HAS_BETA=not flag, PACKED=not packed, RUNNING=running,
                    USE_TABLE=table, NEED_LOG_REWARD=flag, NEED_BETA=not flag, LOSS=loss,
                    ACC=tl_acc, BLOCK_B=32, BLOCK_T=32)))
    return cases


def test_triton_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    from triton_compile import compile_in_subprocess

    compile_in_subprocess("gfn_fast.kernels.subtb", _triton_cases(), arch=90, timeout=1800,
                          known_spills=KNOWN_SPILLS)


def test_nn_modules():
    op, _ = make_batch(4, 6, dtype=torch.float64)
    module = gfn_fast.nn.SubTrajectoryBalance(0.7, "equal_within")
    assert "lamda=0.7" in repr(module)
    expected = call(gfn_fast.subtrajectory_balance, op, lamda=0.7, weighting="equal_within")
    torch.testing.assert_close(call(module, op), expected)
    torch.testing.assert_close(call(module, op, weighting="DB"),
                               call(gfn_fast.detailed_balance, op))
    torch.testing.assert_close(call(gfn_fast.nn.DetailedBalance(reduction="sum"), op),
                               call(gfn_fast.detailed_balance, op, reduction="sum"))


# --------------------------------------------------------- audit: -inf log rewards, Python scalars

@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("loss", ["squared", "huber", "absolute", "shifted_cosh"])
def test_minus_inf_log_reward_gives_the_kernels_gradients_on_the_reference(backend, device, loss):
    """log R = -inf makes the last residual infinite. The reference formed the residuals of
    every (i, j) pair, and its backward put NaN (0 * inf, inf - inf) into every step's gradient,
    also for weighting="DB", which the spec says is detailed balance; the kernels give finite
    gradients for the finite steps. Now the two agree for every weighting (NaN where both do)."""
    kw = dict(dtype=torch.float64, device=device)
    # (row 1's TB residual is 0.3, away from the absolute loss's kink at 0, where the two
    # formulations' roundings differ)
    flows, log_reward = torch.zeros(2, 4, **kw), torch.tensor([-math.inf, -1.3], **kw)
    lengths = torch.tensor([3, 4], device=device)
    for weighting in ("DB", "TB", "geometric_within", "equal_within", "equal", "geometric"):
        grads = {}
        for name in ("reference", backend):
            log_pf = torch.tensor([[-0.5, -0.2, -0.1, 0.0], [-0.3, -0.4, -0.2, -0.1]],
                                  **kw).requires_grad_(True)
            value = gfn_fast.subtrajectory_balance(log_pf, None, flows, log_reward,
                                                   lengths=lengths, weighting=weighting,
                                                   loss=loss, backend=name)
            value.backward()
            grads[name] = (value.detach().cpu(), log_pf.grad.cpu())
        torch.testing.assert_close(grads[backend], grads["reference"], equal_nan=True,
                                   msg=lambda m, w=weighting: f"{w}: {m}")
        if weighting == "DB" or loss in ("huber", "absolute"):  # bounded rho'
            assert grads["reference"][1][0, :2].isfinite().all() and \
                grads["reference"][1][1].isfinite().all(), weighting


@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference-cpu"),
                                            *BACKENDS])
def test_python_scalars_take_the_compute_dtype(backend, device):
    """log_z / beta given as Python floats were made float32 tensors: a float64 loss saw
    log Z = 1000.1 as 1000.0999756 (2.4e-5 off, far above float64 tolerances)."""
    kw = dict(dtype=torch.float64, device=device)
    log_pf = torch.tensor([[-0.3, -0.2]], **kw)
    log_reward, log_flow = torch.tensor([0.7], **kw), torch.zeros(1, 2, **kw)
    for value in (1000.1, 0.1):
        as_tensor = torch.tensor(value, **kw)
        pairs = [(gfn_fast.trajectory_balance(log_pf, None, log_reward, value, loss="absolute",
                                              backend=backend),
                  gfn_fast.trajectory_balance(log_pf, None, log_reward, as_tensor,
                                              loss="absolute", backend=backend)),
                 (gfn_fast.trajectory_balance(log_pf, None, log_reward, 0.2, beta=value,
                                              backend=backend),
                  gfn_fast.trajectory_balance(log_pf, None, log_reward, 0.2, beta=as_tensor,
                                              backend=backend)),
                 (gfn_fast.detailed_balance(log_pf, None, log_flow, log_reward, beta=value,
                                            backend=backend),
                  gfn_fast.detailed_balance(log_pf, None, log_flow, log_reward, beta=as_tensor,
                                            backend=backend))]
        for from_float, from_tensor in pairs:
            assert from_float.dtype == torch.float64 and from_float.item() == from_tensor.item()
