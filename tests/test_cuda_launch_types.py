"""The CUDA backend's Python side, run on CPU tensors with the extension replaced by a recorder.
The kernels read raw pointers with the types the launch's element-type code selects
(csrc/include/gfn_fast/launch.cuh: code -> (element type of the per-step tensors, accumulator
type of everything else)), so every floating buffer handed to a launch must have the type its
code says. A float64 log_reward beside float32 log-probs was launched with code 0: the kernels
read the float64 per-trajectory buffers as float32 and returned garbage."""

import pytest
import torch

import gfn_fast
from gfn_fast import _backends

cuda_balance = pytest.importorskip("gfn_fast.cuda.balance")  # needs the built extension
cuda_subtb = pytest.importorskip("gfn_fast.cuda.subtb")

LAUNCH_TYPES = {0: (torch.float32, torch.float32), 1: (torch.float64, torch.float64),
                2: (torch.float16, torch.float32), 3: (torch.bfloat16, torch.float32)}
STEP_KEYS = {"log_pf", "log_pb", "log_flow", "log_state_reward", "grad_pf", "grad_pb",
             "grad_flow"}


class Recorder:
    """Stands in for gfn_fast._C: checks each launch's pointers against its type code."""

    def __init__(self):
        self.dtypes = {}  # data pointer -> dtype, filled by `ptr`
        self.keep = []    # the tensors behind those pointers, alive until the test ends
        self.launches = []
        self.mismatches = []

    def ptr(self, tensor):
        if tensor is None:
            return 0
        self.dtypes[tensor.data_ptr()] = tensor.dtype
        self.keep.append(tensor)
        return tensor.data_ptr()

    def __getattr__(self, name):
        def launch(args):
            self.launches.append(name)
            step, acc = LAUNCH_TYPES[args["dtype"]]
            for key, value in args.items():
                dtype = self.dtypes.get(value) if isinstance(value, int) and value else None
                if dtype is not None and dtype.is_floating_point:
                    want = step if key in STEP_KEYS else acc
                    if dtype != want:
                        self.mismatches.append((name, key, dtype, want))
        return launch


@pytest.fixture
def recorder(monkeypatch):
    rec = Recorder()
    for module in (cuda_balance, cuda_subtb):
        monkeypatch.setattr(module, "ext", lambda: rec)
        monkeypatch.setattr(module, "ptr", rec.ptr)
        monkeypatch.setattr(module, "stream", lambda device: 0)
    real = _backends.resolve
    monkeypatch.setattr(_backends, "resolve", lambda op, backend, device:
                        "cuda" if backend == "cuda" else real(op, backend, device))
    return rec


def _losses(log_pf, log_pb, log_flow, log_reward):
    return {
        "trajectory_balance": lambda: gfn_fast.trajectory_balance(
            log_pf, log_pb, log_reward, torch.zeros((), dtype=log_reward.dtype,
                                                    requires_grad=True), backend="cuda"),
        "log_partition_variance": lambda: gfn_fast.log_partition_variance(
            log_pf, log_pb, log_reward, backend="cuda"),
        "detailed_balance": lambda: gfn_fast.detailed_balance(
            log_pf, log_pb, log_flow, log_reward, backend="cuda"),
        "subtrajectory_balance": lambda: gfn_fast.subtrajectory_balance(
            log_pf, log_pb, log_flow, log_reward, backend="cuda"),
    }


def _name(dtype):
    return str(dtype).removeprefix("torch.")


@pytest.mark.parametrize("reward_dtype", [torch.float32, torch.float64], ids=_name)
@pytest.mark.parametrize("step_dtype", [torch.float32, torch.float64, torch.float16,
                                        torch.bfloat16], ids=_name)
@pytest.mark.parametrize("loss", ["trajectory_balance", "log_partition_variance",
                                  "detailed_balance", "subtrajectory_balance"])
def test_every_buffer_has_the_type_its_launch_code_says(recorder, loss, step_dtype,
                                                        reward_dtype):
    gen = torch.Generator().manual_seed(0)
    log_pf, log_pb, log_flow = (torch.randn(3, 5, generator=gen).to(step_dtype)
                                .requires_grad_(True) for _ in range(3))
    log_reward = torch.randn(3, generator=gen, dtype=reward_dtype).requires_grad_(True)
    value = _losses(log_pf, log_pb, log_flow, log_reward)[loss]()
    grads = torch.autograd.grad(value.sum(), [log_pf, log_pb, log_reward],
                                allow_unused=True)
    assert any("forward" in name for name in recorder.launches)
    assert any("backward" in name for name in recorder.launches)
    assert recorder.mismatches == []
    # the gradients come back in their inputs' dtypes
    assert grads[0].dtype == step_dtype and grads[2].dtype == reward_dtype
