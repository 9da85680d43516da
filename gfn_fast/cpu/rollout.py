"""Numba kernel of one compacting HyperGrid rollout step: sample, step, record, compact, encode.

The generic compacting loop of gfn_fast.rollout spends each step on about fifteen small torch
ops around the policy (one-hot encoding, mask, sampler call, environment step, three scatters
into the trajectory buffers, the live-row compaction); on a CPU those cost more than the
sampling itself. For gfn_fast.envs.HyperGrid this kernel does all of it in one call per step.

Bit-for-bit equal to the generic loop on the Numba sampler: row r of the live rows (compacted,
in ascending trajectory order) draws through cpu.sampling.sample_chunk with the same key and row
index as sample_actions would give it, the mask is HyperGrid.forward_mask's (increments below
the top, exit always), the next state is HyperGrid.step's, and the survivors keep their order.
"""

import numba
import numpy as np
import torch

from gfn_fast.cpu._common import OUTPUTS, as_numpy, per_row, row_or, serial_if
from gfn_fast.cpu.sampling import (
    _U64,
    _clip,
    chunk_words,
    n_chunks,
    sample_chunk,
    serial_sampling,
)


@numba.njit(parallel=True, cache=True)
def _hypergrid_step(logits, scale, inv_t, lo, hi, epsilon, k0, k1, off_lo, off_hi, height, t,
                    current, live, states, actions, log_pf, lengths, mask, has_mask, packed,
                    taken, next_current, next_live, picked, features):
    """Samples every live row r (trajectory live[r], state current[r]) and writes its action and
    log-probability at step t and its next state at t + 1 (the exit leaves the point unchanged;
    rows finished before t are copied from step t, and get the exit action and a log-probability
    of 0 at step t), the length t + 1 of each row that exits (lengths[row] keeps its initial T
    for a row that never does), and row r's action in taken[r]. Then packs the rows that did not
    exit into next_current / next_live (picked[i] = their position among this step's rows),
    writes their one-hot features, and returns how many there are. `has_mask` and `packed` are
    the sampler's mask flags, always (True, False) here (a byte mask), passed in so that they
    are run-time values: as literals they made a build of sample_chunk of their own, apart
    from the sampler's."""
    rows, ndim = current.shape
    exit_action = ndim
    key0, key1, o0, o1 = _U64(k0), _U64(k1), _U64(off_lo), _U64(off_hi)
    # Rows that finished earlier keep their point: step t + 1 starts as a copy of step t (one
    # contiguous copy; filling each exiting row's later steps one by one instead touched a cache
    # line per step, ~T scattered writes a row), and step t's action and log-probability start
    # as the exit and 0 (here rather than a fill of the whole [T, N] buffers before the loop:
    # these rows are then written once, just before the live rows' writes land in them). Loops,
    # not `states[t + 1] = states[t]`: Numba's array-to-array setitem brings its broadcasting
    # checks and their string formatting, 2.6 s of this kernel's 6 s first-run compile.
    source, target = states[t], states[t + 1]
    for i in range(source.shape[0]):
        for d in range(ndim):
            target[i, d] = source[i, d]
    actions_t, log_pf_t = actions[t], log_pf[t]
    for i in range(actions_t.shape[0]):
        actions_t[i] = exit_action
        log_pf_t[i] = 0.0
    width = logits.shape[1]
    for chunk in numba.prange(n_chunks(rows, width)):
        _step_chunk(np.int64(chunk), logits, scale, inv_t, lo, hi, epsilon, key0, key1, o0, o1,
                    height, t, current, live, states, actions, log_pf, lengths, mask, has_mask,
                    packed, taken)
    # the survivors' next points from their current ones and actions, read in order (not back
    # from states[t + 1], scattered by trajectory: ~2.5% of the step on one thread)
    count = 0
    for r in range(rows):
        moved = taken[r]
        if moved != exit_action:
            next_live[count] = live[r]
            picked[count] = r
            for d in range(ndim):
                next_current[count, d] = current[r, d] + (1 if d == moved else 0)
            count += 1
    for i in numba.prange(count):
        _one_hot(features[i], next_current[i], height)
    return count


