"""Reliability across op families: bitwise determinism, CUDA graph capture and replay, and
numerical stress (docs/numerics.md states what each case must give).

Determinism: every kernel of gfn_fast writes each output from one program / thread in a fixed
order (no atomics), so losses and gradients are bitwise identical across repeated runs on each
backend; samplers are pure functions of (seed, offset).
"""

import math

import pytest
import torch
from conftest import HAS_CUDA, available_backends, backend_params, run_probe

import gfn_fast
from gfn_fast import bfn

BACKENDS = backend_params()
LOSSES = ["squared", "absolute", "huber(0.5)", "shifted_cosh", "linex(0.7)"]


def _balance_inputs(device, dtype=torch.float32, batch=37, steps=13):
    generator = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    return dict(log_pf=torch.randn(batch, steps, generator=generator).to(dtype).to(device),
                log_pb=torch.randn(batch, steps, generator=generator).to(dtype).to(device),
                log_reward=torch.randn(batch, generator=generator).to(device),
                log_z=torch.randn(batch, generator=generator).to(device),
                beta=(torch.rand(batch, generator=generator) + 0.5).to(device),
                lengths=lengths.to(device))


def _balance_run(op, inputs, backend, **kwargs):
    leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point())
              for k, v in inputs.items()}
    args = [leaves["log_pf"], leaves["log_pb"], leaves["log_reward"]]
    if op is gfn_fast.trajectory_balance:
        args.append(leaves["log_z"])
    loss = op(*args, beta=leaves["beta"], lengths=leaves["lengths"], backend=backend, **kwargs)
    wrt = args + [leaves["beta"]]
    return [loss.detach()] + list(torch.autograd.grad(loss, wrt))


def _sampling_run(device, backend):
    generator = torch.Generator().manual_seed(6)
    logits = (torch.randn(129, 300, generator=generator) * 2).to(device)
    mask = (torch.rand(129, 300, generator=generator) < 0.7).to(device)
    mask[:, 0] = True
    scale = (torch.rand(129, generator=generator) + 0.5).to(device).requires_grad_(True)
    leaf = logits.clone().requires_grad_(True)
    actions, log_pi, log_mu, entropy = gfn_fast.sample_actions(
        leaf, mask, scale=scale, epsilon=0.2, seed=11, offset=4, return_log_mu=True,
        return_entropy=True, backend=backend)
    log_prob = gfn_fast.action_log_prob(leaf, actions, mask, scale=scale, clip=(-3.0, 3.0),
                                        backend=backend)
    grads = torch.autograd.grad(log_pi.sum() + 0.5 * log_prob.sum(), [leaf, scale])
    return [actions, log_pi.detach(), log_mu, entropy, log_prob.detach(), *grads]


def _bfn_run(device, backend):
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(6, 33, generator=generator).mul(2).sub(1).to(device)
    mu = torch.randn(6, 33, generator=generator).to(device)
    eps_hat = torch.randn(6, 33, generator=generator).to(device).requires_grad_(True)
    t = torch.rand(6, generator=generator).to(device)
    x_index = torch.randint(0, 5, (6, 33), generator=generator).to(device)
    logits = torch.randn(6, 33, 5, generator=generator).to(device).requires_grad_(True)
    loss = (bfn.continuous_loss(x, mu, eps_hat, t, 0.02, backend=backend).sum()
            + bfn.discrete_loss(x_index, logits, t, 0.5, backend=backend).sum()
            + bfn.discrete_loss(x_index, logits, t, 0.5, 10, seed=3, offset=1,
                                backend=backend).sum())
    grads = torch.autograd.grad(loss, [eps_hat, logits])
    flow = bfn.continuous_flow(x, t, 0.02, seed=9, offset=2, backend=backend)
    return [loss.detach(), *grads, flow]


FLOW_GRADS = ("log_pf", "log_pb", "log_flow", "log_state_reward", "log_reward", "beta")


