"""gfn_fast from several threads, and the process state they share (the generators' offsets,
the switches, the output pool's lock)."""

import os
import signal
import threading
import time

import torch

from gfn_fast import _rng
from gfn_fast.cpu import _common


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
