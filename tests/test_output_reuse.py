"""The Numba backend's reuse of large output buffers: never visible in results, and effective."""

import pytest
import torch

import gfn_fast
from gfn_fast.cpu import output_reuse, set_output_reuse
from gfn_fast.cpu._common import OUTPUTS

pytestmark = pytest.mark.skipif(not OUTPUTS.available,
                                reason="this torch has no storage use count")

B, T = 8192, 64  # 2 MiB float32 gradients: above the pool's 1 MiB threshold


def _tb_grads(seed: int, time_major: bool = False):
    gen = torch.Generator().manual_seed(seed)
    shape = (T, B) if time_major else (B, T)
    log_pf = torch.randn(shape, generator=gen).requires_grad_()
    log_pb = torch.randn(shape, generator=gen).requires_grad_()
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    pf, pb = (log_pf.T, log_pb.T) if time_major else (log_pf, log_pb)
    loss = gfn_fast.trajectory_balance(pf, pb, torch.randn(B, generator=gen), torch.zeros(()),
                                       lengths=lengths, backend="numba")
    return torch.autograd.grad(loss, (log_pf, log_pb))


def test_held_gradients_are_never_overwritten():
    with output_reuse(True):
        first = _tb_grads(0)
        expected = [g.clone() for g in first]
        view = _tb_grads(1)[0][3:]          # only a view of the second call's grad_pf kept
        view_expected = view.clone()
        for seed in range(2, 6):            # freed calls in between may recycle buffers
            _tb_grads(seed)
        for held, want in zip(first, expected, strict=True):
            assert torch.equal(held, want)
        assert torch.equal(view, view_expected)


def test_a_held_storage_object_keeps_its_buffer():
    """PyTorch keeps one Python object per storage, so `grad.untyped_storage()` hands the caller
    the pool's own object, and holding it adds no storage use count: the pool must also see the
    Python references, or a caller holding only the storage (or a TypedStorage over it) would
    find it overwritten by the next call."""
    with output_reuse(True):
        first = _tb_grads(0)
        untyped = first[0].untyped_storage()
        with pytest.warns(UserWarning, match="TypedStorage is deprecated"):
            typed = first[1].storage()
        expected = [g.clone() for g in first]
        pointers = {g.data_ptr() for g in first}
        del first
        for seed in range(1, 4):
            assert not {g.data_ptr() for g in _tb_grads(seed)} & pointers
        for storage, want in ((untyped, expected[0]), (typed.untyped(), expected[1])):
            assert torch.equal(torch.empty(0).set_(storage, 0, want.shape), want)
        del untyped, typed, storage
        # released, the buffers go back to the pool
        assert {g.data_ptr() for g in _tb_grads(5)} & pointers


def test_a_buffer_sent_to_another_process_is_not_handed_out_again():
    """torch.multiprocessing moves a tensor it sends into shared memory; the receiver's mapping
    adds no use count this process can see, so once the sender dropped its tensor the pool
    handed the buffer out again and the next call rewrote what the receiver was reading
    (measured with a spawned receiver: max change 0.0119). share_memory_() is what sending
    does to the storage."""
    with output_reuse(True):
        first = _tb_grads(0)
        for g in first:
            g.share_memory_()
        shared = {g.data_ptr() for g in first}
        del first, g
        for seed in range(1, 4):  # the pool still holds the shared storages (none evicted)
            assert not {g.data_ptr() for g in _tb_grads(seed)} & shared


def test_freed_buffers_are_reused_and_results_unchanged():
    with output_reuse(False):
        fresh = [g.clone() for g in _tb_grads(7)]
    with output_reuse(True):
        first = _tb_grads(7)
        pointers = {g.data_ptr() for g in first}
        del first
        second = _tb_grads(7)
        assert {g.data_ptr() for g in second} == pointers
        for got, want in zip(second, fresh, strict=True):
            assert torch.equal(got, want)


def test_layout_follows_the_input_like_empty_like():
    with output_reuse(True):
        for _ in range(2):  # the second call takes its buffers from the pool
            grads = _tb_grads(3, time_major=True)
            for g in grads:
                assert g.shape == (T, B) and g.stride() == (B, 1)
            grads = _tb_grads(3)
            for g in grads:
                assert g.shape == (B, T) and g.stride() == (T, 1)


def test_turning_it_off_allocates_fresh_memory_and_releases_the_pool():
    previous = set_output_reuse(True)
    try:
        pointers = {g.data_ptr() for g in _tb_grads(0)}
        assert set_output_reuse(False) is True
        assert OUTPUTS._storages == []
        held = _tb_grads(0)
        later = _tb_grads(0)
        assert not {g.data_ptr() for g in later} & {g.data_ptr() for g in held}
        del pointers
    finally:
        set_output_reuse(previous)


def test_small_outputs_are_not_pooled():
    with output_reuse(True):
        OUTPUTS.clear()
        small = OUTPUTS.empty((1000,), torch.float32)
        assert OUTPUTS._storages == [] and small.numel() == 1000


def test_rollout_buffers_are_reused_only_once_released():
    """The fused HyperGrid rollout takes its trajectory buffers from the pool: trajectories (or
    just their terminal states, a view) that the caller holds stay intact; released ones are
    recycled, with the same results as fresh memory."""
    from gfn_fast.envs import HyperGrid
    from gfn_fast.rollout import sample_trajectories

    env = HyperGrid(4, 8)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))

    def rollout(seed):
        return sample_trajectories(lambda f, _: net(f), env, 2048, seed=seed)

    with output_reuse(True):
        held = rollout(0)
        copies = {name: getattr(held, name).clone() for name in ("states", "actions", "log_pf")}
        terminal = rollout(1).terminal      # a view keeps the second call's states alive
        terminal_copy = terminal.clone()
        for seed in range(2, 5):
            rollout(seed)
        for name, want in copies.items():
            assert torch.equal(getattr(held, name), want)
        assert torch.equal(terminal, terminal_copy)
        pointer = rollout(8).states.data_ptr()  # released at once: its storage is free again
        again = rollout(7)                      # ... and rewritten by a different rollout
        assert again.states.data_ptr() == pointer
        pooled = {storage.data_ptr() for storage in OUTPUTS._storages}
        assert {again.states.data_ptr(), again.actions.data_ptr()} <= pooled
    with output_reuse(False):
        fresh = rollout(7)
    for name in ("states", "actions", "log_pf", "lengths"):
        assert torch.equal(getattr(again, name), getattr(fresh, name))
