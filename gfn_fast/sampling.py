"""Masked, logit-scaled, epsilon-exploring action sampling: public functions, torch ops, autograd.

Math: ../shared/spec/sampling.md; exact decision rules and randomness contract:
gfn_fast/reference/sampling.py and gfn_fast/reference/_philox.py. Each public function validates
and normalises its inputs (gfn_fast._checks), picks a backend (gfn_fast._backends), then runs
either the plain-PyTorch reference under autograd or the torch ops below:

* ``gfn_fast::sample_actions``: one pass over the logits -> (actions, log_pi, log_mu, entropy,
  logsumexp). log_pi is differentiable w.r.t. logits and scale (same backward as
  action_log_prob, from the saved logsumexp); actions, log_mu and entropy are not.
* ``gfn_fast::action_log_prob_fwd`` -> (log_pi, logsumexp) and ``gfn_fast::action_log_prob_bwd``,
  which re-reads the logits once.

The backend name is resolved before the op and passed to it as a string (as in balance.py);
seeds and offsets travel as four 32-bit integers so they fit the int64 op schema.
"""

import math

import torch

from gfn_fast import _backends, _checks, _ops, _rng
from gfn_fast.reference import _philox
from gfn_fast.reference import sampling as reference


def _clip_of(clip_lo: float, clip_hi: float):
    return None if clip_lo == -math.inf and clip_hi == math.inf else (clip_lo, clip_hi)


def _impl(backend: str):
    return _backends.module(backend, "sampling")


@_ops.custom_op("gfn_fast::sample_actions", mutates_args=())
def _sample_op(logits: torch.Tensor, mask: torch.Tensor | None, scale: torch.Tensor | None,
               inv_temperature: torch.Tensor | None, epsilon: torch.Tensor | None,
               clip_lo: float, clip_hi: float, packed: bool, seed_lo: int, seed_hi: int,
               off_lo: int, off_hi: int, want_log_mu: bool, want_entropy: bool, backend: str
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log_pi, actions, log_mu or empty, entropy or empty, logsumexp); a floating output comes
    first because generic op checkers sum the outputs into the first one's dtype."""
    actions, log_pi, log_mu, entropy, lse = _impl(backend).sample_forward(
        logits, mask, packed, scale, inv_temperature, _clip_of(clip_lo, clip_hi), epsilon,
        (seed_lo, seed_hi, off_lo, off_hi), want_log_mu, want_entropy)
    return log_pi, actions, log_mu, entropy, lse


@_sample_op.register_fake
def _(logits, mask, scale, inv_temperature, epsilon, clip_lo, clip_hi, packed, seed_lo, seed_hi,
      off_lo, off_hi, want_log_mu, want_entropy, backend):
    rows = logits.shape[0]
    dtype = reference.compute_dtype(logits)
    row = logits.new_empty(rows, dtype=dtype)
    return (row, logits.new_empty(rows, dtype=torch.int64), logits.new_empty(
        rows if want_log_mu else 0, dtype=dtype), logits.new_empty(
        rows if want_entropy else 0, dtype=dtype), torch.empty_like(row))


@_ops.custom_op("gfn_fast::action_log_prob_fwd", mutates_args=())
def _log_prob_op(logits: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor | None,
                 scale: torch.Tensor | None, inv_temperature: torch.Tensor | None,
                 clip_lo: float, clip_hi: float, packed: bool, backend: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log_pi [N], logsumexp [N]) in the compute dtype."""
    return _impl(backend).log_prob_forward(logits, actions, mask, packed, scale, inv_temperature,
                                           _clip_of(clip_lo, clip_hi))


@_log_prob_op.register_fake
def _(logits, actions, mask, scale, inv_temperature, clip_lo, clip_hi, packed, backend):
    row = logits.new_empty(logits.shape[0], dtype=reference.compute_dtype(logits))
    return row, torch.empty_like(row)


@_ops.custom_op("gfn_fast::action_log_prob_bwd", mutates_args=())
def _log_prob_backward_op(grad: torch.Tensor, logits: torch.Tensor, actions: torch.Tensor,
                          mask: torch.Tensor | None, scale: torch.Tensor | None,
                          inv_temperature: torch.Tensor | None, clip_lo: float, clip_hi: float,
                          packed: bool, lse: torch.Tensor, need_logits: bool, need_scale: bool,
                          backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_logits like logits or empty, grad_scale [N] or empty)."""
    grad_logits, grad_scale = _impl(backend).log_prob_backward(
        grad.to(lse.dtype).contiguous(), logits, actions, mask, packed, scale, inv_temperature,
        _clip_of(clip_lo, clip_hi), lse, need_logits, need_scale)
    empty = lse.new_empty(0)
    return (grad_logits if grad_logits is not None else empty.to(logits.dtype),
            grad_scale if grad_scale is not None else empty)