def _flow_inputs(device, dtype=torch.float32, batch=37, steps=13, seed=5):
    """DB / SubTB inputs: forward-looking (log_state_reward), per-trajectory beta, random
    lengths (they change with the seed, so a graph replay sees new trajectory extents)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)

    def per_step():
        return torch.randn(batch, steps, generator=generator).to(dtype).to(device)

    return dict(log_pf=per_step(), log_pb=per_step(), log_flow=per_step(),
                log_state_reward=per_step(),
                log_reward=torch.randn(batch, generator=generator).to(device),
                beta=(torch.rand(batch, generator=generator) + 0.5).to(device),
                lengths=lengths.to(device))


def _flow_loss(op, inputs, backend, **kwargs):
    return op(inputs["log_pf"], inputs["log_pb"], inputs["log_flow"], inputs["log_reward"],
              log_state_reward=inputs["log_state_reward"], beta=inputs["beta"],
              lengths=inputs["lengths"], backend=backend, **kwargs)


def _upstream(loss):
    """A fixed, non-uniform upstream gradient shaped like the loss."""
    return torch.linspace(0.5, 1.5, loss.numel(), device=loss.device,
                          dtype=loss.dtype).reshape(loss.shape)


def _flow_run(op, inputs, backend, **kwargs):
    leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point())
              for k, v in inputs.items()}
    loss = _flow_loss(op, leaves, backend, **kwargs)
    grads = torch.autograd.grad((loss * _upstream(loss)).sum(), [leaves[n] for n in FLOW_GRADS])
    return [loss.detach(), *grads]


def _bits(tensor):
    """Floating tensors as their raw bits, so NaNs compare equal to themselves."""
    if not tensor.is_floating_point():
        return tensor
    return tensor.contiguous().view({2: torch.int16, 4: torch.int32,
                                     8: torch.int64}[tensor.element_size()])


def _assert_bitwise(first, second):
    for index, (a, b) in enumerate(zip(first, second, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(_bits(a), _bits(b)), f"output {index} differs between identical runs"


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_balance_bitwise_deterministic(backend, device, dtype):
    inputs = _balance_inputs(device, dtype)
    for op in (gfn_fast.trajectory_balance, gfn_fast.log_partition_variance):
        for loss in LOSSES:
            first = _balance_run(op, inputs, backend, loss=loss)
            second = _balance_run(op, inputs, backend, loss=loss)
            _assert_bitwise(first, second)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_subtb_bitwise_deterministic(backend, device, dtype):
    """DB over losses and reductions; SubTB over weightings with a running-sum loss (squared)
    and a pair-loop one (huber): the O(T) recurrences, the pair loops and the tabulated
    `geometric` weights."""
    inputs = _flow_inputs(device, dtype)
    for loss in LOSSES:
        for reduction in ("mean", "sum", "none"):
            kwargs = dict(loss=loss, reduction=reduction)
            _assert_bitwise(_flow_run(gfn_fast.detailed_balance, inputs, backend, **kwargs),
                            _flow_run(gfn_fast.detailed_balance, inputs, backend, **kwargs))
    for weighting in ("geometric_within", "equal_within", "geometric", "equal", "TB", "DB"):
        for loss in ("squared", "huber(0.5)"):
            kwargs = dict(weighting=weighting, loss=loss, lamda=0.8)
            _assert_bitwise(
                _flow_run(gfn_fast.subtrajectory_balance, inputs, backend, **kwargs),
                _flow_run(gfn_fast.subtrajectory_balance, inputs, backend, **kwargs))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_sampling_bitwise_deterministic(backend, device):
    _assert_bitwise(_sampling_run(device, backend), _sampling_run(device, backend))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_bfn_bitwise_deterministic(backend, device):
    _assert_bitwise(_bfn_run(device, backend), _bfn_run(device, backend))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_generator_replay_reproduces_draws(backend, device):
    logits = torch.randn(64, 40, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(123)
    first = [gfn_fast.sample_actions(logits, generator=generator, backend=backend)[0]
             for _ in range(3)]
    generator.manual_seed(123)
    second = [gfn_fast.sample_actions(logits, generator=generator, backend=backend)[0]
              for _ in range(3)]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], first[1])  # the generator advanced between calls


# ---- CUDA graphs: capture each op once, replay on new inputs copied into the static buffers ----

def _graph_check(make_inputs, run):
    """Capture run(static) in a CUDA graph, replay it on fresh inputs, compare with eager."""
    static = make_inputs(0)
    with gfn_fast.validation(False):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up (kernel compilation, allocator) outside the capture
                run(static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = run(static)
        for seed in (1, 2):
            fresh = make_inputs(seed)
            with torch.no_grad():
                for name, value in fresh.items():
                    static[name].copy_(value)
            graph.replay()
            torch.cuda.synchronize()
            expected = run(fresh)
            for got, want in zip(outputs, expected, strict=True):
                assert torch.equal(got, want), "graph replay differs from eager"


CUDA_ONLY = [p for p in BACKENDS if p.id.endswith("-cuda")]


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend,device", CUDA_ONLY)
def test_cuda_graph_balance(backend, device):
    def make(seed):
        inputs = _balance_inputs(device)
        generator = torch.Generator(device="cuda").manual_seed(seed)
        inputs["log_pf"] = torch.randn(inputs["log_pf"].shape, device=device,
                                       generator=generator)
        return inputs

    def run(inputs):
        pf = inputs["log_pf"].requires_grad_(True)
        tb = gfn_fast.trajectory_balance(pf, inputs["log_pb"], inputs["log_reward"],
                                         inputs["log_z"], beta=inputs["beta"],
                                         lengths=inputs["lengths"], loss="huber(0.5)",
                                         backend=backend)
        vg = gfn_fast.log_partition_variance(pf, inputs["log_pb"], inputs["log_reward"],
                                             lengths=inputs["lengths"], backend=backend)
        (grad,) = torch.autograd.grad(tb + vg, [pf])
        return [tb.detach(), vg.detach(), grad]

    _graph_check(make, run)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend,device", CUDA_ONLY)
def test_cuda_graph_sampling(backend, device):
    def make(seed):
        generator = torch.Generator(device="cuda").manual_seed(seed)
        logits = torch.randn(257, 1000, device=device, generator=generator)
        return {"logits": logits, "mask": logits > -1.0}

    def run(inputs):
        leaf = inputs["logits"].requires_grad_(True)
        actions, log_pi = gfn_fast.sample_actions(leaf, inputs["mask"], epsilon=0.1, seed=5,
                                                  offset=7, backend=backend)
        log_prob = gfn_fast.action_log_prob(leaf, actions, inputs["mask"], backend=backend)
        (grad,) = torch.autograd.grad(log_prob.sum(), [leaf])
        return [actions, log_pi.detach(), log_prob.detach(), grad]

    _graph_check(make, run)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend,device", CUDA_ONLY)
def test_cuda_graph_bfn(backend, device):
    def make(seed):
        generator = torch.Generator(device="cuda").manual_seed(seed)
        return {"x": torch.rand(8, 64, device=device, generator=generator),
                "mu": torch.randn(8, 64, device=device, generator=generator),
                "eps_hat": torch.randn(8, 64, device=device, generator=generator),
                "t": torch.rand(8, device=device, generator=generator),
                "logits": torch.randn(8, 64, 5, device=device, generator=generator),
                "x_index": torch.randint(0, 5, (8, 64), device=device, generator=generator)}

    def run(inputs):
        eps_hat = inputs["eps_hat"].requires_grad_(True)
        logits = inputs["logits"].requires_grad_(True)
        loss = (bfn.continuous_loss(inputs["x"], inputs["mu"], eps_hat, inputs["t"], 0.02,
                                    backend=backend).sum()
                + bfn.discrete_loss(inputs["x_index"], logits, inputs["t"], 0.5, 10, seed=3,
                                    offset=1, backend=backend).sum())
        grads = torch.autograd.grad(loss, [eps_hat, logits])
        flow = bfn.continuous_flow(inputs["x"], inputs["t"], 0.02, seed=1, offset=0,
                                   backend=backend)
        return [loss.detach(), *grads, flow]

    _graph_check(make, run)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend,device", CUDA_ONLY)
def test_cuda_graph_subtb(backend, device):
    """DB (mean and per-step) and SubTB with every kernel path (running sums, tabulated
    `geometric` weights whose M = max n_b stays on the device, pair loop, TB and DB weightings),
    replayed on new values AND new lengths: nothing may be read on the host."""

    def make(seed):
        return _flow_inputs(device, seed=seed)

    def run(inputs):
        pf = inputs["log_pf"].requires_grad_(True)
        flow = inputs["log_flow"].requires_grad_(True)
        leaves = dict(inputs, log_pf=pf, log_flow=flow)
        losses = [_flow_loss(gfn_fast.detailed_balance, leaves, backend, loss="huber(0.5)")]
        steps = _flow_loss(gfn_fast.detailed_balance, leaves, backend, reduction="none")
        for weighting, loss in (("geometric_within", "squared"), ("geometric", "squared"),
                                ("equal", "huber(0.5)"), ("TB", "squared"), ("DB", "squared")):
            losses.append(_flow_loss(gfn_fast.subtrajectory_balance, leaves, backend,
                                     weighting=weighting, loss=loss))
        total = sum(losses) + (steps * _upstream(steps)).sum()
        grads = torch.autograd.grad(total, [pf, flow])
        return [*(value.detach() for value in losses), steps.detach(), *grads]

    _graph_check(make, run)


# ---- numerical stress (docs/numerics.md) ----

@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_balance_large_magnitudes_finite(backend, device, dtype):
    """log-probs of magnitude 1e3 (float32) or ~1e2 summed over many steps, log-rewards of -1e4:
    the residual is large but finite, and the loss and gradients match the float64 reference."""
    batch, steps = 16, 40
    generator = torch.Generator().manual_seed(1)
    magnitude = 1e3 if dtype == torch.float32 else 60.0  # float16 holds |x| <= 65504 but its
    log_pf = (-torch.rand(batch, steps, generator=generator) * magnitude)  # step is 32 at 6e4
    log_reward = -torch.rand(batch, generator=generator) * 1e4
    for op in (gfn_fast.trajectory_balance, gfn_fast.log_partition_variance):
        leaf = log_pf.to(dtype).to(device).requires_grad_(True)
        args = (leaf, None, log_reward.to(device)) + (
            (torch.tensor(50.0, device=device),) if op is gfn_fast.trajectory_balance else ())
        loss = op(*args, loss="half_squared", backend=backend)
        (grad,) = torch.autograd.grad(loss, [leaf])
        leaf64 = log_pf.to(dtype).double().requires_grad_(True)
        args64 = (leaf64, None, log_reward.double()) + (
            (torch.tensor(50.0, dtype=torch.float64),) if op is gfn_fast.trajectory_balance
            else ())
        want = op(*args64, loss="half_squared", backend="reference")
        (want_grad,) = torch.autograd.grad(want, [leaf64])
        assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())
        torch.testing.assert_close(loss.double().cpu(), want, rtol=1e-5, atol=0)
        rtol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(grad.double().cpu(), want_grad, rtol=rtol,
                                   atol=rtol * float(want_grad.abs().max()))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_balance_neg_inf_reward_with_and_without_clip(backend, device):
    log_pf = torch.randn(4, 5, device=device, requires_grad=True)
    log_reward = torch.tensor([-math.inf, -1e4, 0.0, -3.0], device=device)
    for op in (gfn_fast.trajectory_balance, gfn_fast.log_partition_variance):
        extra = (0.0,) if op is gfn_fast.trajectory_balance else ()
        clipped = op(log_pf, None, log_reward, *extra, log_reward_clip_min=-50.0,
                     backend=backend)
        (grad,) = torch.autograd.grad(clipped, [log_pf])
        assert torch.isfinite(clipped) and bool(torch.isfinite(grad).all())
        unclipped = op(log_pf, None, log_reward, *extra, reduction="none", backend=backend)
        if op is gfn_fast.trajectory_balance:
            # only the -inf row is infinite: d = +inf, rho(d) = inf; the others stay finite
            assert unclipped[0] == math.inf and bool(torch.isfinite(unclipped[1:]).all())
        else:
            # the batch mean is -inf: every centred residual is inf - inf or +-inf
            assert not bool(torch.isfinite(unclipped).any())


SUBTB_STRESS = [(gfn_fast.detailed_balance, {})] + [
    (gfn_fast.subtrajectory_balance, dict(weighting=w))
    for w in ("geometric_within", "equal_within", "geometric", "equal", "TB", "DB")]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("loss", ["half_squared", "huber(0.5)"])
def test_subtb_large_magnitudes_finite(backend, device, dtype, loss):
    """DB and SubTB with log-probs and log-flows of magnitude 1e3 (float32; ~60 for the half
    types, whose spacing at 6e4 is 32) over 40 steps and log-rewards of -1e4: residuals up to
    ~1.3e4, finite, and the loss and every gradient match the float64 reference."""
    batch, steps = 16, 40
    generator = torch.Generator().manual_seed(3)
    magnitude = 1e3 if dtype == torch.float32 else 60.0
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    lengths[0] = steps
    values = {"log_pf": -torch.rand(batch, steps, generator=generator) * magnitude,
              "log_pb": -torch.rand(batch, steps, generator=generator) * magnitude,
              "log_flow": torch.randn(batch, steps, generator=generator) * magnitude}
    log_reward = -torch.rand(batch, generator=generator) * 1e4
    names = ["log_pf", "log_pb", "log_flow", "log_reward"]
    for op, kwargs in SUBTB_STRESS:
        leaves = [values[n].to(dtype).to(device).requires_grad_(True) for n in names[:3]]
        leaves.append(log_reward.to(device).requires_grad_(True))
        value = op(*leaves, lengths=lengths.to(device), loss=loss, backend=backend, **kwargs)
        grads = torch.autograd.grad(value, leaves)
        leaves64 = [values[n].to(dtype).double().requires_grad_(True) for n in names[:3]]
        leaves64.append(log_reward.double().requires_grad_(True))
        want = op(*leaves64, lengths=lengths, loss=loss, backend="reference", **kwargs)
        want_grads = torch.autograd.grad(want, leaves64)
        what = f"{op.__name__} {kwargs}"
        assert torch.isfinite(value), what
        torch.testing.assert_close(value.double().cpu(), want, rtol=1e-5, atol=0, msg=what)
        for name, grad, want_grad in zip(names, grads, want_grads, strict=True):
            assert bool(torch.isfinite(grad).all()), f"{what} d/d{name}"
            # per-step gradients come back in the input dtype (a half type carries its rounding)
            rtol = 1e-5 if dtype == torch.float32 or name == "log_reward" else 1e-2
            torch.testing.assert_close(grad.double().cpu(), want_grad, rtol=rtol,
                                       atol=rtol * float(want_grad.abs().max()),
                                       msg=f"{what} d/d{name}")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("loss", ["squared", "huber(0.5)"])
def test_subtb_neg_inf_reward_with_and_without_clip(backend, device, loss):
    """A finite clip makes L_b finite: finite loss and gradients, zero gradient to the clipped
    log R. Without a clip the residual of each transition into a -inf terminal is +inf: DB's
    per-step loss is +inf exactly there, and every DB / SubTB loss that sums it is +inf (never
    NaN: the running sums must not form inf - inf)."""
    generator = torch.Generator().manual_seed(4)
    log_pf = -torch.rand(4, 5, generator=generator)
    # flows rising along the trajectory: the potentials a(k) = F(k) - F(0) - P(k) rise too, so
    # the running first moment sum_i lambda^(j-i) (a(i) - a(j)) is negative before the -inf step
    log_flow = torch.rand(4, 5, generator=generator).cumsum(1)
    lengths = torch.tensor([5, 3, 1, 4])
    log_reward = torch.tensor([-math.inf, -1e4, 0.0, -3.0])
    common = dict(lengths=lengths.to(device), loss=loss, backend=backend)
    for op, kwargs in SUBTB_STRESS:
        leaves = [t.to(device).requires_grad_(True) for t in (log_pf, log_flow, log_reward)]
        pf, flow, reward = leaves
        clipped = op(pf, None, flow, reward, log_reward_clip_min=-50.0, **common, **kwargs)
        grads = torch.autograd.grad(clipped, leaves)
        assert torch.isfinite(clipped), kwargs
        assert all(bool(torch.isfinite(g).all()) for g in grads), kwargs
        assert bool((grads[2][:2] == 0).all()), "a clipped log R gets zero gradient"
        unclipped = op(pf, None, flow, reward, **common, **kwargs)
        assert unclipped == math.inf, (kwargs, float(unclipped))
    steps = gfn_fast.detailed_balance(log_pf.to(device), None, log_flow.to(device),
                                      log_reward.to(device), reduction="none", **common).cpu()
    infinite = torch.zeros(4, 5, dtype=torch.bool)
    infinite[0, 4] = True  # the last transition of the -inf trajectory
    assert bool((steps[infinite] == math.inf).all())
    assert bool(torch.isfinite(steps[~infinite]).all())


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("loss", ["squared", "half_squared"])
@pytest.mark.parametrize("with_pb", [False, True])
def test_db_gradients_with_a_neg_inf_terminal_match_the_reference(backend, device, loss, with_pb):
    """Without a clip, a -inf log R makes only the last residual of its trajectory infinite:
    the gradients of the earlier steps, F(0) included, stay those of the reference (the Numba
    backward once seeded its flow-gradient recurrence with 0 * terminal, a NaN here)."""
    generator = torch.Generator().manual_seed(12)
    log_pf = -torch.rand(5, 6, generator=generator, dtype=torch.float64)
    log_pb = -torch.rand(5, 6, generator=generator, dtype=torch.float64) if with_pb else None
    log_flow = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    log_reward = torch.tensor([-math.inf, 0.5, -math.inf, -math.inf, 1.0], dtype=torch.float64)
    lengths = torch.tensor([6, 3, 3, 1, 2])
    grads = {}
    for name in ("reference", backend):
        leaves = [t.to(device).requires_grad_(True)
                  for t in (log_pf, log_flow) + ((log_pb,) if with_pb else ())]
        pb = leaves[2] if with_pb else None
        value = gfn_fast.detailed_balance(leaves[0], pb, leaves[1], log_reward.to(device),
                                          lengths=lengths.to(device), loss=loss, backend=name)
        assert value == math.inf
        grads[name] = [g.cpu() for g in torch.autograd.grad(value, leaves)]
    for got, want in zip(grads[backend], grads["reference"], strict=True):
        torch.testing.assert_close(got, want, equal_nan=True)
    assert bool(torch.isfinite(grads[backend][1][[0, 2], :2]).all())  # F(0), F(1): finite


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_subtb_neg_inf_log_prob(backend, device):
    """An impossible transition (log P_F = -inf): DB's residual is -inf at that step only (its
    per-step loss +inf there, finite elsewhere); SubTB never returns a finite loss for it (the
    pairs spanning the step are infinite; pairs after it difference two infinite potentials,
    so the sum may be NaN: docs/numerics.md); check_finite=True names the input."""
    generator = torch.Generator().manual_seed(8)
    log_pf = -torch.rand(3, 5, generator=generator)
    log_pf[0, 2] = -math.inf
    log_flow = torch.randn(3, 5, generator=generator)
    log_reward = torch.randn(3, generator=generator)
    args = (log_pf.to(device), None, log_flow.to(device), log_reward.to(device))
    steps = gfn_fast.detailed_balance(*args, reduction="none", backend=backend).cpu()
    assert steps[0, 2] == math.inf
    steps[0, 2] = 0.0
    assert bool(torch.isfinite(steps).all())
    assert gfn_fast.detailed_balance(*args, backend=backend) == math.inf
    for weighting in ("geometric_within", "equal_within", "geometric", "equal", "TB", "DB"):
        for loss in ("squared", "huber(0.5)"):
            value = gfn_fast.subtrajectory_balance(*args, weighting=weighting, loss=loss,
                                                   backend=backend)
            assert not torch.isfinite(value), (weighting, loss)
    for op in (gfn_fast.detailed_balance, gfn_fast.subtrajectory_balance):
        with pytest.raises(ValueError, match=f"gfn_fast.{op.__name__}: `log_pf`.*infinite"):
            op(*args, check_finite=True, backend=backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_sampling_extreme_logits_and_single_allowed_action(backend, device, dtype):
    """Logits of +-1e4 (float16: +-6e4 is its range; use +-1e4 too) and rows with exactly one
    allowed action: the allowed action is certain (log pi = 0, entropy = 0), the others are
    never drawn, log-probs are finite, and gradients are finite."""
    rows, width = 64, 50
    generator = torch.Generator().manual_seed(2)
    logits = torch.where(torch.rand(rows, width, generator=generator) < 0.5, 1e4, -1e4)
    logits = logits.to(dtype).to(device)
    mask = torch.rand(rows, width, generator=generator) < 0.5
    only = torch.randint(0, width, (rows,), generator=generator)
    single = torch.arange(rows) % 3 == 0
    mask[single] = False
    mask[torch.arange(rows), only] = True
    mask = mask.to(device)
    actions, log_pi, entropy = gfn_fast.sample_actions(logits, mask, seed=1, epsilon=0.3,
                                                       return_entropy=True, backend=backend)
    assert bool(mask[torch.arange(rows, device=device), actions].all())
    assert bool(torch.isfinite(log_pi).all()) and bool(torch.isfinite(entropy).all())
    assert bool((actions[single.to(device)] == only.to(device)[single.to(device)]).all())
    assert bool((log_pi[single.to(device)] == 0).all())
    assert bool((entropy[single.to(device)] == 0).all())
    leaf = logits.clone().requires_grad_(True)
    log_prob = gfn_fast.action_log_prob(leaf, actions, mask, scale=0.5, backend=backend)
    (grad,) = torch.autograd.grad(log_prob.sum(), [leaf])
    assert bool(torch.isfinite(log_prob).all()) and bool(torch.isfinite(grad).all())
    want = gfn_fast.action_log_prob(logits.double().cpu(), actions.cpu(), mask.cpu(), scale=0.5,
                                    backend="reference")
    torch.testing.assert_close(log_prob.double().cpu(), want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_log_prob_gradient_is_zero_where_one_action_is_allowed(backend, device):
    """A row with one allowed action has log pi = 0 whatever its logits, scale and temperature,
    so both gradients are exactly 0. A backward that recomputes the scaled logit with other
    rounding than the forward's lse (a fused multiply-add: Numba's log-prob kernels once had
    fastmath "contract") gives ~ulp(|z|) instead, here up to ~1e-5."""
    rows, width = 256, 3
    generator = torch.Generator().manual_seed(5)
    logits = (torch.randn(rows, width, generator=generator) * 60).to(device).requires_grad_(True)
    scale = (torch.rand(rows, generator=generator) * 2 + 0.3).to(device).requires_grad_(True)
    mask = torch.zeros(rows, width, dtype=torch.bool)
    actions = torch.randint(0, width, (rows,), generator=generator)
    mask[torch.arange(rows), actions] = True
    log_pi = gfn_fast.action_log_prob(logits, actions.to(device), mask.to(device), scale=scale,
                                      temperature=0.7528, backend=backend)
    grad_logits, grad_scale = torch.autograd.grad(log_pi.sum(), [logits, scale])
    assert bool((log_pi == 0).all())
    assert bool((grad_logits == 0).all()) and bool((grad_scale == 0).all())


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_sampling_float16_overflowing_scale_stays_finite(backend, device):
    """scale * logits beyond float16's range: the products are formed in float32, so the
    policy stays finite where the math is finite (19 tied logits: log pi = -log 19)."""
    logits = torch.full((8, 20), 6e4, dtype=torch.float16, device=device)
    logits[:, 3] = -6e4
    actions, log_pi = gfn_fast.sample_actions(logits, scale=4.0, seed=0, backend=backend)
    assert bool(torch.isfinite(log_pi).all())
    assert bool((actions != 3).all())
    # log_pi = z_a - logsumexp loses up to half an ulp of |z| = 2.4e5 in float32 (numerics.md)
    torch.testing.assert_close(log_pi.cpu(), torch.full((8,), -math.log(19)), rtol=0,
                               atol=2.4e5 * 2.0**-23)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_bfn_extreme_times_finite(backend, device):
    """t = 0 and t = 1 with sigma_1 = 1e-3 (loss weight sigma_1^(-2t) = 1e6), and discrete
    logits of +-1e4: finite losses and gradients."""
    x = torch.rand(4, 16, device=device) * 2 - 1
    mu = torch.randn(4, 16, device=device)
    eps_hat = torch.randn(4, 16, device=device, requires_grad=True)
    t = torch.tensor([0.0, 1e-7, 0.5, 1.0], device=device)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        leaf = eps_hat.detach().to(dtype).requires_grad_(True)
        loss = bfn.continuous_loss(x.to(dtype), mu.to(dtype), leaf, t, 1e-3, backend=backend)
        (grad,) = torch.autograd.grad(loss.sum(), [leaf])
        assert bool(torch.isfinite(loss).all()), dtype
        assert loss.dtype == torch.float32
        if dtype == torch.float32:  # half gradients may overflow: they carry the 1e6 weight
            assert bool(torch.isfinite(grad).all())
    x_index = torch.randint(0, 5, (4, 16), device=device)
    logits = (torch.randint(0, 2, (4, 16, 5), device=device).float() * 2e4 - 1e4)
    logits.requires_grad_(True)
    loss = bfn.discrete_loss(x_index, logits, t, 0.5, backend=backend)
    (grad,) = torch.autograd.grad(loss.sum(), [logits])
    assert bool(torch.isfinite(loss).all()) and bool(torch.isfinite(grad).all())


def _entropy(row) -> float:
    import mpmath

    z = [mpmath.mpf(v) for v in row]
    lse = max(z) + mpmath.log(sum(mpmath.e ** (v - max(z)) for v in z))
    return float(-sum(mpmath.e ** (v - lse) * (v - lse) for v in z))


@pytest.mark.parametrize("backend,device", BACKENDS + [pytest.param("reference", "cpu")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_entropy_absolute_error_is_within_an_ulp_of_the_logits(backend, device, dtype):
    """docs/numerics.md: the entropy has the absolute accuracy of log pi, about an ulp of the
    largest |z|, so a near-deterministic row (H ~ 1e-8 in float32) keeps few correct digits."""
    eps = torch.finfo(dtype).eps
    for row in ([0, -40, -40], [0, -20, -20], [0, -12], [1000, 960, 970], [5, 0, 0, 0],
                [0, -3, -3, -30]):
        logits = torch.tensor([row], dtype=dtype, device=device)
        got = gfn_fast.sample_actions(logits, seed=1, return_entropy=True, backend=backend)[-1]
        assert abs(got.item() - _entropy(row)) <= 2 * eps * max(1, max(map(abs, row))), row


@pytest.mark.parametrize("backend,device", BACKENDS + [pytest.param("reference", "cpu")])
def test_continuous_loss_precision_as_documented(backend, device):
    """docs/numerics.md: in float32 the continuous loss's relative error is about 2^-24 /
    sigma_1^t where x_hat is formed first (the reference, Triton, CUDA), within 3e-5 at
    sigma_1 = 1e-3, t = 1; Numba forms each residual in float64. Where sigma_1^t is below the
    data's ulp, x_hat rounds to the data and the loss is lost, in float64 too."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(16, 256, generator=gen, dtype=torch.float64) * 2 - 1).float()
    t = torch.ones(16)
    mu = bfn.continuous_flow(x, t, 1e-3, seed=1, backend="reference")
    eps_hat = torch.randn(16, 256, generator=gen)
    exact = bfn.continuous_loss(x.double(), mu.double(), eps_hat.double(), t.double(), 1e-3,
                                backend="reference")
    got = bfn.continuous_loss(x.to(device), mu.to(device), eps_hat.to(device), t.to(device),
                              1e-3, backend=backend).cpu().double()
    error = ((got - exact) / exact).abs().max().item()
    assert error < (1e-7 if backend == "numba" else 3e-5)
    # mu = x: x - x_hat = sigma_1^t eps_hat / sqrt(gamma), so the loss is -ln(sigma_1) |eps_hat|^2
    # / gamma; at sigma_1 = 1e-20 that offset is below the ulp of x, and the loss comes out as
    # 0 or a fraction of the truth
    lost = bfn.continuous_loss(x.double().to(device), x.double().to(device),
                               eps_hat.double().to(device), t.double().to(device), 1e-20,
                               backend=backend).cpu()
    truth = -math.log(1e-20) * (eps_hat.double() ** 2).sum(dim=1)
    assert bool((lost < 0.1 * truth).all())


