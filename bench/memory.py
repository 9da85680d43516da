"""Peak CPU memory of one call from torch's allocation-level memory timeline.

gfn_fast.benchmark.peak_memory replays the profiler's per-op *net* self usage at each op's start
time; inside an op that allocates and frees (a custom op's backward with a scratch buffer) the
frees are netted against the allocations before they happen, so the peak comes out too low. The
memory profiler's timeline has one event per allocation and per free, in order.
"""

from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import Action, MemoryProfile

from gfn_fast.benchmark import _quiet_stderr


def peak_bytes(fn) -> int:
    """Peak bytes allocated by torch during fn(), above what was live before it."""
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                  record_shapes=True, with_stack=True) as prof:
        fn()
    timeline = MemoryProfile(prof.profiler.kineto_results).timeline
    current = peak = 0
    for _, action, _, size in timeline:
        if action == Action.CREATE:
            current += size
        elif action == Action.DESTROY:
            current -= size
        peak = max(peak, current)
    return peak