@_log_prob_backward_op.register_fake
def _(grad, logits, actions, mask, scale, inv_temperature, clip_lo, clip_hi, packed, lse,
      need_logits, need_scale, backend):
    return (torch.empty_like(logits) if need_logits else logits.new_empty(0),
            lse.new_empty(lse.shape[0] if need_scale else 0))


def _backward_common(ctx, grad_log_pi):
    logits, actions, mask, scale, inv_temperature, lse = ctx.saved_tensors
    clip_lo, clip_hi, packed, backend = ctx.config
    need_logits = ctx.needs_input_grad[0]
    need_scale = scale is not None and ctx.scale_index is not None and \
        ctx.needs_input_grad[ctx.scale_index]
    grad_logits, grad_scale = _log_prob_backward_op(
        grad_log_pi, logits, actions, mask, scale, inv_temperature, clip_lo, clip_hi, packed, lse,
        need_logits, need_scale, backend)
    if need_scale and scale.dim() == 0:
        grad_scale = grad_scale.sum()
    return (grad_logits if need_logits else None), (grad_scale if need_scale else None)


def _sample_setup(ctx, inputs, output):
    (logits, mask, scale, inv_temperature, _eps, clip_lo, clip_hi, packed, *_rest) = inputs
    backend = inputs[-1]
    _, actions, log_mu, entropy, lse = output
    ctx.save_for_backward(*_ops.saveable(logits, actions, mask, scale, inv_temperature, lse))
    ctx.config = (clip_lo, clip_hi, packed, backend)
    ctx.scale_index = 2
    ctx.mark_non_differentiable(actions, log_mu, entropy, lse)
    ctx.set_materialize_grads(False)  # see _ops.Op.register_autograd


def _sample_backward(ctx, grad_log_pi, _g_actions, _g_mu, _g_entropy, _g_lse):
    grad_logits, grad_scale = _backward_common(ctx, grad_log_pi)
    return (grad_logits, None, grad_scale) + (None,) * 12


_sample_op.register_autograd(_sample_backward, setup_context=_sample_setup)


def _log_prob_setup(ctx, inputs, output):
    logits, actions, mask, scale, inv_temperature, clip_lo, clip_hi, packed, backend = inputs
    ctx.save_for_backward(*_ops.saveable(logits, actions, mask, scale, inv_temperature,
                                         output[1]))
    ctx.config = (clip_lo, clip_hi, packed, backend)
    ctx.scale_index = 3
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # see _ops.Op.register_autograd


def _log_prob_backward(ctx, grad_log_pi, _grad_lse):
    grad_logits, grad_scale = _backward_common(ctx, grad_log_pi)
    return (grad_logits, None, None, grad_scale, None, None, None, None, None)


_log_prob_op.register_autograd(_log_prob_backward, setup_context=_log_prob_setup)


def _reference_mask(inputs: _checks.SamplingInputs):
    if inputs.mask is None:
        return None
    if inputs.packed:
        return reference.unpack_mask(inputs.mask, inputs.logits.shape[1])
    return inputs.mask


def _clip_args(clip):
    return (-math.inf, math.inf) if clip is None else clip