@pytest.mark.skipif(not available_backends("cpu"), reason="no CPU backend")
def test_check_finite_names_the_input_on_inf_log_prob():
    log_pf = torch.randn(3, 4)
    log_pf[1, 2] = -math.inf
    with pytest.raises(ValueError, match="gfn_fast.trajectory_balance: `log_pf`.*infinite"):
        gfn_fast.trajectory_balance(log_pf, None, torch.randn(3), 0.0, check_finite=True)
    # a -inf log-prob is a legal "impossible transition" without the check: the loss is inf
    assert gfn_fast.trajectory_balance(log_pf, None, torch.randn(3), 0.0) == math.inf


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU path of the script")
def test_sanitize_script_refuses_to_pass_without_a_gpu():
    """tools/sanitize.sh must never report 'clean' when it could not run the sanitizer."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "tools" / "sanitize.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                            env={**__import__("os").environ, "SANITIZER": "/bin/true"})
    assert result.returncode == 2 and "no CUDA device" in result.stderr
    assert "clean" not in result.stdout


_FLAGS_PROBE = """
import json, numba, numpy as np
from gfn_fast.cpu import _vmath


@numba.njit
def unflagged(x):  # the control: a callee that sets no flags of its own
    return x * np.float32(2.0) + np.float32(1.0)


