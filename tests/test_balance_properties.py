"""Property-based checks of TB/VarGrad: random shapes, lengths, layouts, strides, dtypes,
losses and optional inputs, each backend against the float64 reference.

The CI profile runs a few dozen examples per backend; `HYPOTHESIS_PROFILE=long pytest
tests/test_balance_properties.py` runs many more by hand.
"""

import math

import pytest
import torch
from conftest import available_backends, property_settings
from hypothesis import given
from hypothesis import strategies as st
from test_balance import check_against_reference

import gfn_fast

PROFILE = property_settings(ci=25, long=1000)

LOSSES = ["squared", "half_squared", "absolute", "huber(0.3)", "shifted_cosh", "linex(0.5)"]


@st.composite
def balance_problems(draw):
    batch = draw(st.integers(1, 40))
    steps = draw(st.integers(1, 24))
    layout = draw(st.sampled_from(["padded", "time_major", "sliced", "packed"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16,
                                  torch.bfloat16]))
    seed = draw(st.integers(0, 2**31 - 1))
    return {
        "batch": batch, "steps": steps, "layout": layout, "dtype": dtype, "seed": seed,
        "with_pb": draw(st.booleans()),
        "log_z": draw(st.sampled_from(["scalar", "vector"])),
        "beta": draw(st.sampled_from([None, "scalar", "vector"])),
        "loss": draw(st.sampled_from(LOSSES)),
        "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
        "clip": draw(st.sampled_from([-math.inf, -1.0, 0.5])),
        "op": draw(st.sampled_from(["tb", "vargrad"])),
    }


def build(problem):
    """Inputs for a problem; 'sliced' takes every other column of a wider tensor and a reversed
    row order (a view with non-unit strides in both dimensions)."""
    generator = torch.Generator().manual_seed(problem["seed"])
    batch, steps, dtype = problem["batch"], problem["steps"], problem["dtype"]
    small = dtype in (torch.float16, torch.bfloat16)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    valid = torch.arange(steps)[None, :] < lengths[:, None]

    def per_step():
        values = torch.randn(batch, steps, generator=generator, dtype=torch.float64)
        values = (values * (0.2 if small else 2.0)).masked_fill(~valid, math.nan).to(dtype)
        if problem["layout"] == "time_major":
            return values.T.contiguous().T
        if problem["layout"] == "sliced":
            wide = torch.full((batch, 3 * steps), math.nan, dtype=dtype)
            wide[:, ::3] = values
            return wide[:, ::3]
        if problem["layout"] == "packed":
            return values[valid]
        return values

    per_row = torch.float64 if dtype == torch.float64 else torch.float32
    inputs = {"log_pf": per_step(), "log_pb": per_step() if problem["with_pb"] else None,
              "log_reward": torch.randn(batch, generator=generator).to(per_row)}
    inputs["log_z"] = (torch.randn((), generator=generator) if problem["log_z"] == "scalar"
                       else torch.randn(batch, generator=generator)).to(per_row)
    if problem["beta"] == "scalar":
        inputs["beta"] = torch.tensor(1.3, dtype=per_row)
    elif problem["beta"] == "vector":
        inputs["beta"] = (torch.rand(batch, generator=generator) + 0.5).to(per_row)
    if problem["layout"] == "packed":
        cu = torch.zeros(batch + 1, dtype=torch.int64)
        cu[1:] = lengths.cumsum(0)
        return inputs, {"cu_seqlens": cu}
    return inputs, {"lengths": lengths}


@pytest.mark.parametrize("backend", available_backends("cpu"))
@PROFILE
@given(problem=balance_problems())
def test_random_problems_match_reference(backend, problem):
    inputs, layout_args = build(problem)
    op = gfn_fast.trajectory_balance if problem["op"] == "tb" else \
        gfn_fast.log_partition_variance
    check_against_reference(op, inputs, layout_args, backend, problem["dtype"],
                            loss=problem["loss"], reduction=problem["reduction"],
                            log_reward_clip_min=problem["clip"])