def sample_actions(
    logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scale: torch.Tensor | float | None = None,
    temperature: torch.Tensor | float | None = None,
    clip: tuple[float, float] | None = None,
    epsilon: torch.Tensor | float = 0.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    offset: int | None = None,
    return_log_mu: bool = False,
    return_entropy: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, ...]:
    """Draw one action per row from the epsilon-mixed, masked, logit-scaled policy, in one pass.

    z_{r,a} = clip(scale_r * logits_{r,a}) / temperature_r on allowed a (-inf elsewhere),
    pi_r = softmax(z_r), mu_r = (1 - epsilon_r) pi_r + epsilon_r / |allowed_r|; a_r ~ mu_r.

    Args:
        logits: [N, A] float16/bfloat16/float32/float64, any strides.
        mask: None, bool [N, A] (True = allowed), or a packed uint8 bitmask [N, ceil(A/8)] whose
            bit j (LSB first) of byte k allows action 8k + j (``gfn_fast.pack_mask``). Every row
            must allow at least one action.
        scale: None, scalar or [N]: g(beta) per row (log_pi is differentiable w.r.t. it).
        temperature: None, scalar or [N], > 0 (a constant: no gradient); at least 5.9e-39 for
            float32 compute (1.1e-308 for float64), whose reciprocal the kernels multiply by.
        clip: None or (lo, hi), applied to scale * logits before the temperature.
        epsilon: scalar or [N] in [0, 1]: probability of the uniform-over-allowed branch,
            rounded up to a multiple of 2^-24 (the resolution of the row's coin; log_mu uses
            the rounded value, the rate the draws follow).
        generator / seed, offset: randomness. With ``seed`` (and ``offset``, default 0) the draw
            is a pure function of (seed, offset, row, action) and identical on every backend up
            to float-rounding ties; otherwise ``generator`` (default: the device's) supplies and
            advances them (gfn_fast._rng). Under torch.compile pass ``seed``/``offset``.
        return_log_mu: also return log mu_r(a_r) (importance weights; no gradient).
        return_entropy: also return H(pi_r) (no gradient: an entropy bonus needs its own
            differentiable computation, e.g. from ``action_log_prob`` or the logits).
        backend: "cuda" | "triton" | "numba" | "reference" | None (automatic).

    Returns ``(actions [N] int64, log_pi [N])`` then ``log_mu`` and/or ``entropy`` when asked;
    log-probs are float32 (float64 for float64 logits). NaN logits in allowed positions give NaN
    log-probs and an in-range action.
    """
    op = "sample_actions"
    inputs = _checks.sampling_inputs(op, logits, mask, scale, temperature, clip, epsilon)
    seed, offset = _rng.seed_offset(op, logits.device, generator, seed, offset)
    name = _backends.resolve(op, backend, logits.device)
    if name == "reference":
        actions, log_pi, log_mu, entropy = reference.sample_actions(
            logits, _reference_mask(inputs), inputs.scale, inputs.inv_temperature, inputs.clip,
            inputs.epsilon, seed, offset, return_log_mu, return_entropy)
        # as on the fused backends, only log_pi carries a gradient
        log_mu = None if log_mu is None else log_mu.detach()
        entropy = None if entropy is None else entropy.detach()
    else:
        log_pi, actions, log_mu, entropy, _ = _sample_op(
            logits, inputs.mask, inputs.scale, inputs.inv_temperature, inputs.epsilon,
            *_clip_args(inputs.clip), inputs.packed, *_philox.split_seed(seed),
            *_philox.split_offset(offset), return_log_mu, return_entropy, name)
    out = (actions, log_pi)
    if return_log_mu:
        out += (log_mu,)
    if return_entropy:
        out += (entropy,)
    return out


def action_log_prob(
    logits: torch.Tensor,
    actions: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scale: torch.Tensor | float | None = None,
    temperature: torch.Tensor | float | None = None,
    clip: tuple[float, float] | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """log pi_r(actions_r) [N] of the masked, logit-scaled policy (see `sample_actions`),
    differentiable w.r.t. ``logits`` and ``scale``. The forward reads the logits once and saves
    only the logsumexp [N]; the backward re-reads the logits once.

    Args as in `sample_actions`; ``actions`` is [N] integer, in [0, A) and allowed by ``mask``.
    Returns float32 (float64 for float64 logits).
    """
    op = "action_log_prob"
    inputs = _checks.sampling_inputs(op, logits, mask, scale, temperature, clip)
    actions = _checks.sampling_actions(op, actions, inputs)
    name = _backends.resolve(op, backend, logits.device)
    if name == "reference":
        return reference.action_log_prob(logits, actions, _reference_mask(inputs), inputs.scale,
                                         inputs.inv_temperature, inputs.clip)
    log_pi, _ = _log_prob_op(logits, actions, inputs.mask, inputs.scale, inputs.inv_temperature,
                             *_clip_args(inputs.clip), inputs.packed, name)
    return log_pi


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """bool [N, A] -> the packed uint8 bitmask [N, ceil(A/8)] accepted by the sampling ops:
    bit j (LSB first) of byte k holds action 8k + j; padding bits are 0."""
    _checks.require_tensor("pack_mask", "mask", mask)
    if mask.dtype != torch.bool or mask.dim() != 2:
        _checks.fail("pack_mask", "mask", f"must be a 2-D bool tensor, got {mask.dtype} "
                     f"{list(mask.shape)}", TypeError)
    return reference.pack_mask(mask)
