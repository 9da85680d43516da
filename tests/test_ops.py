"""The two ways an op runs (gfn_fast/_ops.py): directly in eager mode, and through the registered
torch op (torch.compile, dispatch modes, or forced). They share the implementation and the
backward, so values and gradients must be bitwise equal; and the eager path must really be the
direct one (that is its reason to exist)."""

import contextlib

import pytest
import torch
from conftest import backend_params, run_probe
from torch.utils._python_dispatch import TorchDispatchMode

import gfn_fast
from gfn_fast import _ops, bfn


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if isinstance(t, torch.Tensor)]


def _run(case, backend, seed):
    """Outputs and input gradients of `case` on fresh inputs drawn from `seed`."""
    inputs, fn = case(torch.Generator().manual_seed(seed))
    return _outputs_and_grads(fn, backend, inputs)


def _outputs_and_grads(fn, backend, inputs):
    """`fn`'s tensor outputs on `inputs` and the gradients of their sum w.r.t. the inputs that
    require grad (none when none does)."""
    out = _tensors(fn(backend, **inputs))
    leaves = [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    grads = []
    if leaves:
        total = sum(o.float().sum() for o in out if o.requires_grad)
        grads = list(torch.autograd.grad(total, leaves))
    return out, grads


def _padded(gen, batch=5, steps=7):
    return {"log_pf": torch.randn(batch, steps, generator=gen, dtype=torch.float64,
                                  requires_grad=True),
            "log_pb": torch.randn(batch, steps, generator=gen, dtype=torch.float64,
                                  requires_grad=True),
            "lengths": torch.randint(1, steps + 1, (batch,), generator=gen)}


def _tb(gen):
    x = _padded(gen)
    x.update(log_reward=torch.randn(5, generator=gen, dtype=torch.float64),
             log_z=torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True))
    return x, lambda b, log_pf, log_pb, log_reward, log_z, lengths: gfn_fast.trajectory_balance(
        log_pf, log_pb, log_reward, log_z, lengths=lengths, loss="huber(0.7)", backend=b)


def _vargrad(gen):
    x = _padded(gen)
    x.update(log_reward=torch.randn(5, generator=gen, dtype=torch.float64),
             beta=torch.rand(5, generator=gen, dtype=torch.float64, requires_grad=True))
    return x, lambda b, log_pf, log_pb, log_reward, beta, lengths: \
        gfn_fast.log_partition_variance(log_pf, log_pb, log_reward, beta=beta, lengths=lengths,
                                        reduction="none", backend=b)


def _db(gen):
    x = _padded(gen)
    x.update(log_flow=torch.randn(5, 7, generator=gen, dtype=torch.float64, requires_grad=True),
             log_reward=torch.randn(5, generator=gen, dtype=torch.float64))
    return x, lambda b, log_pf, log_pb, log_flow, log_reward, lengths: gfn_fast.detailed_balance(
        log_pf, log_pb, log_flow, log_reward, lengths=lengths, reduction="none", backend=b)


def _subtb(gen):
    x, _ = _db(gen)
    return x, lambda b, log_pf, log_pb, log_flow, log_reward, lengths: \
        gfn_fast.subtrajectory_balance(log_pf, log_pb, log_flow, log_reward, lengths=lengths,
                                       lamda=0.8, backend=b)


def _sample(gen):
    x = {"logits": torch.randn(6, 9, generator=gen, dtype=torch.float64, requires_grad=True),
         "mask": torch.rand(6, 9, generator=gen) > 0.3,
         "scale": torch.rand(6, generator=gen, dtype=torch.float64, requires_grad=True) + 0.5}
    x["mask"][:, 0] = True
    return x, lambda b, logits, mask, scale: gfn_fast.sample_actions(
        logits, mask, scale=scale, epsilon=0.1, seed=3, offset=2, return_log_mu=True,
        return_entropy=True, backend=b)


def _log_prob(gen):
    x, _ = _sample(gen)
    x["actions"] = torch.zeros(6, dtype=torch.int64)
    return x, lambda b, logits, mask, scale, actions: gfn_fast.action_log_prob(
        logits, actions, mask, scale=scale, temperature=0.7, backend=b)


