"""Element offsets past 2^31: every kernel must compute addresses in 64 bits.

The CPU tests build views whose *offsets* pass 2^31 without the memory: a time-major or
transposed view of a huge `torch.empty` storage keeps only a few rows, so the kernel reads
addresses like column * stride = 32767 * 70000 > 2^31 while only the touched pages are ever
committed (Linux allocates virtual memory lazily). A kernel that multiplies a 32-bit column index
by the stride wraps around and reads far outside the tensor (a crash, or garbage). The GPU test
runs the full-size case: 70000 x 32768 bfloat16 logits (2.3e9 elements, 4.6 GB).
"""

import pytest
import torch
from conftest import HAS_CUDA, available_backends

import gfn_fast

ROWS_STORAGE, WIDTH = 70_000, 32_768  # ROWS_STORAGE * WIDTH > 2^31
CPU_BACKENDS = available_backends("cpu")


def _huge_empty(*shape, dtype):
    """A lazily committed tensor (only the pages written are backed by memory)."""
    try:
        return torch.empty(*shape, dtype=dtype)
    except RuntimeError as err:  # an environment without overcommit cannot build the view
        pytest.skip(f"cannot reserve {shape} {dtype} of virtual memory: {err}")


def _far_rows(values: torch.Tensor) -> torch.Tensor:
    """A [rows, WIDTH] view with column stride ROWS_STORAGE (the last rows of a transposed
    [WIDTH, ROWS_STORAGE] storage) holding `values`."""
    view = _huge_empty(WIDTH, ROWS_STORAGE, dtype=values.dtype).T[-values.shape[0]:]
    view.copy_(values)
    assert view.stride() == (1, ROWS_STORAGE)
    return view


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sampling_offsets_past_2_31(backend):
    rows = 3
    logits = (torch.randn(rows, WIDTH) * 3).to(torch.float16)
    mask = torch.rand(rows, WIDTH) < 0.5
    mask[:, -1] = True  # the last column is the farthest address
    far_logits, far_mask = _far_rows(logits), _far_rows(mask)
    actions = torch.tensor([WIDTH - 1, 7, WIDTH - 1])
    mask[1, 7] = True
    far_mask[1, 7] = True
    for with_mask in (False, True):
        m, fm = (mask, far_mask) if with_mask else (None, None)
        drawn = gfn_fast.sample_actions(far_logits, fm, seed=5, return_entropy=True,
                                        backend=backend)
        expected = gfn_fast.sample_actions(logits, m, seed=5, return_entropy=True,
                                           backend="reference")
        assert torch.equal(drawn[0], expected[0])
        torch.testing.assert_close(drawn[1], expected[1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(drawn[2], expected[2], rtol=1e-4, atol=1e-4)
        leaf = far_logits.requires_grad_(True)
        got = gfn_fast.action_log_prob(leaf, actions, fm, scale=1.3, backend=backend)
        (grad,) = torch.autograd.grad(got.sum(), leaf)
        far_logits.requires_grad_(False)
        near = logits.clone().requires_grad_(True)
        want = gfn_fast.action_log_prob(near, actions, m, scale=1.3, backend="reference")
        (want_grad,) = torch.autograd.grad(want.sum(), near)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad.float(), want_grad.float(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_balance_offsets_past_2_31(backend):
    batch = 2
    log_pf = torch.randn(batch, WIDTH, dtype=torch.float64).to(torch.float16) * 0.01
    far = _far_rows(log_pf)  # time-major: t * stride_t reaches 32767 * 70000
    lengths = torch.tensor([WIDTH, WIDTH - 5])
    reward = torch.randn(batch)
    leaf = far.requires_grad_(True)
    got = gfn_fast.trajectory_balance(leaf, None, reward, 0.3, lengths=lengths, backend=backend,
                                      reduction="none")
    (grad,) = torch.autograd.grad(got.sum(), leaf)
    near = log_pf.clone().requires_grad_(True)
    want = gfn_fast.trajectory_balance(near, None, reward, 0.3, lengths=lengths,
                                       backend="reference", reduction="none")
    (want_grad,) = torch.autograd.grad(want.sum(), near)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad.float(), want_grad.float(), rtol=2e-3, atol=2e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_full_size_bfloat16_logits_on_gpu(backend):
    """70000 x 32768 bfloat16 logits (> 2^31 elements): sampling, log-prob and its gradient,
    checked on the last rows (whose offsets pass 2^31) against the reference."""
    if backend not in available_backends("cuda"):
        pytest.skip(f"the {backend} backend is not available")
    free, _ = torch.cuda.mem_get_info()
    if free < 16 * 2**30:
        pytest.skip("needs about 16 GiB of free GPU memory")
    logits = torch.randn(ROWS_STORAGE, WIDTH, device="cuda", dtype=torch.bfloat16)
    assert logits.numel() > 2**31
    tail = slice(ROWS_STORAGE - 4, ROWS_STORAGE)
    actions, log_pi = gfn_fast.sample_actions(logits, seed=3, backend=backend)
    # the reference would number these rows from 0 (other draws): check the log-probs instead
    want = gfn_fast.action_log_prob(logits[tail].cpu(), actions[tail].cpu(), backend="reference")
    torch.testing.assert_close(log_pi[tail].cpu(), want, rtol=1e-4, atol=1e-4)
    assert ((actions >= 0) & (actions < WIDTH)).all()
    leaf = logits.requires_grad_(True)
    got = gfn_fast.action_log_prob(leaf, actions, backend=backend)
    (grad,) = torch.autograd.grad(got[tail].sum(), leaf)
    near = logits[tail].detach().cpu().requires_grad_(True)
    expected = gfn_fast.action_log_prob(near, actions[tail].cpu(), backend="reference")
    (want_grad,) = torch.autograd.grad(expected.sum(), near)
    torch.testing.assert_close(got[tail].cpu(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad[tail].float().cpu(), want_grad.float(), rtol=1e-2,
                               atol=1e-2)
    assert bool((grad[:-4] == 0).all())
