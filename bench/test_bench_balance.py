"""Trajectory balance and VarGrad forward+backward: every implementation of
gfn_fast.benchmark's balance cases."""

import pytest
import torch
from conftest import DEVICE

import gfn_fast
from gfn_fast.benchmark import balance_cases

CASES = balance_cases(DEVICE, quick=False)
PARAMS = [pytest.param(case, impl, id=f"{case.label}-{impl}")
          for case in CASES for impl in case.impls]


@pytest.mark.parametrize("case,impl", PARAMS)
def test_balance(benchmark, case, impl):
    state = case.setup(DEVICE)
    fn = case.impls[impl]

    def call():
        out = fn(state)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.extra_info.update(case.params, bytes_moved=case.bytes_moved)
    with gfn_fast.validation(False):
        benchmark(call)