def _continuous(gen):
    x = {"x": torch.rand(4, 10, generator=gen, dtype=torch.float64) * 2 - 1,
         "t": torch.rand(4, generator=gen, dtype=torch.float64),
         "eps_hat": torch.randn(4, 10, generator=gen, dtype=torch.float64, requires_grad=True)}

    def fn(b, x, t, eps_hat):
        mu = bfn.continuous_flow(x, t, 0.02, seed=5, backend=b)
        return (mu, bfn.continuous_output(mu, eps_hat.detach(), t, 0.02, backend=b),
                bfn.continuous_loss(x, mu, eps_hat, t, 0.02, backend=b),
                bfn.continuous_loss(x, mu, eps_hat, t, 0.02, n_steps=20, backend=b),
                bfn.continuous_update(mu, torch.ones_like(mu), x, 2.0, backend=b))
    return x, fn


def _discretised(gen):
    x = {"x": torch.rand(3, 6, generator=gen, dtype=torch.float64) * 2 - 1,
         "t": torch.rand(3, generator=gen, dtype=torch.float64),
         "mu_x": torch.randn(3, 6, generator=gen, dtype=torch.float64, requires_grad=True),
         "log_sigma_x": torch.randn(3, 6, generator=gen, dtype=torch.float64,
                                    requires_grad=True)}
    return x, lambda b, x, t, mu_x, log_sigma_x: (
        bfn.discretised_loss(x, mu_x, log_sigma_x, t, 0.02, 16, backend=b),
        bfn.discretised_probs(mu_x.detach(), log_sigma_x.detach(), 16, backend=b))


def _discrete(gen):
    x = {"x_index": torch.randint(0, 5, (3, 4), generator=gen),
         "t": torch.rand(3, generator=gen, dtype=torch.float64),
         "logits": torch.randn(3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)}

    def fn(b, x_index, t, logits):
        theta = bfn.discrete_flow(x_index, t, 0.5, 5, seed=7, backend=b)
        return (theta, bfn.discrete_loss(x_index, logits, t, 0.5, backend=b),
                bfn.discrete_loss(x_index, logits, t, 0.5, n_steps=10, seed=2, backend=b),
                bfn.discrete_update(theta.log(), logits.detach(), backend=b))
    return x, fn


CASES = {"trajectory_balance": _tb, "log_partition_variance": _vargrad,
         "detailed_balance": _db, "subtrajectory_balance": _subtb, "sample_actions": _sample,
         "action_log_prob": _log_prob, "bfn_continuous": _continuous,
         "bfn_discretised": _discretised, "bfn_discrete": _discrete}


CPU_BACKENDS = [param for param in backend_params() if param.values[1] == "cpu"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("backend", "device"), CPU_BACKENDS)
def test_direct_and_op_paths_are_bitwise_equal(case, backend, device):
    """CPU tensors (numba, and triton through the interpreter); the GPU paths share this code."""
    direct_out, direct_grads = _run(CASES[case], backend, seed=11)
    with _ops.force_op_path():
        op_out, op_grads = _run(CASES[case], backend, seed=11)
    assert len(direct_out) == len(op_out) and len(direct_grads) == len(op_grads)
    for direct, through_op in zip(direct_out + direct_grads, op_out + op_grads, strict=True):
        assert direct.dtype == through_op.dtype and direct.shape == through_op.shape
        assert torch.equal(direct, through_op), f"{case}: direct and op paths differ"


def _sample_defaults(gen):
    """sample_actions with its float defaults (epsilon=0.0) left alone."""
    x = {"logits": torch.randn(6, 9, generator=gen, dtype=torch.float64)}
    return x, lambda b, logits: gfn_fast.sample_actions(logits, seed=3, offset=2, backend=b)


