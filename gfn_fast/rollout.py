"""Large-batch trajectory sampling with preallocated buffers and no host sync per step.

Two loops fill the same preallocated, time-major buffers ([T, N, ...], the layout gfn_fast's
losses read in place through `.T`):
- fixed shape (default on GPU): every step runs all N rows for the environment's longest
  trajectory, so the loop never asks the device whether everything has finished (no host sync,
  capturable in a CUDA graph); finished rows keep taking the always-allowed exit action, which
  changes nothing and is excluded by `lengths`;
- compacting (default on CPU, where a host "sync" costs nothing): each step runs the policy on
  the live rows only and stops when none is left. HyperGrid trajectories are much shorter than
  the longest one, so this does several times less policy work.
The two loops draw different (equally distributed) samples for the same seed, since a row's
random stream is keyed by its position in each sampler call.

Fused steps: the compacting loop over a gfn_fast.envs.HyperGrid on the Numba sampler runs each
step's sampling, environment step, buffer writes, compaction and encoding in one kernel
(gfn_fast/cpu/rollout.py) around the policy call, instead of about fifteen small torch ops. It
gives bit-for-bit the trajectories of the generic compacting loop (tests/test_rollout.py).

CUDA graphs (`cuda_graph`): the sampler takes its (seed, offset) as host integers baked into
each kernel launch, so a captured graph replays exactly the draws of the (seed, offset) it was
captured with. The whole fixed-shape T-step loop is therefore captured once per (policy, env, n,
seed, offset, sampling options) and cached; a replay gives bit-for-bit the trajectories of the
uncaptured fixed-shape loop with the same seed. Fresh randomness needs a new (seed, offset), and
so a new capture: graphs pay off when the same call repeats (a fixed evaluation seed, a
benchmark), which is why the automatic mode captures on the second identical call, not the
first. The policy must be capturable: device work only (no .item(), no CPU tensors, no
data-dependent Python control flow), the same kernels on every call, and parameters updated in
place (optimizers do), since the graph reads them where they were at capture time.
"""

import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gfn_fast import _backends, _checks, _rng
from gfn_fast.envs import HyperGrid
from gfn_fast.reference import _philox
from gfn_fast.sampling import sample_actions

# The fused HyperGrid steps (module docstring); tests switch them off to compare with the
# generic loop.
_FUSE_STEPS = True


@dataclass
class Trajectories:
    """A batch of N trajectories of at most T transitions, time-major."""

    states: torch.Tensor      # [T + 1, N, D] int64: s_0 .. s_T (constant after the exit)
    actions: torch.Tensor     # [T, N] int64 (the exit action after the end)
    lengths: torch.Tensor     # [N] int64: transitions up to and including the exit
    log_pf: torch.Tensor      # [T, N] float32: log pi of each taken action at sampling time
    terminal: torch.Tensor    # [N, D] int64: the objects x
    conditioning: torch.Tensor | None  # [N, ...] per-trajectory data given to the policy


def _policy_outputs(policy: Callable, features: torch.Tensor, conditioning):
    out = policy(features, conditioning)
    return out if isinstance(out, tuple) else (out, None)