@numba.njit(fastmath={"reassoc", "contract", "nnan"})
def caller(x, u, v):
    tails = np.full(4, np.float64(x))
    _vmath.erfc_pos_inplace(tails)
    return (_vmath._exp32(x) + _vmath._exp64(np.float64(x)) + _vmath.log(np.float64(x))
            + _vmath.log32(u) + _vmath.box_muller(u, v)[0] + unflagged(x) + tails[0])


caller(np.float32(0.5), np.float32(0.25), np.float32(1.0))
flags = {}
for fn in (_vmath._exp32, _vmath._exp64, _vmath.log, _vmath.log32, _vmath.box_muller,
           _vmath.erfc_pos_inplace, unflagged):
    ir = "".join(fn.inspect_llvm(sig) for sig in fn.signatures)
    flags[fn.py_func.__name__] = [flag for flag in ("reassoc", "nnan", "contract") if flag in ir]
print("FLAGS " + json.dumps(flags))
"""


def test_vmath_helpers_keep_their_own_fastmath_flags_whoever_compiles_them_first(tmp_path):
    """Numba compiles a callee that sets no fastmath flags with its first caller's and caches
    that build on disk for every later caller, so kernels' results depended on which kernel had
    compiled first (the BFN demo gave two different test losses from the same code). The shared
    exp / log / Box-Muller helpers set their own: contraction only, even when a reassoc + nnan
    kernel compiles them first into an empty cache. The control shows the probe sees inherited
    flags."""
    flags = run_probe(_FLAGS_PROBE, "FLAGS", tmp_path)
    assert flags.pop("unflagged") == ["reassoc", "nnan", "contract"]
    assert flags == {name: ["contract"] for name in ("_exp32", "_exp64", "log", "log32",
                                                     "box_muller", "erfc_pos_inplace")}


_WIDE_PROBE = """
import json, torch
import gfn_fast
from gfn_fast.cpu import _vmath, bfn, sampling