@pytest.mark.parametrize("case", [*CASES, "sample_actions_defaults"])
def test_compile_with_dynamic_shapes_matches_eager(case):
    """torch.compile(fullgraph=True, dynamic=True): Dynamo may trace a Python float, such as an
    argument's default (continuous_output's t_min, sample_actions' epsilon), as a SymFloat, which
    math.isnan / math.isfinite in the checks refused ("torch.* op returned non-Tensor")."""
    make = _sample_defaults if case == "sample_actions_defaults" else CASES[case]

    def compiled(b, **inputs):
        return torch.compile(lambda **kw: make_fn("numba", **kw), fullgraph=True, dynamic=True,
                             backend="aot_eager")(**inputs)

    inputs, make_fn = make(torch.Generator().manual_seed(0))
    try:
        expected_out, expected_grads = _run(make, "numba", seed=5)
        out, grads = _run(lambda gen: (make(gen)[0], compiled), "numba", seed=5)
    finally:
        torch._dynamo.reset()
    assert len(out) == len(expected_out) and len(grads) == len(expected_grads)
    for got, want in zip(out + grads, expected_out + expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", ["direct", "op"])
def test_backward_allocates_no_zero_gradients_for_outputs_without_one(case, path):
    """Outputs marked non-differentiable (a loss's residuals, the sampler's actions and log-mu,
    the continuous loss's per-unit gradient) get no gradient; autograd by default still hands
    the backward a zero tensor of each one's shape, allocated and filled on every call (a
    [B, D] one for the continuous loss: a tenth of the CIFAR-shape flow + loss step)."""
    gen = torch.Generator().manual_seed(11)
    inputs, fn = CASES[case](gen)
    with _ops.force_op_path(path == "op"):
        out = _tensors(fn("numba", **inputs))
    leaves = [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    total = sum(o.float().sum() for o in out if o.requires_grad)
    with _RecordOps() as record:
        grads = torch.autograd.grad(total, leaves)
    assert all(g is not None for g in grads)
    assert "aten.ones_like.default" in record.names  # the mode sees the engine's own allocations
    assert not [name for name in record.names if "zeros" in name], record.names


def test_eager_calls_skip_the_dispatcher_and_compile_uses_the_op():
    inputs, fn = _tb(torch.Generator().manual_seed(0))
    eager = fn("numba", **inputs)
    assert type(eager.grad_fn).__name__ == "trajectory_balance_fwdBackward"
    with _ops.force_op_path():
        through_op = fn("numba", **inputs)
    assert "gfn_fast_trajectory_balance_fwd" in type(through_op.grad_fn).__name__
    assert torch.equal(eager, through_op)


def test_fake_tensors_take_the_op_path():
    """Shape inference without compiling (FakeTensorMode) reaches the op's fake implementation;
    the direct path would hand fake tensors to a Numba kernel."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(), gfn_fast.validation(False):
        log_pf = torch.randn(4, 6)
        loss = gfn_fast.trajectory_balance(log_pf, None, torch.randn(4), 0.0,
                                           reduction="none", backend="numba")
    assert loss.shape == (4,)


def test_every_gfn_fast_op_is_registered_through_ops():
    """No op bypasses gfn_fast._ops (which would lose the direct eager path)."""
    registered = {name.split("::")[1] for name in _ops.REGISTRY}
    in_torch = {name for name in dir(torch.ops.gfn_fast) if not name.startswith("_")}
    in_torch -= {"name"}
    assert in_torch <= registered, in_torch - registered
    assert len(registered) >= 20


def _refuse(message):
    def call(*args):
        raise AssertionError(message)
    return call


def test_no_grad_calls_skip_autograd_function(monkeypatch):
    """Under no_grad nothing is recorded, so the direct path calls the implementation without
    autograd.Function's cost; the values are those of a recorded call."""
    inputs, fn = _tb(torch.Generator().manual_seed(3))
    recorded = fn("numba", **inputs)
    monkeypatch.setattr(_ops.REGISTRY["gfn_fast::trajectory_balance_fwd"], "_apply",
                        _refuse("autograd.Function applied under no_grad"))
    with torch.no_grad():
        unrecorded = fn("numba", **inputs)
    with pytest.raises(AssertionError, match="under no_grad"):
        fn("numba", **inputs)  # the control: with grad enabled the Function is applied
    assert unrecorded.grad_fn is None and torch.equal(unrecorded, recorded.detach())


def test_dead_functorch_wrappers_take_the_op_path():
    """A tensor kept from inside a functorch transform is a dead wrapper with the plain Tensor
    type. autograd.Function.apply unwraps those in Python, a step the direct path skips, so they
    go through the op, which gives the values of the plain tensor."""
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(4, 6, generator=gen) * 2 - 1
    mu, plain = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    t = torch.rand(4, generator=gen)
    kept = []
    torch.func.grad(lambda e: kept.append(e) or e.sum())(plain)
    dead = kept[0]
    assert type(dead) is torch.Tensor and not _ops._eager((dead,)) and _ops._eager((plain,))
    through_op = bfn.continuous_loss(x, mu, dead, t, 0.02, backend="numba")
    direct = bfn.continuous_loss(x, mu, plain, t, 0.02, backend="numba")
    assert torch.equal(through_op.detach(), direct)


def _continuous_step(gen):
    state = {"mu": torch.randn(3, 8, generator=gen), "rho": torch.ones(3)}
    eps_hat = torch.randn(3, 8, generator=gen)
    return state, lambda s: bfn.continuous_step(s["mu"], s["rho"], eps_hat, 0.4, 2.0, 0.02,
                                                seed=7, backend="numba")


def _discretised_step(gen):
    state = {"mu": torch.randn(3, 8, generator=gen), "rho": torch.ones(3),
             "draw": torch.empty(3, 8)}
    mu_x, log_sigma_x = torch.randn(3, 8, generator=gen), torch.randn(3, 8, generator=gen)
    return state, lambda s: bfn.discretised_step(s["mu"], s["rho"], mu_x, log_sigma_x, 2.0, 16,
                                                 draw=s["draw"], seed=7, backend="numba")


def _discrete_step(gen):
    state = {"log_theta": torch.log_softmax(torch.randn(3, 8, 5, generator=gen), -1),
             "draw": torch.empty(3, 8, dtype=torch.int64)}
    logits = torch.randn(3, 8, 5, generator=gen)
    return state, lambda s: bfn.discrete_step(s["log_theta"], logits, 2.0, draw=s["draw"],
                                              seed=7, backend="numba")


STEPS = {"bfn_continuous_step": (_continuous_step, ("mu",)),
         "bfn_discretised_step": (_discretised_step, ("mu", "draw")),
         "bfn_discrete_step": (_discrete_step, ("log_theta", "draw"))}


@pytest.mark.parametrize("name", STEPS)
def test_mutating_ops_run_directly_and_bump_version_counters(name, monkeypatch):
    """The generation steps write into their arguments. In eager mode they skip the dispatcher
    too, and bump the version counters of what they write as it would, so autograd still
    catches a saved tensor changed by a step; the state they leave is the op path's, bitwise."""
    build, written = STEPS[name]
    op = _ops.REGISTRY[f"gfn_fast::{name}"]
    direct, step = build(torch.Generator().manual_seed(2))
    through_op, step_op = build(torch.Generator().manual_seed(2))
    versions = {arg: direct[arg]._version for arg in written}
    with monkeypatch.context() as patch:
        patch.setattr(op, "op", _refuse("dispatched"))
        step(direct)
    assert all(direct[arg]._version > versions[arg] for arg in written)
    with _ops.force_op_path():
        step_op(through_op)
    for arg in direct:
        assert torch.equal(direct[arg], through_op[arg]), arg

    weight = torch.ones(3, requires_grad=True)
    state, step = build(torch.Generator().manual_seed(2))
    first = state[written[0]]
    product = (weight.view(-1, *[1] * (first.dim() - 1)) * first).sum()  # saves first
    step(state)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        product.backward()


def test_resolve_is_marked_constant_as_torch_compiler_would():
    """_backends._constant_result marks `resolve` the way torch.compiler.assume_constant_result
    does without importing torch._dynamo: by the one attribute that decorator sets. If a torch
    release changes how the decorator marks a function, this fails."""
    from gfn_fast import _backends

    def probe():
        return 0

    torch.compiler.assume_constant_result(probe)
    assert vars(probe) == {"_dynamo_marked_constant": True}
    assert vars(_backends.resolve).get("_dynamo_marked_constant") is True


_IMPORT_PROBE = """
import json, sys, torch
import gfn_fast
from gfn_fast import benchmark
benchmark.build_cases(list(benchmark.CASE_FAMILIES), torch.device("cpu"), True)
dynamo_before = "torch._dynamo" in sys.modules
gen = torch.Generator().manual_seed(0)
log_pf, log_pb = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)
log_reward, log_z = torch.randn(8, generator=gen), torch.tensor(0.5)
tb = lambda *a: gfn_fast.trajectory_balance(*a, backend="numba")
compiled = torch.compile(tb, fullgraph=True, backend="aot_eager")
args = (log_pf, log_pb, log_reward, log_z)
print("IMPORT " + json.dumps({"dynamo_before": dynamo_before,
                               "equal": torch.equal(compiled(*args), tb(*args))}))
"""


def test_import_and_quick_bench_cases_do_not_import_torch_dynamo():
    """`import gfn_fast` took 2.5 s on a 2-core VM, 1.2 s of it importing torch._dynamo to mark
    one function for torch.compile; building the --quick bench cases imported it again (through
    torch.compile wrappers and torchgfn). In a fresh interpreter: neither imports it, and a
    fullgraph compile still treats `resolve` (which Dynamo cannot trace) as a constant."""
    assert run_probe(_IMPORT_PROBE, "IMPORT") == {"dynamo_before": False, "equal": True}


def test_torch_func_transforms_as_the_readme_says():
    """README: torch.func transforms of an op's inputs are not supported (torch.library's
    registered autograd has no functorch rule), while tensors a transform does not track pass
    through. If torch gains the rule, the first assertion fails and the README should change."""
    x, mu, t = torch.rand(3, 4), torch.randn(3, 4), torch.rand(3)
    with pytest.raises(RuntimeError, match="setup_context"):
        torch.func.grad(lambda e: bfn.continuous_loss(x, mu, e, t, 0.1, backend="numba").sum())(
            torch.randn(3, 4))
    other = torch.randn(4, 6)

    def picked(weights):
        actions = gfn_fast.sample_actions(other, seed=1, backend="numba")[0]
        return weights[torch.arange(4), actions].sum()

    grad = torch.func.grad(picked)(torch.randn(4, 6))
    actions = gfn_fast.sample_actions(other, seed=1, backend="numba")[0]
    assert torch.equal(grad, torch.nn.functional.one_hot(actions, 6).float())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("backend", "device"), CPU_BACKENDS)
@pytest.mark.parametrize("path", ["direct", "op"])
def test_a_gradient_of_the_gradient_raises_instead_of_dropping_terms(case, backend, device,
                                                                     path):
    """The fused ops are differentiable once. A gradient taken with create_graph=True and then
    differentiated again (a penalty on it) silently left the penalty's terms out on the direct
    path: d(loss + |g|^2)/dw came out as d(loss)/dw (the op path raised). Both raise now; a
    create_graph gradient that is not differentiated again is the plain gradient."""
    inputs, fn = CASES[case](torch.Generator().manual_seed(4))
    weight = torch.ones((), dtype=torch.float64, requires_grad=True)
    scaled = {k: v.detach() * weight if isinstance(v, torch.Tensor) and v.requires_grad else v
              for k, v in inputs.items()}
    wrt = [scaled[k] for k, v in inputs.items() if isinstance(v, torch.Tensor) and
           v.requires_grad]
    assert wrt  # every case has a differentiable input
    with _ops.force_op_path(path == "op"):
        out = _tensors(fn(backend, **scaled))
        total = sum(o.float().sum() for o in out if o.requires_grad)
        grads = torch.autograd.grad(total, wrt, create_graph=True)
        plain = torch.autograd.grad(total, wrt, retain_graph=True)
        for grad, expected in zip(grads, plain, strict=True):
            assert torch.equal(grad.detach(), expected)
        penalty = sum((g ** 2).sum() for g in grads)
        with pytest.raises(RuntimeError, match="differentiable once|no autograd formula"):
            torch.autograd.grad(total + penalty, [weight])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("backend", "device"), CPU_BACKENDS)
