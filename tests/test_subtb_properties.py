"""Property-based checks of detailed balance (DB) and sub-trajectory balance (SubTB): random
shapes, lengths, layouts (padded, time-major `.T`, sliced views with odd strides, bool masks,
packed cu_seqlens, strided packed views), dtypes, optional inputs (log_pb, forward-looking
log_state_reward, beta), clips, losses, reductions, weightings and lambda; each backend against
the float64 reference, the loss and the gradient of every differentiable input.

The CI profile runs 25 examples per backend; `HYPOTHESIS_PROFILE=long pytest
tests/test_subtb_properties.py` runs many more by hand.
"""

import math

import pytest
import torch
from conftest import backend_params, property_settings
from hypothesis import given
from hypothesis import strategies as st
from test_balance import assert_close

import gfn_fast

PROFILE = property_settings(ci=25, long=1000)

LOSSES = ["squared", "half_squared", "absolute", "huber(0.3)", "shifted_cosh", "linex(0.5)",
          "linex(-0.8)"]
WEIGHTINGS = ["geometric_within", "equal_within", "geometric", "equal", "TB", "DB"]
LAYOUTS = ["padded", "time_major", "sliced", "mask", "packed", "packed_sliced"]
# (rtol of the loss and per-trajectory gradients, rtol of per-step gradients), of the largest
# magnitude. Everything accumulates in float32 (float64 for float64) from inputs that are exact in
# both, so half inputs keep float32's bound on the loss; per-step gradients come back in the input
# dtype and carry up to a few of its ulps (float16 2^-11, bfloat16 2^-8). SubTB sums O(T^2)
# residuals, hence 2e-5 rather than TB's 1e-5 in float32 (tests/test_subtb.py).
TOLERANCE = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 2e-5),
             torch.float16: (2e-5, 2e-3), torch.bfloat16: (2e-5, 1.6e-2)}
PER_STEP = ("log_pf", "log_pb", "log_flow", "log_state_reward")


@st.composite
def problems(draw):
    op = draw(st.sampled_from(["db", "subtb"]))
    problem = {
        "op": op,
        "batch": draw(st.integers(1, 12)),
        "steps": draw(st.integers(1, 16)),
        "lengths": draw(st.sampled_from(["random", "random", "ones", "full"])),
        "layout": draw(st.sampled_from(LAYOUTS)),
        "dtype": draw(st.sampled_from(list(TOLERANCE))),
        "with_pb": draw(st.booleans()),
        "with_sr": draw(st.booleans()),
        "beta": draw(st.sampled_from([None, "float", "scalar", "vector"])),
        "loss": draw(st.sampled_from(LOSSES)),
        "clip": draw(st.sampled_from([-math.inf, -1.0, 0.5])),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }
    if op == "db":
        problem["reduction"] = draw(st.sampled_from(["mean", "sum", "none"]))
    else:
        problem["weighting"] = draw(st.sampled_from(WEIGHTINGS))
        problem["lamda"] = draw(st.one_of(st.sampled_from([1.0, 0.9]),
                                          st.floats(0.05, 1.0, allow_nan=False)))
    return problem