def libraries(library, seen):
    if id(library) not in seen:
        seen.add(id(library))
        yield library
        for linked in library._linking_libraries:
            yield from libraries(linked, seen)


bfn.continuous_flow(torch.zeros(64, 1031), torch.rand(64), 0.01, 1, 0)
# large enough to run the parallel kernels, not their serial twins
bfn.discrete_loss_forward(torch.zeros(64, 64, dtype=torch.long), torch.randn(64, 64, 8),
                          torch.rand(64), 1.0)
bfn.discrete_nstep_loss_forward(torch.zeros(64, 64, dtype=torch.long), torch.randn(64, 64, 8),
                                torch.rand(64), 1.0, 10, 1, 0)
bfn.discrete_step(torch.zeros(64, 64, 8), torch.randn(64, 64, 8), 0.1, 1, 0, True,
                  torch.zeros(64, 64, dtype=torch.long))
logits = torch.randn(64, 32, requires_grad=True)
log_pi = gfn_fast.action_log_prob(logits, torch.zeros(64, dtype=torch.long), backend="numba")
log_pi.sum().backward()
found = {}
for kernel in (bfn._continuous_flow, bfn._discrete_loss_forward, bfn._discrete_nstep_loss_forward,
               bfn._discrete_step, sampling._log_prob_rows, sampling._log_prob_backward_rows):
    for cres in kernel.overloads.values():
        for library in libraries(cres.library, set()):
            name = library.name
            if name.startswith("__numba_parfor_gufunc"):
                name = kernel.py_func.__name__ + " prange body"
            if name in found or not library.get_llvm_str():
                continue
            found[name] = _vmath._WIDE in library.get_llvm_str()
