"""Input validation shared by every op: one error style, two tiers.

Tier 1 (always, free): types, shapes, dtypes, devices and argument values.
Tier 2 (reads tensor values, costs a host sync on GPU): lengths in range, prefix masks,
cu_seqlens monotone, finiteness on request. Tier 2 is on by default; `gfn_fast.validation(False)`
or GFN_FAST_VALIDATE=0 turns it off, and it is skipped while torch.compile traces or a CUDA graph
is being captured. Kernels clamp every length and offset they read, so bad values never cause an
out-of-bounds access even with validation off; they only give a wrong number.

Errors read ``gfn_fast.<op>: `<argument>` <what was expected>, got <what came>``.
"""

import math
import os
import re
import threading
from dataclasses import dataclass

import torch

from gfn_fast import _scoped
from gfn_fast.reference.losses import ABSOLUTE, HALF_SQUARED, HUBER, LINEX, SHIFTED_COSH, SQUARED

LOSSES = {
    "squared": SQUARED,
    "half_squared": HALF_SQUARED,
    "absolute": ABSOLUTE,
    "huber": HUBER,
    "shifted_cosh": SHIFTED_COSH,
    "linex": LINEX,
}
_DEFAULT_LOSS_PARAM = {HUBER: 1.0, LINEX: 1.0}
REDUCTIONS = {"mean": 0, "sum": 1, "none": 2}


_VALIDATION = _scoped.Switch(
    "gfn_fast.validation",
    os.environ.get("GFN_FAST_VALIDATE", "1").strip() not in ("0", "false", "False"))