@numba.njit(cache=True)
def _step_chunk(chunk, logits, scale, inv_t, lo, hi, epsilon, key0, key1, o0, o1, height, t,
                current, live, states, actions, log_pf, lengths, mask, has_mask, packed, taken):
    """_hypergrid_step's draws for the rows of chunk `chunk`: their masks, actions and
    log-probabilities, next states and lengths. A function of its own, so that the kernel and
    its serial twin share one build of it: the twin's first-run compile went from 1.9 to 0.9 s.
    `chunk` arrives as an int64 (a prange index is unsigned, which would make a second build)."""
    rows, ndim = current.shape
    exit_action = ndim
    top = height - 1
    width = logits.shape[1]
    first, end, words, gumbels = chunk_words(chunk, rows, width, key0, key1, o0, o1)
    for r in range(first, end):
        mask_row = mask[r]
        for d in range(ndim):
            mask_row[d] = 1 if current[r, d] < top else 0
        mask_row[exit_action] = 1
    picks, values = sample_chunk(logits, mask, has_mask, packed, scale, inv_t, lo, hi, epsilon,
                                 first, end, key0, key1, o0, o1, words, gumbels)
    for r in range(first, end):
        action = picks[0, r - first]
        lp = values[0, r - first]
        row = live[r]
        actions[t, row] = action
        log_pf[t, row] = lp
        if action == exit_action:
            lengths[row] = t + 1
        for d in range(ndim):
            states[t + 1, row, d] = current[r, d] + (1 if d == action else 0)
        taken[r] = action


@numba.njit(inline="always", cache=True)
def _one_hot(feature, point, height):
    """feature = HyperGrid.encode of one point: the one-hot of each coordinate, concatenated."""
    for j in range(feature.shape[0]):
        feature[j] = 0.0
    for d in range(point.shape[0]):
        feature[d * height + point[d]] = 1.0


@numba.njit(parallel=True, cache=True)
def _start(first_states, current, live, lengths, features, height, steps):
    """The state before the first step: every trajectory at the origin (HyperGrid.reset), live
    in order, of length `steps` until it exits, and the origin's one-hot as the first policy
    input. One pass instead of seven torch calls. It is mostly writes (~0.85 MB at N=4096, D=4,
    H=8, to cold caches in a rollout), shared by the threads: on the 2-core benchmark VM, a
    rollout's set-up before its first policy call took ~190 us, against ~230 with one thread."""
    for i in numba.prange(current.shape[0]):
        for d in range(current.shape[1]):
            first_states[i, d] = 0
            current[i, d] = 0
        live[i] = i
        lengths[i] = steps
        _one_hot(features[i], current[i], height)


@numba.njit(cache=True)
def _finish(states, actions, log_pf, t):
    """After step t, the last the loop ran: the later steps (none when t = T - 1) repeat the
    final points and take the exit action with a log-probability of 0."""
    exit_action = states.shape[2]
    for s in range(t + 2, states.shape[0]):
        for i in range(states.shape[1]):
            for d in range(states.shape[2]):
                states[s, i, d] = states[t + 1, i, d]
    for s in range(t + 1, actions.shape[0]):
        for i in range(actions.shape[1]):
            actions[s, i] = exit_action
            log_pf[s, i] = 0.0


# The trajectory buffers are outputs the caller receives; from this size up they come from the
# output pool (cpu/_common.py): at N=4096 on the benchmark VM, fresh buffers cost ~1300 page
# faults per rollout, as much time as the sampling.
_POOL_FROM_BYTES = 256 << 10
# _start runs on the calling thread below this many trajectories (see cpu.sampling's
# _PARALLEL_MIN_BLOCKS: waking the pool costs more than a small pass)
_PARALLEL_START_FROM = 1024


