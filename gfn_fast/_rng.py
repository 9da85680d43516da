"""(generator | seed, offset) -> the (seed, offset) pair of gfn_fast's Philox streams.

Every random op of gfn_fast draws from Philox4x32-10 keyed by a 64-bit seed, with a 64-bit
offset in the counter (contract: gfn_fast/reference/_philox.py). Callers either pass
``seed=`` (and optionally ``offset=``, default 0) for an exactly reproducible call, or a
``torch.Generator`` (default: the device's default generator), which is advanced so that
successive calls give fresh draws and re-seeding the generator reproduces them:

* CPU generator (Mersenne Twister, no offset): the seed is one 63-bit integer drawn from the
  generator (one ``random_`` call on a CPU scalar, which advances it as any torch CPU sampling
  op does), and the offset is 0. No device is involved.
* CUDA generator (Philox): seed = ``generator.initial_seed()``, offset = its current Philox
  offset, and the offset is then bumped by ``4 * increment`` (torch's own kernels advance it in
  multiples of 4). Both are host-side fields: no device synchronisation. The offset is read when
  the op is called, so a CUDA graph captured around the op replays the same draws; give graph
  replays distinct (seed, offset) values explicitly if they need fresh randomness.
"""

import threading

import torch

from gfn_fast import _checks

_OFFSET_STEP = 4
# A GPU generator's offset is read, then advanced, in two calls: without a lock, two threads
# sharing the generator could read the same offset and draw the same numbers. (torch's own
# random ops advance it under the generator's own mutex, which Python cannot take: a torch draw
# in another thread can still land between the two calls.)
_OFFSET_LOCK = threading.Lock()


def _default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    return torch.default_generator


def _as_int(op: str, arg: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _checks.fail(op, arg, f"must be a Python int, got {type(value).__name__}", TypeError)
    return value


def check_source(op: str, generator, seed, offset) -> None:
    """One source of randomness: a seed (with an offset) or a generator, never both, and no
    offset without a seed."""
    if seed is not None and generator is not None:
        _checks.fail(op, "generator", "cannot be combined with `seed`: pass one of them")
    if seed is None and offset is not None:
        _checks.fail(op, "offset", "needs `seed` (a generator supplies its own offset)")


def seed_offset(op: str, device: torch.device, generator: torch.Generator | None = None,
                seed: int | None = None, offset: int | None = None,
                increment: int = 1) -> tuple[int, int]:
    """The (seed, offset) of one call, each reduced to [0, 2^64); advances `generator` (or the
    default generator of `device`) when no explicit seed is given. `increment` is how many
    offset values the call consumes (the sampler uses 1)."""
    check_source(op, generator, seed, offset)
    if seed is not None:
        seed = _as_int(op, "seed", seed)
        offset = 0 if offset is None else _as_int(op, "offset", offset)
        if offset < 0:
            _checks.fail(op, "offset", f"must be >= 0, got {offset}")
        return seed % (1 << 64), offset % (1 << 64)
    if generator is None:
        generator = _default_generator(device)
    elif not isinstance(generator, torch.Generator):
        _checks.fail(op, "generator", f"must be a torch.Generator, got "
                     f"{type(generator).__name__}", TypeError)
    if generator.device.type != device.type:
        _checks.fail(op, "generator", f"must be a {device.type} generator for {device} "
                     f"tensors, got a {generator.device.type} one")
    if generator.device.type == "cpu":
        drawn = torch.empty((), dtype=torch.int64, device="cpu").random_(generator=generator)
        return int(drawn) % (1 << 64), 0
    with _OFFSET_LOCK:
        start = generator.get_offset()
        generator.set_offset(start + _OFFSET_STEP * increment)
    return generator.initial_seed() % (1 << 64), start % (1 << 64)


# ---- torch.distributed: one seed, a distinct stream per rank ----
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit integers that scatters nearby inputs."""
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    value = (value ^ (value >> 27)) * 0x94D049BB133111EB & _MASK64
    return value ^ (value >> 31)


def rank_seed(seed: int, rank: int | None = None, process_group=None) -> int:
    """The sampling seed of one rank, derived from a seed shared by every rank.

    ``sample_actions(..., seed=gfn_fast.rank_seed(seed), offset=step)`` on every rank of a
    distributed job gives each rank its own stream: the result is
    splitmix64(seed + (rank + 1) * 0x9E3779B97F4A7C15 mod 2^64), and since the golden-ratio
    constant is odd and splitmix64 is a bijection, distinct ranks always get distinct Philox
    keys (never merely with high probability), while the job stays reproducible from one seed.
    Offsets keep their meaning within a rank (e.g. the training step).

    Args:
        seed: the shared seed (any Python int; reduced mod 2^64).
        rank: this process's rank; default: ``dist.get_rank(process_group)`` when
            torch.distributed is initialized, else 0.
        process_group: the group whose rank is used when ``rank`` is None.
    """
    op = "rank_seed"
    seed = _as_int(op, "seed", seed)
    if rank is None:
        import torch.distributed as dist

        initialized = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank(process_group) if initialized else 0
    rank = _as_int(op, "rank", rank)
    if rank < 0:
        _checks.fail(op, "rank", f"must be >= 0, got {rank}")
    return _splitmix64((seed + (rank + 1) * _GOLDEN_GAMMA) & _MASK64)