class _Validation:
    """What `validation()` returns: the setting is applied on creation, in the calling thread,
    and a `with` block on the object puts the previous value back when it exits (also when the
    object is used in a `with` again, or in another thread)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        # applied now (the plain call's effect), and handed to a `with` that follows at once
        self._pending = (_VALIDATION.set_here(enabled), threading.get_ident())
        self._tokens = []

    def __enter__(self):
        pending, self._pending = self._pending, None
        if pending is not None and pending[1] == threading.get_ident():
            self._tokens.append(pending[0])
        else:
            self._tokens.append(_VALIDATION.set_here(self.enabled))
        return self

    def __exit__(self, *exc):
        _VALIDATION.reset(self._tokens.pop())
        return False


def validation(enabled: bool) -> _Validation:
    """Turn value checks (those that read tensor data and sync the GPU) on or off in the calling
    thread.

    ``gfn_fast.validation(False)`` switches them off from then on, ``with
    gfn_fast.validation(False): ...`` only inside the block; either in the calling thread (or
    asyncio task) only, so threads cannot undo each other's blocks. For every thread:
    ``gfn_fast.set_validation(False)`` or ``GFN_FAST_VALIDATE=0``.
    """
    if not isinstance(enabled, bool):
        fail("validation", "enabled", f"must be a bool, got {type(enabled).__name__}", TypeError)
    return _Validation(enabled)


def set_validation(enabled: bool) -> bool:
    """Turn value checks on or off for the whole process (threads that did not call
    `validation`); returns the previous process-wide setting."""
    if not isinstance(enabled, bool):
        fail("set_validation", "enabled", f"must be a bool, got {type(enabled).__name__}",
             TypeError)
    previous, _VALIDATION.default = _VALIDATION.default, enabled
    return previous


def value_checks_enabled() -> bool:
    # is_compiling first: torch.compile folds it to a constant while tracing, before the
    # context variable is read
    if torch.compiler.is_compiling() or not _VALIDATION.get():
        return False
    # A stream can only be capturing once CUDA is initialised; is_initialized() is a flag
    # read (~30 ns), is_available() a driver query (~0.5-1.3 us, on every checked call).
    if torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing():
        return False
    return True


_NUMPY_RANGE = (torch.float32, torch.float64, torch.int64, torch.int32, torch.int16, torch.int8,
                torch.uint8, torch.bool)
_SMALL_RANGE = 256


def value_range(tensor: torch.Tensor) -> tuple[float, float]:
    """(min, max) of a non-empty tensor as Python numbers, both NaN when it holds a NaN (one host
    sync on a GPU). These checks mostly see [B]-sized arguments, checked on every call: on a CPU
    such a tensor is read as a Python list (~2 us on a 2-core VM, against ~5 us for NumPy's min
    and max and ~15 us for the chain of small torch ops this replaces); larger ones through
    NumPy."""
    if tensor.device.type == "cpu" and tensor.dim() <= 1 and tensor.numel() <= _SMALL_RANGE:
        values = tensor.tolist() if tensor.dim() == 1 else [tensor.item()]
        if any(map(math.isnan, values)):
            return math.nan, math.nan
        return min(values), max(values)
    if tensor.device.type == "cpu" and tensor.dtype in _NUMPY_RANGE:
        try:
            values = (tensor.detach() if tensor.requires_grad else tensor).numpy()
        except RuntimeError:  # no storage to share: a functorch wrapper (an op's output under
            pass              # torch.func.jvp or grad), a tensor subclass: torch's path below
        else:
            return values.min().item(), values.max().item()
    low, high = torch.aminmax(tensor.detach())
    return tuple(torch.stack((low, high)).tolist())


def fail(op: str, arg: str, message: str, exc: type[Exception] = ValueError):
    raise exc(f"gfn_fast.{op}: `{arg}` {message}")


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def require_tensor(op: str, arg: str, value, *, floating: bool = False, integer: bool = False):
    if not isinstance(value, torch.Tensor):
        fail(op, arg, f"must be a torch.Tensor, got {type(value).__name__}", TypeError)
    if floating and not value.is_floating_point():
        fail(op, arg, f"must be a floating-point tensor, got {value.dtype}", TypeError)
    if integer and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        fail(op, arg, f"must be an integer tensor, got {value.dtype}", TypeError)
    return value


def not_tracked_in_place(op: str, arg: str, tensor: torch.Tensor) -> None:
    """A tensor an op writes into without a gradient must not be one autograd tracks: a leaf
    that requires grad would be changed behind autograd's back, and a non-leaf would keep the
    graph of its old values, so its gradients would be silently wrong."""
    if tensor.requires_grad and torch.is_grad_enabled():
        fail(op, arg, "is written in place and has no gradient through this op, but requires "
             "grad: call it under torch.no_grad() or pass a tensor that does not require grad")
    # torch refuses in-place updates of an inference tensor outside inference mode; the Numba
    # kernels write through NumPy views, which would not ask
    if tensor.is_inference() and not torch.is_inference_mode_enabled():
        fail(op, arg, "is an inference tensor (made under torch.inference_mode()) and is written "
             "in place outside inference mode, which torch forbids: call this under "
             "torch.inference_mode() or pass a clone")


def same_device(op: str, reference_arg: str, reference: torch.Tensor, **others) -> None:
    for arg, value in others.items():
        if value is not None and value.device != reference.device:
            fail(op, arg, f"must be on {reference.device} like `{reference_arg}`, "
                 f"got {value.device}")


def parse_loss(op: str, loss) -> tuple[int, float]:
    """'squared' | 'huber' | 'huber(0.5)' | ('huber', 0.5) -> (loss id, parameter)."""
    name, param = loss, None
    if isinstance(loss, tuple) and len(loss) == 2:
        name, param = loss
    elif isinstance(loss, str):
        match = re.fullmatch(r"\s*(\w+)\s*(?:\(\s*([^()]*?)\s*\))?\s*", loss)
        if match:
            name, param = match.group(1), match.group(2)
    if not isinstance(name, str) or name not in LOSSES:
        fail(op, "loss", f"must be one of {sorted(LOSSES)} (optionally 'huber(delta)' or "
             f"'linex(alpha)'), got {loss!r}")
    loss_id = LOSSES[name]
    if param is None:
        return loss_id, _DEFAULT_LOSS_PARAM.get(loss_id, 0.0)
    if loss_id not in _DEFAULT_LOSS_PARAM:
        fail(op, "loss", f"'{name}' takes no parameter, got {loss!r}")
    if isinstance(param, bool):
        fail(op, "loss", f"parameter must be a number, got {loss!r}")
    try:
        value = float(param)
    except (TypeError, ValueError):
        fail(op, "loss", f"parameter must be a number, got {loss!r}")
    if loss_id == HUBER and not (value > 0 and _finite(value)):
        fail(op, "loss", f"huber delta must be finite and > 0, got {value}")
    if loss_id == LINEX and (value == 0 or not _finite(value)):
        fail(op, "loss", f"linex alpha must be finite and non-zero, got {value}")
    return loss_id, value


def parse_reduction(op: str, reduction) -> int:
    if reduction not in REDUCTIONS:
        fail(op, "reduction", f"must be one of {list(REDUCTIONS)}, got {reduction!r}")
    return REDUCTIONS[reduction]


def _finite(value) -> bool:
    """math.isfinite by comparisons: under torch.compile(dynamic=True) Dynamo may trace a Python
    float (an argument's default, e.g. t_min or epsilon) as a SymFloat, which math.isnan and
    math.isfinite refuse ("torch.* op returned non-Tensor")."""
    return value == value and value != math.inf and value != -math.inf


def parse_float(op: str, arg: str, value, *, allow_neg_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(op, arg, f"must be a Python float, got {type(value).__name__}", TypeError)
    value = float(value)
    # comparisons, not math.isnan: see _finite
    if value != value or (value == math.inf) or (value == -math.inf and not allow_neg_inf):
        fail(op, arg, f"must be a finite number, got {value}")
    return value


@dataclass(frozen=True)
class BalanceLayout:
    """Where each trajectory lives. Padded: `lengths` [B] int64, `steps` = T. Packed:
    `lengths` holds cu_seqlens [B+1] int64 and `steps` is the flat length."""

    packed: bool
    batch: int
    steps: int
    lengths: torch.Tensor


def balance_layout(op: str, log_probs: dict, lengths=None, mask=None, cu_seqlens=None
                   ) -> BalanceLayout:
    """Validate the per-step log-prob tensors (all the same shape, dtype and device) and the
    trajectory layout; return the layout with 64-bit lengths."""
    names = [name for name, value in log_probs.items() if value is not None]
    first_name = names[0]
    first = require_tensor(op, first_name, log_probs[first_name], floating=True)
    for name in names[1:]:
        value = require_tensor(op, name, log_probs[name], floating=True)
        if value.shape != first.shape:
            fail(op, name, f"must have the shape of `{first_name}` {_shape(first)}, "
                 f"got {_shape(value)}")
        if value.dtype != first.dtype:
            fail(op, name, f"must have the dtype of `{first_name}` ({first.dtype}), "
                 f"got {value.dtype}", TypeError)
        same_device(op, first_name, first, **{name: value})
    given = [n for n, v in (("lengths", lengths), ("mask", mask), ("cu_seqlens", cu_seqlens))
             if v is not None]
    if len(given) > 1:
        fail(op, given[1], f"cannot be combined with `{given[0]}`: pass one of lengths, mask, "
             "cu_seqlens")
    check_values = value_checks_enabled()

    if cu_seqlens is not None:
        require_tensor(op, "cu_seqlens", cu_seqlens, integer=True)
        same_device(op, first_name, first, cu_seqlens=cu_seqlens)
        if first.dim() != 1:
            fail(op, first_name, f"must be 1-D (packed) when cu_seqlens is given, got "
                 f"{_shape(first)}")
        if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
            fail(op, "cu_seqlens", f"must be 1-D of length B+1 >= 2, got {_shape(cu_seqlens)}")
        cu = cu_seqlens.to(torch.int64).contiguous()
        if check_values:
            if int(cu[0]) != 0:
                fail(op, "cu_seqlens", f"must start at 0, got {int(cu[0])}")
            if bool((cu[1:] <= cu[:-1]).any()):
                fail(op, "cu_seqlens", "must be strictly increasing (every trajectory has at "
                     "least one transition)")
            if int(cu[-1]) != first.shape[0]:
                fail(op, "cu_seqlens", f"must end at the flat length {first.shape[0]} of "
                     f"`{first_name}`, got {int(cu[-1])}")
        return BalanceLayout(True, cu.shape[0] - 1, first.shape[0], cu)

    if first.dim() != 2:
        fail(op, first_name, f"must be 2-D [B, T] (or 1-D with cu_seqlens), got {_shape(first)}")
    batch, steps = first.shape
    if batch < 1 or steps < 1:
        fail(op, first_name, f"must have B >= 1 and T >= 1, got {_shape(first)}")
    if mask is not None:
        require_tensor(op, "mask", mask)
        if mask.dtype != torch.bool:
            fail(op, "mask", f"must be a bool tensor, got {mask.dtype}", TypeError)
        if mask.shape != first.shape:
            fail(op, "mask", f"must have the shape of `{first_name}` {_shape(first)}, "
                 f"got {_shape(mask)}")
        same_device(op, first_name, first, mask=mask)
        if check_values:
            if not bool(mask[:, 0].all()):
                fail(op, "mask", "must mark at least the first step of every trajectory")
            if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
                fail(op, "mask", "must be a prefix of each row (True entries first)")
        return BalanceLayout(False, batch, steps, mask.sum(dim=1))
    if lengths is None:
        return BalanceLayout(False, batch, steps,
                             torch.full((batch,), steps, dtype=torch.int64, device=first.device))
    require_tensor(op, "lengths", lengths, integer=True)
    same_device(op, first_name, first, lengths=lengths)
    if lengths.shape != (batch,):
        fail(op, "lengths", f"must have shape [B] = [{batch}], got {_shape(lengths)}")
    lengths = lengths.to(torch.int64).contiguous()
    if check_values:
        low, high = value_range(lengths)
        if low < 1 or high > steps:
            fail(op, "lengths", f"must lie in [1, T] = [1, {steps}], got values in "
                 f"[{low}, {high}]")
    return BalanceLayout(False, batch, steps, lengths)


def per_trajectory(op: str, arg: str, value, batch: int, like: torch.Tensor, *,
                   allow_scalar: bool = True, required: bool = True,
                   scalar_dtype: torch.dtype = torch.float32):
    """A scalar or [B] floating tensor. A Python number becomes a 0-dim tensor on like's device
    in `scalar_dtype`, the caller's compute dtype (float32 would round a float64 loss's
    log Z = 1000.1 to 1000.0999756)."""
    if value is None:
        if required:
            fail(op, arg, "is required", TypeError)
        return None
    if isinstance(value, bool):
        fail(op, arg, "must be a float or a floating tensor, got bool", TypeError)
    if isinstance(value, (int, float)) and allow_scalar:
        # torch.full launches a fill kernel; torch.tensor would copy from the host, which a
        # CUDA graph capture forbids
        return torch.full((), float(value), dtype=scalar_dtype, device=like.device)
    require_tensor(op, arg, value, floating=True)
    same_device(op, "log_pf", like, **{arg: value})
    if value.dim() == 0 and allow_scalar:
        return value
    if value.dim() == 1 and value.shape[0] == 1 and allow_scalar:
        return value.reshape(())
    if value.shape != (batch,):
        expected = "a scalar or shape [B]" if allow_scalar else "shape [B]"
        fail(op, arg, f"must be {expected} = [{batch}], got {_shape(value)}")
    return value


def check_finite(op: str, layout: BalanceLayout, log_probs: dict, per_row: dict) -> None:
    """Opt-in: raise on NaN anywhere, or +-inf in log-probs / log_z / beta, naming the input.
    Only valid (non-padding) entries of the log-probs are read. -inf log rewards are allowed."""
    for name, value in log_probs.items():
        if value is None:
            continue
        if layout.packed:
            valid = value
        else:
            steps = torch.arange(layout.steps, device=value.device)
            valid = value[steps[None, :] < layout.lengths[:, None]]
        if not bool(torch.isfinite(valid).all()):
            fail(op, name, "contains NaN or infinite entries (check_finite=True)")
    for name, value in per_row.items():
        if value is None:
            continue
        bad = torch.isnan(value) if name == "log_reward" else ~torch.isfinite(value)
        if bool(bad.any()):
            fail(op, name, "contains NaN" + ("" if name == "log_reward" else " or infinite")
                 + " entries (check_finite=True)")


# ---- action sampling (gfn_fast.sample_actions / gfn_fast.action_log_prob) ----

SAMPLING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class SamplingInputs:
    """Normalised sampling inputs: `mask` is None, bool [N, A] or packed uint8 [N, ceil(A/8)]
    (`packed`); per-row values are 0-dim or [N] tensors of the compute dtype (`scale` keeps its
    autograd graph; `inv_temperature` and `epsilon` are constants); `clip` is None or (lo, hi)."""

    logits: torch.Tensor
    mask: torch.Tensor | None
    packed: bool
    scale: torch.Tensor | None
    inv_temperature: torch.Tensor | None
    clip: tuple[float, float] | None
    epsilon: torch.Tensor | None
    dtype: torch.dtype


# The exploration coin of a row explores when its top 24 bits, as k / 2^24, fall below epsilon:
# with probability ceil(epsilon 2^24) / 2^24. epsilon is rounded up to that resolution here, so
# that log mu (the behaviour policy's log-probability) is computed with the rate the draws
# follow (at epsilon = 1e-9 that rate is 2^-24 = 6e-8, 60 times epsilon). Every value on that
# grid is exact in float32.
EXPLORE_STEPS = 2.0 ** 24


def sampling_row_value(op: str, arg: str, value, rows: int, logits: torch.Tensor,
                       dtype: torch.dtype):
    """None, a Python number or a 0-dim / [1] / [N] floating tensor -> None or a tensor."""
    if value is None:
        return None
    if isinstance(value, bool):
        fail(op, arg, "must be a float or a floating tensor, got bool", TypeError)
    if isinstance(value, (int, float)):
        if not _finite(value):
            fail(op, arg, f"must be finite, got {value}")
        return torch.full((), float(value), dtype=dtype, device=logits.device)
    require_tensor(op, arg, value, floating=True)
    same_device(op, "logits", logits, **{arg: value})
    if value.dim() == 1 and value.shape[0] == 1 and rows != 1:
        value = value.reshape(())
    if value.dim() != 0 and value.shape != (rows,):
        fail(op, arg, f"must be a scalar or shape [N] = [{rows}], got {_shape(value)}")
    return value.to(dtype)


def sampling_inputs(op: str, logits, mask, scale, temperature, clip, epsilon=None
                    ) -> SamplingInputs:
    require_tensor(op, "logits", logits, floating=True)
    if logits.dtype not in SAMPLING_DTYPES:
        fail(op, "logits", f"must be float16, bfloat16, float32 or float64, got {logits.dtype}",
             TypeError)
    if logits.dim() != 2:
        fail(op, "logits", f"must be 2-D [N, A], got {_shape(logits)}")
    rows, actions = logits.shape
    if actions < 1:
        fail(op, "logits", f"must have A >= 1 actions, got {_shape(logits)}")
    if actions >= 2**31:
        fail(op, "logits", f"must have fewer than 2^31 actions, got {actions}")
    if rows >= 2**32:  # row r + 2^32 would draw row r's noise on the reference and Triton
        fail(op, "logits", f"must have fewer than 2^32 rows (a row is one 32-bit word of the "
             f"Philox counter), got {rows}")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    packed = False
    if mask is not None:
        require_tensor(op, "mask", mask)
        same_device(op, "logits", logits, mask=mask)
        if mask.dtype == torch.uint8:
            packed = True
            expected = (rows, (actions + 7) // 8)
            if tuple(mask.shape) != expected:
                fail(op, "mask", f"as a packed bitmask (uint8) must have shape [N, ceil(A/8)] = "
                     f"[{expected[0]}, {expected[1]}], got {_shape(mask)}")
        elif mask.dtype == torch.bool:
            if mask.shape != logits.shape:
                fail(op, "mask", f"must have the shape of `logits` {_shape(logits)}, "
                     f"got {_shape(mask)}")
        else:
            fail(op, "mask", f"must be a bool tensor [N, A] or a packed uint8 bitmask, got "
                 f"{mask.dtype}", TypeError)
    scale = sampling_row_value(op, "scale", scale, rows, logits, dtype)
    inv_temperature = None
    # the smallest temperature whose reciprocal (what the kernels multiply by) is finite
    lowest_temperature = 2.0 / torch.finfo(dtype).max
    if temperature is not None:
        if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
            if not temperature > 0:
                fail(op, "temperature", f"must be > 0, got {temperature}")
            if temperature < lowest_temperature:
                fail(op, "temperature", f"must be >= {lowest_temperature:.3g} (its reciprocal "
                     f"overflows {dtype} below that), got {temperature}")
        temperature = sampling_row_value(op, "temperature", temperature, rows, logits, dtype)
        inv_temperature = 1.0 / temperature.detach()
    if clip is not None:
        if not isinstance(clip, (tuple, list)) or len(clip) != 2:
            fail(op, "clip", f"must be None or a (lo, hi) pair, got {clip!r}", TypeError)
        for bound in clip:
            if isinstance(bound, bool) or not isinstance(bound, (int, float)):
                fail(op, "clip", f"bounds must be Python floats, got {clip!r}", TypeError)
        lo, hi = float(clip[0]), float(clip[1])
        if not lo < hi:
            fail(op, "clip", f"must satisfy lo < hi (no NaN), got {clip!r}")
        clip = (lo, hi)
    if epsilon is not None:
        if isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool):
            if not 0.0 <= epsilon <= 1.0:
                fail(op, "epsilon", f"must lie in [0, 1], got {epsilon}")
            epsilon = math.ceil(epsilon * EXPLORE_STEPS) / EXPLORE_STEPS
            epsilon = sampling_row_value(op, "epsilon", epsilon, rows, logits, dtype)
        else:
            epsilon = sampling_row_value(op, "epsilon", epsilon, rows, logits, dtype).detach()
            epsilon = torch.ceil(epsilon * EXPLORE_STEPS) / EXPLORE_STEPS
    if value_checks_enabled():
        if inv_temperature is not None and temperature.numel() > 0:
            lowest = value_range(temperature)[0]
            if not lowest > 0:
                fail(op, "temperature", "must be > 0 everywhere, got a value <= 0 or NaN")
            if lowest < lowest_temperature:
                fail(op, "temperature", f"must be >= {lowest_temperature:.3g} everywhere (its "
                     f"reciprocal overflows {dtype} below that), got {lowest}")
        if epsilon is not None and epsilon.numel() > 0:
            lowest, highest = value_range(epsilon)
            if not (0 <= lowest and highest <= 1):
                fail(op, "epsilon", "must lie in [0, 1] everywhere, got a value outside it or "
                     "NaN")
        if mask is not None and rows > 0:
            any_allowed = (mask != 0).any(dim=1) if packed else mask.any(dim=1)
            if packed and actions % 8:
                tail = mask[:, -1] & ((1 << (actions % 8)) - 1)
                any_allowed = (mask[:, :-1] != 0).any(dim=1) | (tail != 0)
            if not bool(any_allowed.all()):
                bad = int((~any_allowed).nonzero()[0, 0])
                fail(op, "mask", f"must allow at least one action in every row; row {bad} "
                     "allows none")
    return SamplingInputs(logits, mask, packed, scale, inv_temperature, clip, epsilon, dtype)


def sampling_actions(op: str, actions, inputs: SamplingInputs) -> torch.Tensor:
    """[N] integer actions -> int64, checked in range and allowed (a value check)."""
    require_tensor(op, "actions", actions, integer=True)
    same_device(op, "logits", inputs.logits, actions=actions)
    rows, width = inputs.logits.shape
    if actions.shape != (rows,):
        fail(op, "actions", f"must have shape [N] = [{rows}], got {_shape(actions)}")
    # contiguous: the Triton and CUDA kernels read action r at actions_ptr + r
    actions = actions.to(torch.int64).contiguous()
    if value_checks_enabled() and rows > 0:
        low, high = value_range(actions)
        if low < 0 or high >= width:
            fail(op, "actions", f"must lie in [0, A) = [0, {width}), got values in "
                 f"[{low}, {high}]")
        if inputs.mask is not None:
            index = actions[:, None]
            if inputs.packed:
                byte = inputs.mask.gather(1, index >> 3).squeeze(1).to(torch.int64)
                allowed = ((byte >> (actions & 7)) & 1).bool()
            else:
                allowed = inputs.mask.gather(1, index).squeeze(1)
            if not bool(allowed.all()):
                bad = int((~allowed).nonzero()[0, 0])
                fail(op, "actions", f"must point at allowed entries of `mask`; row {bad} takes "
                     f"masked action {int(actions[bad])}")
    return actions
# ---------------------------------------------------------------- Bayesian Flow Networks (bfn)

def open_unit(op: str, arg: str, value) -> float:
    """A Python float in (0, 1) (sigma_1)."""
    value = parse_float(op, arg, value)
    if not 0.0 < value < 1.0:
        fail(op, arg, f"must lie in (0, 1), got {value}")
    return value


def positive_float(op: str, arg: str, value) -> float:
    """A finite Python float > 0 (beta_1, a scalar alpha)."""
    value = parse_float(op, arg, value)
    if not value > 0.0:
        fail(op, arg, f"must be > 0, got {value}")
    return value


def positive_int(op: str, arg: str, value, *, minimum: int = 1) -> int:
    """A Python int >= minimum (n_steps, n_bins, n_classes)."""
    if isinstance(value, bool) or not isinstance(value, int):
        fail(op, arg, f"must be a Python int, got {type(value).__name__}", TypeError)
    if value < minimum:
        fail(op, arg, f"must be >= {minimum}, got {value}")
    return value


def same_shape(op: str, reference_arg: str, reference: torch.Tensor, **others) -> None:
    for arg, value in others.items():
        if value is not None and value.shape != reference.shape:
            fail(op, arg, f"must have the shape of `{reference_arg}` {_shape(reference)}, "
                 f"got {_shape(value)}")


def per_sample(op: str, arg: str, value, batch: int, like: torch.Tensor, dtype: torch.dtype, *,
               low: float | None = None, high: float | None = None, positive: bool = False
               ) -> torch.Tensor:
    """A float, 0-dim, [B] or [B, 1, ..., 1] floating tensor -> contiguous [B] in `dtype`.
    Value checks (tier 2): within [low, high], or > 0 when `positive`."""
    if isinstance(value, bool):
        fail(op, arg, "must be a float or a floating tensor, got bool", TypeError)
    if isinstance(value, (int, float)):
        value = parse_float(op, arg, value)
        if low is not None and not low <= value <= high:
            fail(op, arg, f"must lie in [{low}, {high}], got {value}")
        if positive and not value > 0:
            fail(op, arg, f"must be > 0, got {value}")
        return torch.full((batch,), value, dtype=dtype, device=like.device)
    require_tensor(op, arg, value)
    if value.device != like.device:
        same_device(op, "the data", like, **{arg: value})
    # A contiguous [B] tensor of the compute dtype (floating) is already what the kernels take.
    if not (value.dtype == dtype and value.dim() == 1 and value.shape[0] == batch
            and value.is_contiguous()):
        require_tensor(op, arg, value, floating=True)
        if value.numel() == 1 and value.dim() <= 1:
            value = value.reshape(()).expand(batch)
        elif value.dim() == 0 or value.shape[0] != batch or value.numel() != batch:
            fail(op, arg, f"must be a scalar, [B] or [B, 1, ...] with B = {batch}, got "
                 f"{_shape(value)}")
        value = value.reshape(batch).to(dtype).contiguous()
    if value_checks_enabled():
        lowest, highest = value_range(value)
        if low is not None and not (low <= lowest and highest <= high):  # False for NaN
            fail(op, arg, f"must lie in [{low}, {high}], got values in [{lowest}, {highest}]")
        if positive and not lowest > 0:
            fail(op, arg, f"must be > 0, got a minimum of {lowest}")
    return value


def class_indices(op: str, arg: str, value, n_classes: int) -> torch.Tensor:
    """Integer class indices; tier 2: within [0, n_classes). Returned as contiguous int64."""
    require_tensor(op, arg, value, integer=True)
    value = value.to(torch.int64).contiguous()
    if value_checks_enabled() and value.numel() > 0:
        low, high = value_range(value)
        if low < 0 or high >= n_classes:
            fail(op, arg, f"must lie in [0, K) = [0, {n_classes}), got values in "
                 f"[{low}, {high}]")
    return value


# ---- Detailed balance / sub-trajectory balance (gfn_fast.subtb) ----

SUBTB_WEIGHTINGS = ("geometric_within", "equal_within", "geometric", "equal", "TB", "DB")


def parse_weighting(op: str, weighting) -> str:
    if not isinstance(weighting, str) or weighting not in SUBTB_WEIGHTINGS:
        fail(op, "weighting", f"must be one of {list(SUBTB_WEIGHTINGS)}, got {weighting!r}")
    return weighting


def parse_lamda(op: str, lamda) -> float:
    """lambda of SubTB(lambda): a Python number in (0, 1] (a constant, not learned)."""
    value = parse_float(op, "lamda", lamda)
    if not 0.0 < value <= 1.0:
        fail(op, "lamda", f"must lie in (0, 1], got {value}")
    return value
