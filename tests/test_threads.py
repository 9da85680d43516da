"""gfn_fast from several threads, and the process state they share (the generators' offsets,
the switches, the output pool's lock)."""

import os
import signal
import threading
import time

import pytest
import torch

import gfn_fast
from gfn_fast import _checks, _ops, _rng
from gfn_fast.cpu import _common, output_reuse


class _StandInGpuGenerator(torch.Generator):
    """A GPU generator's interface (no GPU here): device, seed, and an offset whose read yields
    the thread, as a real read (a C call) may, between the read and the write."""

    def __init__(self):
        super().__init__()
        self.offset = 0

    @property
    def device(self):
        return torch.device("cuda")

    def initial_seed(self):
        return 1234

    def get_offset(self):
        value = self.offset
        time.sleep(0)
        return value

    def set_offset(self, value):
        self.offset = value


def test_threads_sharing_a_gpu_generator_get_distinct_offsets():
    """The offset was read and advanced in two calls without a lock: threads sharing a GPU
    generator got the same (seed, offset), i.e. the same draws (64419 distinct pairs of 80000
    in the audit's run)."""
    generator = _StandInGpuGenerator()
    per_thread, threads = 500, 4
    drawn = [[] for _ in range(threads)]

    def draw(out):
        for _ in range(per_thread):
            out.append(_rng.seed_offset("test", torch.device("cuda"), generator)[1])

    workers = [threading.Thread(target=draw, args=(out,)) for out in drawn]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    offsets = [offset for out in drawn for offset in out]
    assert len(set(offsets)) == per_thread * threads
    assert generator.offset == per_thread * threads * _rng._OFFSET_STEP


def test_a_process_forked_while_another_thread_holds_the_pool_lock_allocates():
    """A process forked while another thread was inside the output pool (a DataLoader worker
    forked beside a thread running gfn_fast ops) inherited the pool's lock held, and hung in
    its first pooled allocation."""
    pool = _common.OUTPUTS
    with pool._lock:  # as a thread inside the pool at the fork
        pid = os.fork()
        if pid == 0:  # the child: a pooled allocation (1 MiB), or killed by the alarm
            signal.alarm(30)
            try:
                out = pool.empty((1 << 18,), torch.float32)
                os._exit(0 if out.shape == (1 << 18,) else 1)
            except BaseException:
                os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def _overlapping_blocks(block, read):
    """Two threads run `with block():` so that the first to enter exits first (A enters, B
    enters, A exits, B exits); returns what `read()` gave inside each block, in the main thread
    while both blocks were open, and in the main thread afterwards."""
    entered_a, entered_b, exited_a, both_open = (threading.Event() for _ in range(4))
    seen = {}

    def thread_a():
        with block():
            seen["a"] = read()
            entered_a.set()
            entered_b.wait()
            both_open.wait()
        exited_a.set()

    def thread_b():
        entered_a.wait()
        with block():
            seen["b"] = read()
            entered_b.set()
            exited_a.wait()

    workers = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for worker in workers:
        worker.start()
    entered_b.wait()
    seen["main, blocks open"] = read()
    both_open.set()
    for worker in workers:
        worker.join()
    seen["main, after"] = read()
    return seen


def test_overlapping_switch_blocks_in_two_threads_leave_nothing_behind():
    """The `with` forms saved and restored a process-wide value: two threads' blocks that
    exited in the order they entered left validation off (invalid lengths were then accepted),
    output reuse off and the op path forced, for the whole process. Each block now sets its
    own thread's value."""
    assert _checks.value_checks_enabled()
    seen = _overlapping_blocks(lambda: gfn_fast.validation(False), _checks.value_checks_enabled)
    assert seen == {"a": False, "b": False, "main, blocks open": True, "main, after": True}
    with pytest.raises(ValueError, match="lengths"):
        gfn_fast.trajectory_balance(torch.zeros(2, 4), None, torch.zeros(2), 0.0,
                                    lengths=torch.tensor([4, 99]), backend="numba")

    reuse = _common.OUTPUTS.enabled
    seen = _overlapping_blocks(lambda: output_reuse(not reuse), _reuse_enabled)
    assert seen == {"a": not reuse, "b": not reuse, "main, blocks open": reuse,
                    "main, after": reuse}

    seen = _overlapping_blocks(_ops.force_op_path, lambda: not _ops._eager((torch.ones(1),)))
    assert seen == {"a": True, "b": True, "main, blocks open": False, "main, after": False}


def _reuse_enabled():
    here = _common.REUSE.get()
    return _common.OUTPUTS.enabled if here is None else here


def test_validation_objects_and_threads():
    """A validation(False) object used in a `with` a second time switched nothing (the switch
    happened on creation only). The plain call applies to the calling thread from then on;
    set_validation to every thread."""
    switch = gfn_fast.validation(False)  # applies at once...
    assert not _checks.value_checks_enabled()
    with switch:  # ...and a `with` on it ends it
        assert not _checks.value_checks_enabled()
    assert _checks.value_checks_enabled()
    with switch:
        assert not _checks.value_checks_enabled()
        with switch:  # nested on the same object
            assert not _checks.value_checks_enabled()
        assert not _checks.value_checks_enabled()
    assert _checks.value_checks_enabled()

    seen = []

    def elsewhere():
        seen.append(_checks.value_checks_enabled())

    def plain_call_in_a_thread():
        gfn_fast.validation(False)
        seen.append(_checks.value_checks_enabled())

    for target in (plain_call_in_a_thread, elsewhere):
        worker = threading.Thread(target=target)
        worker.start()
        worker.join()
    assert seen == [False, True] and _checks.value_checks_enabled()
    previous = gfn_fast.set_validation(False)
    try:
        assert previous is True
        worker = threading.Thread(target=elsewhere)
        worker.start()
        worker.join()
        assert seen[-1] is False and not _checks.value_checks_enabled()
        with gfn_fast.validation(True):
            assert _checks.value_checks_enabled()
    finally:
        gfn_fast.set_validation(previous)
    assert _checks.value_checks_enabled()