@pytest.mark.parametrize("path", ["direct", "op"])
def test_forward_mode_derivatives_raise_instead_of_dropping_the_tangent(case, backend, device,
                                                                        path):
    """The fused ops have reverse-mode autograd only. Through the op, forward mode dropped the
    tangent without a word: torch.func.jvp of a fused loss gave zeros, and a dual tensor's loss
    came out with no tangent. Both raise now, on both paths; a jvp whose tangents do not reach
    the op still runs, and the reference (plain PyTorch) has forward mode."""
    inputs, fn = CASES[case](torch.Generator().manual_seed(9))
    names = [k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    primals = tuple(inputs[k].detach() for k in names)
    tangents = tuple(torch.randn_like(p) for p in primals)

    def loss(backend_name, *values):
        args = dict(inputs, **dict(zip(names, values, strict=True)))
        return sum(o.double().sum() for o in _tensors(fn(backend_name, **args))
                   if o.is_floating_point())

    with _ops.force_op_path(path == "op"):
        with pytest.raises(NotImplementedError, match="no forward-mode derivative"):
            torch.func.jvp(lambda *v: loss(backend, *v), primals, tangents)
        with pytest.raises(NotImplementedError, match="no forward-mode derivative"):
            with torch.autograd.forward_ad.dual_level():
                loss(backend, *(torch.autograd.forward_ad.make_dual(p, d)
                                for p, d in zip(primals, tangents, strict=True)))
        # tangents that do not reach the op: the op runs, and the jvp is the other term's
        value, tangent = torch.func.jvp(lambda w: loss(backend, *primals) + w.sum(),
                                        (torch.ones(3),), (torch.full((3,), 2.0),))
        assert torch.equal(value, loss(backend, *primals) + 3) and tangent.item() == 6
    # the reference's forward mode, as a check that the cases really carry tangents
    _, expected = torch.func.jvp(lambda *v: loss("reference", *v), primals, tangents)
    assert expected.abs() > 0


def _inference_copy(value):
    if not isinstance(value, torch.Tensor) or value.requires_grad:
        return value
    with torch.inference_mode():
        return value.clone()


@pytest.mark.parametrize("case", [c for c in CASES if c != "sample_actions"])
@pytest.mark.parametrize(("backend", "device"), CPU_BACKENDS)
def test_inputs_made_under_inference_mode_are_taken(case, backend, device):
    """Rewards, lengths, actions, masks, data and times made under torch.inference_mode() (a
    rollout or a data pipeline run there) beside inputs that need gradients: the fused ops
    raised "Inference tensors cannot be saved for backward" while saving them, where the
    reference ran. Results and gradients are those of ordinary tensors."""
    inputs, fn = CASES[case](torch.Generator().manual_seed(8))
    expected, expected_grads = _outputs_and_grads(fn, backend, inputs)
    got, got_grads = _outputs_and_grads(fn, backend, {k: _inference_copy(v)
                                                      for k, v in inputs.items()})
    assert expected_grads
    for a, b in zip(got + got_grads, expected + expected_grads, strict=True):
        assert torch.equal(a, b)


def test_ops_run_with_their_first_arguments_device_current(monkeypatch):
    """Triton launches on the current CUDA device and a CUDA kernel cannot be launched on
    another device's stream: tensors on cuda:1 while cuda:0 was current failed. Every op now
    makes its first argument's device current (no GPU here: the CUDA calls are stand-ins)."""
    entered = []

    @contextlib.contextmanager
    def device(index):
        entered.append(index)
        yield

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", device)

    class OnCuda:  # a CUDA tensor's two attributes the guard reads
        is_cuda = True

        def __init__(self, index):
            self.index = index

        def get_device(self):
            return self.index

    seen = []
    run = _ops.on_its_device(lambda first, other=None: seen.append(list(entered)) or other)
    assert run(OnCuda(1), other=2) == 2 and seen == [[1]]
    run(OnCuda(0))
    run(torch.ones(1))
    assert entered == [1] and seen == [[1], [1], [1]]
    guard = _ops.on_its_device(lambda first: None).__code__
    assert all(op._fn.__code__ is guard for op in _ops.REGISTRY.values())


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_a_loss_on_the_second_gpu(backend):
    torch.cuda.set_device(0)
    gen = torch.Generator().manual_seed(0)
    log_pf, log_pb = (torch.randn(8, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    log_reward = torch.randn(8, generator=gen, dtype=torch.float64)
    expected = gfn_fast.trajectory_balance(log_pf, log_pb, log_reward, 0.5, backend="reference")
    got = gfn_fast.trajectory_balance(log_pf.to("cuda:1"), log_pb.to("cuda:1"),
                                      log_reward.to("cuda:1"), 0.5, backend=backend)
    assert got.device == torch.device("cuda:1")
    torch.testing.assert_close(got.cpu(), expected)


@contextlib.contextmanager
def _default_device(device):
    torch.set_default_device(device)
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", ["reference"] + [p.values[0] for p in CPU_BACKENDS])
def test_a_default_device_leaves_cpu_calls_on_the_cpu(case, backend):
    """torch.set_default_device("cuda") is common in GPU training scripts that also run CPU
    work; gfn_fast's internal buffers took the default device, so CPU calls failed ("can't
    convert cuda tensor to numpy", "not on the expected device cpu") where torch's own ops
    run. Here "meta" stands in for the GPU: results and gradients are those of a run without."""
    inputs, fn = CASES[case](torch.Generator().manual_seed(10))
    expected, expected_grads = _outputs_and_grads(fn, backend, inputs)
    with _default_device("meta"):
        got, got_grads = _outputs_and_grads(fn, backend, inputs)
    for a, b in zip(got + got_grads, expected + expected_grads, strict=True):
        assert a.device.type == "cpu" and torch.equal(a, b)


@pytest.mark.parametrize("name", STEPS)
def test_a_default_device_leaves_cpu_generation_steps_on_the_cpu(name):
    build, _ = STEPS[name]
    expected, step = build(torch.Generator().manual_seed(3))
    step(expected)
    got, step = build(torch.Generator().manual_seed(3))
    with _default_device("meta"):
        step(got)
    for arg in got:
        assert torch.equal(got[arg], expected[arg]), arg