def trajectory_buffer(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised buffer of a rollout (states, actions, log_pf, policy features)."""
    return OUTPUTS.empty(shape, dtype, min_bytes=_POOL_FROM_BYTES)


class HyperGridWork:
    """One rollout of n trajectories of a HyperGrid(ndim, height) of `steps` = max_steps: its
    time-major outputs (states [T + 1, N, D], actions and log_pf [T, N], lengths [N], as
    rollout.Trajectories holds them), and the fused step's scratch: ping-pong live states and
    indices, the mask rows, the actions taken, the survivors' positions and the policy's input
    features (all [N, ...]), and the NumPy views the kernel takes, made once per rollout: at a
    few hundred rows a step, remaking them (a dozen .numpy() calls) cost as much as the kernel;
    the constant per-row views and the clip bounds are step_constants', made once per logits
    dtype. Made with every trajectory at the origin and its encoding as the first policy input;
    each step fills its own [t] slices, and finish() the steps after the last."""

    def __init__(self, n: int, ndim: int, height: int, steps: int):
        self.n = n
        self.height = height
        self.states = trajectory_buffer((steps + 1, n, ndim), torch.int64)
        self.actions = trajectory_buffer((steps, n), torch.int64)
        self.log_pf = trajectory_buffer((steps, n), torch.float32)
        self.current = [torch.empty(n, ndim, dtype=torch.int64, device="cpu") for _ in range(2)]
        self.live = [torch.empty(n, dtype=torch.int64, device="cpu") for _ in range(2)]
        self.mask = np.empty((n, ndim + 1), dtype=np.uint8)
        self.taken = np.empty(n, dtype=np.int64)
        self.picked = torch.empty(n, dtype=torch.int64, device="cpu")
        # transitions up to and including the exit, written by the step where a row exits (the
        # generic loop's rollout._lengths, without a pass over the [T, N] actions after it)
        self.lengths = torch.empty(n, dtype=torch.int64, device="cpu")
        self.features = trajectory_buffer((n, ndim * height), torch.float32)
        self.side = 0
        self._held = None
        self._current_np = [tensor.numpy() for tensor in self.current]
        self._live_np = [tensor.numpy() for tensor in self.live]
        self._picked_np = self.picked.numpy()
        self._features_np = self.features.numpy()
        self._buffers_np = (self.states.numpy(), self.actions.numpy(), self.log_pf.numpy(),
                            self.lengths.numpy())
        serial_if(_start, n < _PARALLEL_START_FROM)(
            self._buffers_np[0][0], self._current_np[0], self._live_np[0], self._buffers_np[3],
            self._features_np, height, steps)

    def finish(self, t: int) -> None:
        """Fills the steps after t, the last one run."""
        _finish(*self._buffers_np[:3], t)

    def policy_input(self, rows: int) -> torch.Tensor:
        """features[:rows], the next policy call's input (a view of a buffer the following step
        rewrites)."""
        self._held = OUTPUTS.use_count(self.features)
        return self.features[:rows]

    def after_policy(self) -> None:
        """If the policy kept a reference to its input (or returned a view of it), the next
        step's features go into a fresh buffer, so that what it holds never changes. Without
        PyTorch's use count that cannot be known, and every step gets a fresh one."""
        now = OUTPUTS.use_count(self.features)
        if now is None or now > self._held:
            self.features = torch.empty_like(self.features)
            self._features_np = self.features.numpy()


def step_constants(work: HyperGridWork, logits_dtype: torch.dtype, inv_temperature, clip,
                   epsilon) -> tuple:
    """What hypergrid_step takes for the call's constants, made once per logits dtype: the
    compute dtype, [N] ones for the scale of a policy returning none, the [N] views of
    1 / temperature and epsilon (None, or 0-dim tensors), and the clip bounds as NumPy scalars.
    Any prefix of an [N] array serves fewer rows. The ones are a contiguous array, not a
    stride-0 view: the array type of a per-row scale, so that the sampler's build of
    sample_chunk for a scale serves the rollout too (a view made a build of its own)."""
    dtype = torch.float64 if logits_dtype == torch.float64 else torch.float32
    lo, hi = _clip(clip, dtype)
    ones = torch.ones(work.n, dtype=dtype, device="cpu").numpy()
    return (dtype, ones, row_or(inv_temperature, work.n, dtype, 1.0), lo, hi,
            row_or(epsilon, work.n, dtype, 0.0))


def hypergrid_step(work: HyperGridWork, rows: int, t: int, logits, scale, constants,
                   seed_words) -> int:
    """One fused step over the first `rows` live rows into the trajectory buffers `work` was
    made with; returns the survivors' count. `constants` is step_constants' tuple for these
    logits; `scale` (None, or a 0-dim or [rows] tensor of the compute dtype) may change at every
    step. After it, work.features[:count] and work.picked[:count] describe the next step's
    rows."""
    dtype, ones, inv_t, lo, hi, epsilon = constants
    side = work.side
    states, actions, log_pf, lengths = work._buffers_np
    count = serial_if(_hypergrid_step, serial_sampling(rows, logits.shape[1]))(
        as_numpy(logits, dtype), ones if scale is None else per_row(scale, rows, dtype), inv_t,
        lo, hi, epsilon, *seed_words, work.height, t, work._current_np[side][:rows],
        work._live_np[side][:rows], states, actions, log_pf, lengths, work.mask, True, False,
        work.taken,
        work._current_np[1 - side], work._live_np[1 - side], work._picked_np, work._features_np)
    work.side = 1 - side
    return count