def build(problem, device):
    """(inputs, layout kwargs, validity mask [B, T]). Padding and the gaps of sliced views hold
    NaN, so a kernel that reads them poisons the result."""
    generator = torch.Generator().manual_seed(problem["seed"])
    batch, steps, dtype = problem["batch"], problem["steps"], problem["dtype"]
    if problem["lengths"] == "ones":
        lengths = torch.ones(batch, dtype=torch.int64)
    elif problem["lengths"] == "full":
        lengths = torch.full((batch,), steps, dtype=torch.int64)
    else:
        lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    valid = torch.arange(steps)[None, :] < lengths[:, None]
    # Half-precision gradients of the exponential losses overflow for residuals of ~10 (the
    # math is finite, the dtype is not: docs/numerics.md); keep half residuals small.
    scale = 0.2 if dtype in (torch.float16, torch.bfloat16) else 1.0
    layout = problem["layout"]

    def per_step():
        values = torch.randn(batch, steps, generator=generator, dtype=torch.float64) * scale
        values = values.masked_fill(~valid, math.nan).to(dtype)
        if layout == "time_major":
            return values.T.contiguous().to(device).T
        if layout == "sliced":  # a view with strides (3 T + 2, 3), offset into its storage
            wide = torch.full((batch + 2, 3 * steps + 2), math.nan, dtype=dtype, device=device)
            wide[1:-1, 1:-1:3] = values.to(device)
            return wide[1:-1, 1:-1:3]
        if layout == "packed":
            return values[valid].to(device)
        if layout == "packed_sliced":  # flat with stride 2
            flat = values[valid]
            wide = torch.full((2 * flat.shape[0] + 1,), math.nan, dtype=dtype, device=device)
            wide[1::2] = flat.to(device)
            return wide[1::2]
        return values.to(device)

    per_row = torch.float64 if dtype == torch.float64 else torch.float32
    inputs = {"log_pf": per_step(), "log_pb": per_step() if problem["with_pb"] else None,
              "log_flow": per_step(),
              "log_state_reward": per_step() if problem["with_sr"] else None,
              "log_reward": (torch.randn(batch, generator=generator) * 2).to(per_row).to(device),
              "beta": None}
    if problem["beta"] == "float":
        inputs["beta"] = 1.3
    elif problem["beta"] == "scalar":
        inputs["beta"] = torch.tensor(0.8, dtype=per_row, device=device)
    elif problem["beta"] == "vector":
        inputs["beta"] = (torch.rand(batch, generator=generator) + 0.5).to(per_row).to(device)
    if layout.startswith("packed"):
        cu_seqlens = torch.zeros(batch + 1, dtype=torch.int64)
        cu_seqlens[1:] = lengths.cumsum(0)
        layout_args = {"cu_seqlens": cu_seqlens.to(device)}
    elif layout == "mask":
        layout_args = {"mask": valid.to(device)}
    else:
        layout_args = {"lengths": lengths.to(device)}
    return inputs, layout_args, valid


def run(problem, inputs, layout_args, backend, upstream_seed):
    """Loss and the gradients of sum(loss * w) (random w for reduction 'none') w.r.t. every
    floating tensor input."""
    leaves = {name: value.detach().clone().requires_grad_(True)
              if isinstance(value, torch.Tensor) else value for name, value in inputs.items()}
    common = dict(log_state_reward=leaves["log_state_reward"], beta=leaves["beta"],
                  log_reward_clip_min=problem["clip"], loss=problem["loss"], backend=backend,
                  **layout_args)
    args = (leaves["log_pf"], leaves["log_pb"], leaves["log_flow"], leaves["log_reward"])
    if problem["op"] == "db":
        loss = gfn_fast.detailed_balance(*args, reduction=problem["reduction"], **common)
    else:
        loss = gfn_fast.subtrajectory_balance(*args, weighting=problem["weighting"],
                                              lamda=problem["lamda"], **common)
    generator = torch.Generator().manual_seed(upstream_seed)
    weights = (torch.rand(loss.shape, generator=generator, dtype=torch.float64) + 0.5)
    names = [n for n, v in leaves.items() if isinstance(v, torch.Tensor)]
    grads = torch.autograd.grad((loss * weights.to(loss.dtype).to(loss.device)).sum(),
                                [leaves[n] for n in names])
    return loss.detach(), dict(zip(names, grads, strict=True))


def to_reference(inputs):
    return {name: value.detach().cpu().to(torch.float64) if isinstance(value, torch.Tensor)
            else value for name, value in inputs.items()}


@pytest.mark.parametrize("backend,device", backend_params())
@PROFILE
@given(problem=problems())
def test_random_problems_match_reference(backend, device, problem):
    inputs, layout_args, valid = build(problem, device)
    loss, grads = run(problem, inputs, layout_args, backend, problem["seed"])
    ref_loss, ref_grads = run(problem, to_reference(inputs),
                              {k: v.cpu() for k, v in layout_args.items()}, "reference",
                              problem["seed"])
    dtype = problem["dtype"]
    rtol, step_rtol = TOLERANCE[dtype]
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert loss.shape == ref_loss.shape
    assert_close(loss, ref_loss, rtol, f"loss {problem}")
    padded = not problem["layout"].startswith("packed")
    if padded and loss.dim() == 2:  # reduction 'none': zero on the padding
        assert bool((loss.cpu()[~valid] == 0).all()), "padding of the per-step loss not zero"
    assert set(grads) == set(ref_grads)
    for name, ref in ref_grads.items():
        grad = grads[name]
        assert grad.dtype == inputs[name].dtype and grad.shape == inputs[name].shape, name
        tol = step_rtol if name in PER_STEP else rtol
        assert_close(grad, ref, tol, f"d/d{name} {problem}")
        if name in PER_STEP and padded:
            assert bool((grad.cpu()[~valid] == 0).all()), f"{name}: padding gradient not zero"