print("WIDE " + json.dumps(found))
"""


def test_kernels_are_compiled_for_wide_vectors(tmp_path):
    """vm.wide_vectors() puts "prefer-vector-width"="512" on the function being compiled through
    a private path into llvmlite's attribute set. A change there would silently cost the BFN
    kernels and the log-prob kernels their 512-bit vectors (a fifth to a third of their time on
    Intel AVX-512 CPUs), so the attribute is looked for in the LLVM IR of a fresh build: the
    prange bodies of a noise kernel, a loss kernel and both log-prob kernels and the BFN row
    helpers (the n-step rows and the discrete step's body among them) carry it; box_muller,
    which does not ask for it, shows the probe does not find it everywhere."""
    found = run_probe(_WIDE_PROBE, "WIDE", tmp_path)
    for name in ("_continuous_flow prange body", "_discrete_loss_forward prange body",
                 "_log_prob_rows prange body", "_log_prob_backward_rows prange body",
                 "_fill_normals", "_exp_inplace", "_shift_rows", "_nstep_rows",
                 "_discrete_step_row"):
        assert found.get(name) is True, (name, found)
    assert found.get("box_muller") is False, found


_PACKED_PROBE = r"""
import json, re, numba, numpy as np
from gfn_fast.cpu import _philox as px, _vmath as vm, bfn, sampling

one = np.float32(1.0)


@numba.njit
def scalar_gumbels(words, out):  # the control: Numba's `/` keeps it scalar
    for i in range(words.shape[0]):
        v = min(px.open_unit(np.uint64(words[i])), px.ONE_MINUS_TWO_M24)
        t = -v
        w = one + t
        out[i] = -vm.log32(v if w == one else -(vm.log32(w) * t / (w - one)))


words = np.arange(3 * 4 * 16, dtype=np.uint32).reshape(3, 4, 16)
sampling._fill_gumbels(words, np.empty((3, 2, 16), np.float32), 16)
scalar_gumbels(words.reshape(-1), np.empty(words.size, np.float32))
found = {fn.py_func.__name__: bool(re.search(r"\bv?divps\b", "".join(
    fn.inspect_asm(sig) for sig in fn.signatures))) for fn in (sampling._fill_gumbels,
                                                                scalar_gumbels)}
# the chunk's exponentials (float32 rows) and log-sum-exps: packed multiply-adds
sampling._chunk_exps(np.zeros(160, np.float32), np.empty(160, np.float32), 160)
sampling._chunk_lse(np.zeros(32), np.ones(32), np.empty(32), 32)
for fn, pattern in ((sampling._chunk_exps, r"\bvfmadd\w*ps\b"),
                    (sampling._chunk_lse, r"\bvfmadd\w*pd\b")):
    found[fn.py_func.__name__] = bool(re.search(pattern, "".join(
        fn.inspect_asm(sig) for sig in fn.signatures)))
# the discretised BFN kernels' erfc over a row of bin edges (libm's erfc an edge before)
vm.erfc_pos_inplace(np.linspace(0.0, 5.0, 64))
found["erfc_pos_inplace"] = bool(re.search(r"\bvfmadd\w*pd\b", "".join(
    vm.erfc_pos_inplace.inspect_asm(sig) for sig in vm.erfc_pos_inplace.signatures)))
# the discretised generation step on float32: its element loop stays float32 (float64
# constants in it once widened every vector to float64, converting the inputs: vcvtps2pd)
f32 = np.zeros((4, 64), np.float32)
bfn._discretised_step(f32.copy(), np.ones(4, np.float32), f32, f32, 256, 0.7, 2.0, 1, 2, 3, 4,
                      True, np.empty_like(f32))
found["_discretised_step widens"] = bool(re.search(r"\bvcvtps2pd\b", "".join(
    bfn._discretised_step.inspect_asm(sig) for sig in bfn._discretised_step.signatures)))
print("PACKED " + json.dumps(found))
"""


def test_gumbel_prepass_is_vectorised(tmp_path):
    """The Numba sampler draws the Gumbel noise of rows of up to 256 actions in one loop
    (sampling._fill_gumbels) that must vectorise: scalar, the same loop cost ~15 ns a value
    against ~1.3 (libm's logf, or a division with Numba's zero-divisor test, kept it scalar).
    Its machine code from a fresh build must divide packed float32 vectors (the quotient and
    log32's (m - 1) / (m + 1)); the same transform written with `/`, the control, divides one
    value at a time. The same rows' exponentials and log-sum-exps (sampling._chunk_exps,
    _chunk_lse; libm calls a row and an element before) must use packed multiply-adds, and so
    must _vmath.erfc_pos_inplace, the discretised BFN kernels' erfc (a call to it per element
    was scalar: 53 ns an element, against ~6.5 vectorised). The float32 discretised generation
    step must not widen its vectors to float64 (it did, with float64 constants in its element
    loop: 217 against 191 us at CIFAR-10's shape on two threads)."""
    found = run_probe(_PACKED_PROBE, "PACKED", tmp_path)
    assert found == {"_fill_gumbels": True, "scalar_gumbels": False, "_chunk_exps": True,
                     "_chunk_lse": True, "erfc_pos_inplace": True,
                     "_discretised_step widens": False}, found


_BUILDS_PROBE = """
import json, torch
import gfn_fast
from gfn_fast import bfn
from gfn_fast.cpu import balance, bfn as cpu_bfn, rollout, sampling
from gfn_fast.envs import HyperGrid
from gfn_fast.rollout import sample_trajectories

for batch in (2, 64):  # the serial twins, then the parallel kernels
    x = torch.randint(0, 27, (batch, 64))
    t = torch.rand(batch)
    logits = torch.randn(batch, 64, 27, requires_grad=True)
    bfn.continuous_flow(torch.zeros(batch, 3072), t, 0.01, seed=1, backend="numba")
    bfn.discrete_flow(x, t, 1.0, 27, seed=1, backend="numba")
    loss = bfn.discrete_loss(x, logits, t, 1.0, n_steps=10, seed=1, backend="numba")
    loss.sum().backward()
    bfn.discrete_step(torch.log_softmax(torch.randn(batch, 64, 27), -1), logits.detach(), 0.1,
                      seed=1, backend="numba")
    log_pf = torch.randn(batch * 64, 64, requires_grad=True)
    log_reward = torch.randn(batch * 64)
    gfn_fast.trajectory_balance(log_pf, None, log_reward, torch.tensor(0.0),
                                backend="numba").backward()
    gfn_fast.log_partition_variance(log_pf, None, log_reward, backend="numba").backward()
env = HyperGrid(ndim=4, height=8)
net = torch.nn.Linear(32, 5)
with torch.no_grad():  # its later steps run fewer live rows: both twins of the step kernel
    sample_trajectories(lambda f, _: net(f), env, 4096, seed=0, backend="numba")
# the sampler with a byte mask and a per-row scale draws through the rollout's build
logits = torch.randn(4096, 5)
mask = torch.rand(4096, 5) > 0.2
mask[:, -1] = True
gfn_fast.sample_actions(logits, mask, scale=torch.rand(4096) + 0.5, epsilon=0.1, seed=1,
                        backend="numba")
builds = {fn.py_func.__name__: len(fn.signatures) for fn in (
    cpu_bfn._fill_normals, cpu_bfn._nstep_rows, cpu_bfn._discrete_step_row,
    rollout._step_chunk, sampling.sample_chunk, balance._rows_forward)}
builds["_hypergrid_step twins"] = len(rollout._hypergrid_step.signatures) + len(
    sampling.serial_if(rollout._hypergrid_step, True).signatures)
print("BUILDS " + json.dumps(builds))
"""


def test_shared_helpers_are_built_once(tmp_path):
    """A cold first run is mostly Numba compiling (`bench --quick`: ~60 of its ~70 s before these
    changes), and each build of a helper that loops over rows costs ~1-3 s. The row and chunk
    helpers are functions of their own, built once and shared by a kernel's parallel version
    and serial twin and by every kernel that calls them (inlined by Numba, each caller built
    and put through the parallel-loop passes its own copy), and their callers pass one array
    type (a 2-D and a 1-D array, or an unsigned prange index, made a second build). TB with one
    log Z and VarGrad share a build of the forward kernel; the rollout and the sampler with a
    mask and a per-row scale share sample_chunk's. In a fresh interpreter, float32
    calls of every caller, serial and parallel, leave one build of each."""
    builds = run_probe(_BUILDS_PROBE, "BUILDS", tmp_path)
    assert builds == {"_fill_normals": 1, "_nstep_rows": 1, "_discrete_step_row": 1,
                      "_step_chunk": 1, "sample_chunk": 1, "_rows_forward": 1,
                      "_hypergrid_step twins": 2}, builds


_FORK_PROBE = r"""
import json, os, torch, gfn_fast

torch.manual_seed(0)
x = torch.randn(64, 4096)
lp = torch.randn(4096, 64, requires_grad=True)
logits = torch.randn(20000, 40, requires_grad=True)


def work():
    flow = gfn_fast.bfn.continuous_flow(x, 0.5, 0.1, seed=1)
    loss = gfn_fast.trajectory_balance(lp, None, torch.zeros(4096), 0.0)
    (grad_lp,) = torch.autograd.grad(loss, [lp])
    actions, log_pi = gfn_fast.sample_actions(logits.detach(), seed=3)
    (grad_logits,) = torch.autograd.grad(gfn_fast.action_log_prob(logits, actions).sum(),
                                         [logits])
    return [float(t.detach().double().sum()) for t in (flow, loss, grad_lp, actions, log_pi,
                                                       grad_logits)]


from numba.np.ufunc import parallel
parent = work()
started = bool(parallel._is_initialized)
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    torch.set_num_threads(1)  # as DataLoader workers do: torch's own pool cannot run either
    try:
        os.write(write, json.dumps(work()).encode())
    finally:
        os._exit(0)
os.close(write)
child = json.loads(os.read(read, 1 << 16).decode() or "null")
status = os.waitpid(pid, 0)[1]
print("FORK", json.dumps({"pool_started": started, "status": status, "same": child == parent}))
"""


_ABSOLUTE_TB = """
import torch, gfn_fast
log_pf = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
loss = gfn_fast.trajectory_balance(log_pf, None, torch.zeros(1, dtype=torch.float64), 0.0,
                                   loss="absolute", backend="numba")
print(gfn_fast.__file__, loss.item())
"""


def test_an_edited_helper_reaches_the_kernels_that_inline_it(tmp_path):
    """Numba revalidates a cached kernel against its own source file only, so an edit of a
    helper in another file (here the absolute loss in _common.rho, inlined by the TB kernel of
    balance.py) used to leave the kernel loading its old build from the cache. A copy of the
    package is run, its helper edited, and run again with the same cache."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    package = tmp_path / "copy" / "gfn_fast"
    shutil.copytree(Path(gfn_fast.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    env = dict(os.environ, PYTHONPATH=str(package.parent),
               NUMBA_CACHE_DIR=str(tmp_path / "cache"))

    def run():
        result = subprocess.run([sys.executable, "-c", _ABSOLUTE_TB], env=env,
                                cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        where, value = result.stdout.split()
        assert Path(where).parent == package  # the copy ran, not the repository
        return float(value)

    assert run() == 0.75
    helper = package / "cpu" / "_common.py"
    source = helper.read_text()
    assert source.count("return abs(d)") == 1
    helper.write_text(source.replace("return abs(d)", "return 2.0 * abs(d)"))
    assert run() == 1.5
    assert run() == 1.5  # rebuilt once and cached again


def test_ops_run_in_a_process_forked_after_the_pool_started():
    """GNU OpenMP cannot run after a fork: Numba terminated a child that called a parallel
    kernel after its parent had ("fork() called from a process already using GNU OpenMP"), e.g.
    a DataLoader worker forked by a training process. In such a child every kernel runs its
    serial twin, with the parent's results bit for bit."""
    found = run_probe(_FORK_PROBE, "FORK")
    assert found == {"pool_started": True, "status": 0, "same": True}, found