def _buffers(env, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(states [T+1, N, D] with s_0 set, actions [T, N] all exit, log_pf [T, N] zeros) on the
    env's device."""
    steps = env.max_steps
    states = torch.empty((steps + 1, n, env.ndim), dtype=torch.int64, device=env.device)
    states[0] = env.reset(n)
    actions = torch.full((steps, n), env.exit_action, dtype=torch.int64, device=env.device)
    log_pf = torch.zeros((steps, n), dtype=torch.float32, device=env.device)
    return states, actions, log_pf


def _lengths(actions: torch.Tensor, exit_action: int) -> torch.Tensor:
    """Transitions up to and including the exit: the moves before it, plus one. Both loops leave
    the exit action in every step after a row's end, so this needs no per-step bookkeeping."""
    return ((actions != exit_action).sum(dim=0) + 1).clamp_(max=actions.shape[0])


def _compacting_loop(policy, env, states, actions, log_pf, conditioning, sampling, rng):
    live = None  # indices of unfinished rows; None while every row is live
    current, row_condition = states[0], conditioning
    for t in range(env.max_steps):
        logits, scale = _policy_outputs(policy, env.encode(current), row_condition)
        action, log_pi = sample_actions(logits, env.forward_mask(current), scale=scale,
                                        **sampling, **rng(t))
        following = env.step(current, action)
        log_pi = log_pi.to(log_pf.dtype)
        if live is None:
            actions[t] = action
            log_pf[t] = log_pi
            states[t + 1] = following
        else:
            actions[t].index_copy_(0, live, action)
            log_pf[t].index_copy_(0, live, log_pi)
            states[t + 1] = states[t]
            states[t + 1].index_copy_(0, live, following)
        keep = (action != env.exit_action).nonzero().squeeze(1)
        if keep.numel() == 0:
            states[t + 2:] = states[t + 1]
            break
        if keep.numel() < action.shape[0]:
            live = keep if live is None else live.index_select(0, keep)
            following = following.index_select(0, keep)
            if row_condition is not None:
                row_condition = row_condition.index_select(0, keep)
        current = following


def _fused_steps(env, compact: bool, backend: str | None):
    """The backend module with a fused step for this rollout, or None (generic loop)."""
    if not (_FUSE_STEPS and compact and type(env) is HyperGrid):
        return None
    name = _backends.resolve("sample_actions", backend, env.device)
    return _backends.module(name, "rollout") if name == "numba" else None


def _fused_hypergrid_loop(impl, policy, env, n, conditioning, sampling, rng):
    """The compacting loop with one fused kernel call per step (same trajectories); returns
    (states, actions, log_pf, lengths)."""
    op = "sample_actions"
    work = impl.HyperGridWork(n, env.ndim, env.height, env.max_steps)
    rows, row_condition = n, conditioning
    # temperature, clip and epsilon are per-call constants (a per-row one is refused when
    # compacting): checked once, with the first step's logits, and again only if the policy's
    # dtype changes; the scale the policy returns is checked at every step
    constants = fixed = None
    # an explicit seed gives step t the offset `offset + t`: its words are made once
    explicit = rng(0)
    if "seed" in explicit:
        seed, first_offset = _rng.seed_offset(op, env.device, **explicit)
        seed_words = _philox.split_seed(seed)
    n_actions = env.n_actions
    for t in range(env.max_steps):
        logits, scale = _policy_outputs(policy, work.policy_input(rows), row_condition)
        work.after_policy()
        if not isinstance(logits, torch.Tensor) or logits.shape != (rows, n_actions) or \
                logits.device != env.device:
            got = (f"{list(logits.shape)} on {logits.device}"
                   if isinstance(logits, torch.Tensor) else type(logits).__name__)
            raise ValueError(f"gfn_fast.rollout.sample_trajectories: the policy must return "
                             f"logits [M, {n_actions}] on {env.device} for M = {rows} rows, "
                             f"got {got}")
        if constants is None or logits.dtype != constants.logits.dtype:
            constants = _checks.sampling_inputs(op, logits, None, None, sampling["temperature"],
                                                sampling["clip"], sampling["epsilon"])
            fixed = impl.step_constants(work, logits.dtype, constants.inv_temperature,
                                        constants.clip, constants.epsilon)
        if scale is not None:
            scale = _checks.sampling_row_value(op, "scale", scale, rows, logits,
                                               constants.dtype)
        if "seed" in explicit:
            words = (*seed_words, *_philox.split_offset(first_offset + t))
        else:
            seed, offset = _rng.seed_offset(op, env.device, **rng(t))
            words = (*_philox.split_seed(seed), *_philox.split_offset(offset))
        survivors = impl.hypergrid_step(work, rows, t, logits, scale, fixed, words)
        if survivors == 0:
            break
        if row_condition is not None and survivors < rows:
            row_condition = row_condition.index_select(0, work.picked[:survivors])
        rows = survivors
    work.finish(t)
    return work.states, work.actions, work.log_pf, work.lengths


def _fixed_shape_loop(policy, env, states, actions, log_pf, conditioning, sampling, rng):
    done = torch.zeros(states.shape[1], dtype=torch.bool, device=states.device)
    for t in range(env.max_steps):
        current = states[t]
        logits, scale = _policy_outputs(policy, env.encode(current), conditioning)
        action, log_pi = sample_actions(logits, env.forward_mask(current), scale=scale,
                                        **sampling, **rng(t))
        action = torch.where(done, actions[t], action)
        actions[t] = action
        log_pf[t] = torch.where(done, log_pf[t], log_pi.to(torch.float32))
        states[t + 1] = env.step(current, action)
        done |= action == env.exit_action


# ---- CUDA graphs: the fixed-shape loop captured once per call signature, replayed after


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    policy: Callable            # held so that the ids in the key cannot be reused meanwhile
    env: object
    static_inputs: dict         # tensors the graph reads; new values are copied in per replay
    outputs: tuple              # (states, actions, log_pf, lengths) written by each replay


_GRAPHS: "OrderedDict[tuple, _Graph]" = OrderedDict()
_SEEN: "OrderedDict[tuple, None]" = OrderedDict()
_FAILED: set = set()
_MAX_GRAPHS, _MAX_SEEN = 4, 64


def clear_cuda_graphs() -> None:
    """Release every cached rollout graph and its memory pool."""
    _GRAPHS.clear()
    _SEEN.clear()
    _FAILED.clear()


def _tensor_key(value):
    """A hashable stand-in: tensors by shape, dtype and device (their values are copied in at
    each replay), lists (a `clip` pair) as tuples, the rest as they are."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device)
    if isinstance(value, list):
        return tuple(value)
    return value


def _graph_key(policy, env, n, seed, offset, conditioning, sampling) -> tuple:
    return (id(policy), id(env), n, seed, offset, _tensor_key(conditioning),
            tuple((name, _tensor_key(value)) for name, value in sorted(sampling.items())))


def _capture(policy, env, n, conditioning, sampling, rng) -> _Graph:
    """Warm up on a side stream (lazy initialisation, kernel compilation), then capture the
    fixed-shape loop into a graph whose inputs and outputs are static tensors."""
    static_inputs = {"conditioning": conditioning}
    static_inputs.update(sampling)
    static_inputs = {name: value.clone() if isinstance(value, torch.Tensor) else value
                     for name, value in static_inputs.items()}
    static_sampling = {name: static_inputs[name] for name in sampling}

    def fill(states, actions, log_pf):
        _fixed_shape_loop(policy, env, states, actions, log_pf, static_inputs["conditioning"],
                          static_sampling, rng)
        return states, actions, log_pf, _lengths(actions, env.exit_action)

    side = torch.cuda.Stream(device=env.device)
    side.wait_stream(torch.cuda.current_stream(env.device))
    with torch.cuda.stream(side):
        fill(*_buffers(env, n))
    torch.cuda.current_stream(env.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fill(*_buffers(env, n))
    return _Graph(graph, policy, env, static_inputs, outputs)


def _replay(entry: _Graph, conditioning, sampling) -> tuple:
    for name, value in (("conditioning", conditioning), *sampling.items()):
        if isinstance(value, torch.Tensor):
            entry.static_inputs[name].copy_(value)
    entry.graph.replay()
    # copies: the next replay overwrites the graph's buffers
    return tuple(t.clone() for t in entry.outputs)


def _graph_outputs(policy, env, n, seed, offset, conditioning, sampling, rng, explicit: bool):
    """(states, actions, log_pf, lengths) from a cached or new graph, or None when the automatic
    mode decides to run uncaptured (first sight of this call, or a policy that failed to
    capture)."""
    key = _graph_key(policy, env, n, seed, offset, conditioning, sampling)
    entry = _GRAPHS.get(key)
    if entry is not None and entry.policy is policy and entry.env is env:
        _GRAPHS.move_to_end(key)
        return _replay(entry, conditioning, sampling)
    if not explicit:
        if key in _FAILED:
            return None
        if key not in _SEEN:
            _SEEN[key] = None
            if len(_SEEN) > _MAX_SEEN:
                _SEEN.popitem(last=False)
            return None
    try:
        entry = _capture(policy, env, n, conditioning, sampling, rng)
    except Exception as err:
        if explicit:
            raise RuntimeError(
                "gfn_fast.rollout.sample_trajectories: capturing the rollout in a CUDA graph "
                "failed; the policy must be capturable (device work only: no .item(), no CPU "
                f"tensors, no data-dependent Python branches), or pass cuda_graph=False: {err}"
            ) from err
        warnings.warn(f"gfn_fast.rollout.sample_trajectories: CUDA graph capture failed, "
                      f"running uncaptured ({err})", RuntimeWarning, stacklevel=3)
        _FAILED.add(key)
        return None
    _GRAPHS[key] = entry
    if len(_GRAPHS) > _MAX_GRAPHS:
        _GRAPHS.popitem(last=False)
    return _replay(entry, conditioning, sampling)


@torch.no_grad()
def sample_trajectories(policy: Callable, env, n: int, *,
                        conditioning: torch.Tensor | None = None,
                        epsilon: float | torch.Tensor = 0.0,
                        generator: torch.Generator | None = None, seed: int | None = None,
                        offset: int = 0, temperature=None, clip=None, compact: bool | None = None,
                        cuda_graph: bool | None = None,
                        backend: str | None = None) -> Trajectories:
    """Sample n trajectories of `env` with `policy`.

    policy(features [M, F], conditioning [M, ...] or None) -> logits [M, A], or (logits, scale)
    where scale is the logit-scaling g(beta) [M] applied by the fused sampler; M = n, or the
    live rows when compacting (`conditioning`, e.g. beta or g(beta) per trajectory, is
    compacted with them). Randomness: with `seed`, step t uses (seed, offset + t), reproducible
    on every backend; otherwise `generator` (default: the device's) is advanced by each step.
    `compact`: evaluate only live rows (default: on CPU only, see the module docstring). On the
    fused CPU path the features given to the policy are a view of a buffer that the next step
    rewrites, unless the policy keeps a reference to them: then that step writes a new one.

    `cuda_graph` (CUDA, fixed-shape loop, `seed` only; see the module docstring): True captures
    the loop in a CUDA graph on first use of this (policy, env, n, seed, offset, options) and
    replays it afterwards; None (default) does the same from the second identical call on, and
    falls back to the uncaptured loop with a warning if capture fails; False never captures.
    Replays return copies, identical to the uncaptured fixed-shape loop's trajectories.
    """
    device = env.device
    # as sample_actions (a seed beside a generator, or an offset without a seed, was ignored);
    # offset 0 is the default here, not a choice
    _rng.check_source("rollout.sample_trajectories", generator, seed, offset or None)
    if compact is None:
        compact = device.type == "cpu"
    for name, value in (("epsilon", epsilon), ("temperature", temperature)):
        # the compacting loops shrink the batch as rows finish; per-row values would not follow
        if isinstance(value, torch.Tensor) and value.dim() > 0 and compact:
            raise ValueError(f"gfn_fast.rollout.sample_trajectories: a per-row `{name}` needs "
                             "compact=False (the default on CPU compacts the finished rows "
                             "away)")
    graphable = device.type == "cuda" and not compact and seed is not None
    if cuda_graph and not graphable:
        raise ValueError("gfn_fast.rollout.sample_trajectories: `cuda_graph=True` needs a CUDA "
                         f"env, compact=False and an explicit `seed` (got device {device}, "
                         f"compact={compact}, seed={seed})")
    sampling = {"epsilon": epsilon, "temperature": temperature, "clip": clip,
                "backend": backend}

    def rng(t: int) -> dict:
        if seed is not None:
            return {"seed": seed, "offset": offset + t}
        return {"generator": generator}

    if graphable and cuda_graph is not False:
        outputs = _graph_outputs(policy, env, n, seed, offset, conditioning, sampling, rng,
                                 explicit=bool(cuda_graph))
        if outputs is not None:
            states, actions, log_pf, lengths = outputs
            return Trajectories(states, actions, lengths, log_pf, states[-1], conditioning)
    fused = _fused_steps(env, compact, backend)
    if fused is not None:
        states, actions, log_pf, lengths = _fused_hypergrid_loop(fused, policy, env, n,
                                                                 conditioning, sampling, rng)
    else:
        states, actions, log_pf = _buffers(env, n)
        loop = _compacting_loop if compact else _fixed_shape_loop
        loop(policy, env, states, actions, log_pf, conditioning, sampling, rng)
        lengths = _lengths(actions, env.exit_action)
    return Trajectories(states, actions, lengths, log_pf, states[-1], conditioning)
