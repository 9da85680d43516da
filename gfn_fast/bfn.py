"""Bayesian Flow Networks: fused flows, losses, Bayesian updates and generation steps.

Math: ../shared/spec/bfn.md. Each public function validates and normalises its inputs
(gfn_fast._checks), picks a backend (gfn_fast._backends), then runs the plain-PyTorch reference
(gfn_fast.reference.bfn) under autograd, or a torch op ``gfn_fast::bfn_*`` whose kernels live in
gfn_fast.{cpu,kernels,cuda}.bfn. Losses are fused from the network output to the per-sample loss
and their backward ops recompute the elementwise chain from the inputs, so nothing but the
inputs is saved. The backend is resolved before the op and passed to it as a string (as in
gfn_fast.balance).

Shapes: continuous data x, mu, eps_hat are [B, ...] (flattened to [B, D] inside); discrete data
are class indices [B, ...] with logits / log theta [B, ..., K]. Time `t` is a float, a 0-dim
tensor, or one value per sample ([B] or [B, 1, ...]).
"""

import math

import torch

from gfn_fast import _backends, _checks, _ops, _rng
from gfn_fast.reference import bfn as reference

_NO_RANGE = (0.0, 0.0)


def _signed(value: int) -> int:
    """A [0, 2^64) seed/offset as the signed 64-bit int a torch op schema carries (backends
    take the low 64 bits back)."""
    return value - (1 << 64) if value >= (1 << 63) else value


def _impl(backend: str):
    return _backends.module(backend, "bfn")


# ------------------------------------------------------------------------------------- schedules

def _schedule_arg(op: str, arg: str, value, low: float, high: float) -> torch.Tensor:
    """t or a step index i as a tensor, checked in [low, high] (a value check for tensors). A t
    tensor must be floating, as every op's t is; a step index may be an integer tensor."""
    if isinstance(value, bool) or not (isinstance(value, (int, float)) or torch.is_tensor(value)):
        _checks.fail(op, arg, f"must be a number or a tensor, got {type(value).__name__}",
                     TypeError)
    if arg == "t" and torch.is_tensor(value):
        _checks.require_tensor(op, arg, value, floating=True)
    if not torch.is_tensor(value):
        if not low <= value <= high:
            _checks.fail(op, arg, f"must lie in [{low:g}, {high:g}], got {value}")
        return torch.as_tensor(value, dtype=torch.float64)
    if _checks.value_checks_enabled() and value.numel() > 0:
        lowest, highest = _checks.value_range(value)
        if not (low <= lowest and highest <= high):
            _checks.fail(op, arg, f"must lie in [{low:g}, {high:g}], got values in "
                         f"[{lowest}, {highest}]")
    return value


def gamma(t, sigma_1: float):
    """gamma(t) = 1 - sigma_1^(2t) (computed as -expm1(2 t ln sigma_1))."""
    sigma_1 = _checks.open_unit("gamma", "sigma_1", sigma_1)
    return reference.gamma(_schedule_arg("gamma", "t", t, 0.0, 1.0), sigma_1)


def continuous_alpha(i, n_steps: int, sigma_1: float):
    """alpha_i = sigma_1^(-2i/n) (1 - sigma_1^(2/n)), the accuracy of step i in 1..n."""
    sigma_1 = _checks.open_unit("continuous_alpha", "sigma_1", sigma_1)
    n_steps = _checks.positive_int("continuous_alpha", "n_steps", n_steps)
    return reference.continuous_alpha(_schedule_arg("continuous_alpha", "i", i, 1, n_steps),
                                      n_steps, sigma_1)


def beta(t, beta_1: float):
    """beta(t) = beta_1 t^2."""
    beta_1 = _checks.positive_float("beta", "beta_1", beta_1)
    return reference.beta(_schedule_arg("beta", "t", t, 0.0, 1.0), beta_1)


def discrete_alpha(i, n_steps: int, beta_1: float):
    """alpha_i = beta_1 (2i - 1) / n^2, the accuracy of step i in 1..n."""
    beta_1 = _checks.positive_float("discrete_alpha", "beta_1", beta_1)
    n_steps = _checks.positive_int("discrete_alpha", "n_steps", n_steps)
    return reference.discrete_alpha(_schedule_arg("discrete_alpha", "i", i, 1, n_steps),
                                    n_steps, beta_1)


# ---------------------------------------------------------------------------- shared validation

def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> contiguous [B, D]. A contiguous [B, D] tensor is returned as it is: reshaping
    it would still add a view (and, for an input needing a gradient, an autograd node)."""
    if tensor.dim() == 2 and tensor.is_contiguous():
        return tensor
    return tensor.reshape(tensor.shape[0], -1).contiguous()


def _shaped(out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """out.reshape(shape), skipped when out has that shape already (the [B, D] inputs the
    kernels take): even a no-op reshape makes a new view, ~2 us a call (~10 us cold)."""
    return out if out.shape == shape else out.reshape(shape)


def _batched(op: str, arg: str, tensor, *, floating: bool = True) -> torch.Tensor:
    _checks.require_tensor(op, arg, tensor, floating=floating, integer=not floating)
    if tensor.dim() < 1 or tensor.shape[0] < 1:
        _checks.fail(op, arg, f"must be [B, ...] with B >= 1, got {list(tensor.shape)}")
    return tensor


def _continuous_inputs(op: str, first: str, tensors: dict) -> list[torch.Tensor]:
    """Same-shape, same-device floating [B, ...] tensors."""
    lead = _batched(op, first, tensors[first])
    shape, device = lead.shape, lead.device
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and \
                value.shape == shape and value.device == device:
            continue  # the checks below would all pass (the lead is [B, ...] with B >= 1)
        _batched(op, name, value)
        _checks.same_shape(op, first, lead, **{name: value})
        _checks.same_device(op, first, lead, **{name: value})
    return list(tensors.values())


def _n_steps(op: str, n_steps) -> int:
    """None (continuous time) -> 0, else an int >= 1."""
    return 0 if n_steps is None else _checks.positive_int(op, "n_steps", n_steps)


def _x_range(op: str, x_range) -> tuple[float, float, bool]:
    if x_range is None:
        return (*_NO_RANGE, False)
    if not isinstance(x_range, (tuple, list)) or len(x_range) != 2:
        _checks.fail(op, "x_range", f"must be None or a pair (x_min, x_max), got {x_range!r}",
                     TypeError)
    low = _checks.parse_float(op, "x_range", x_range[0])
    high = _checks.parse_float(op, "x_range", x_range[1])
    if not low <= high:
        _checks.fail(op, "x_range", f"must have x_min <= x_max, got {x_range!r}")
    return low, high, True


def _t_min(op: str, t_min) -> float:
    value = _checks.parse_float(op, "t_min", t_min)
    if not 0.0 <= value < 1.0:
        _checks.fail(op, "t_min", f"must lie in [0, 1), got {value}")
    return value


# ---------------------------------------------------------------------------- continuous output

@_ops.custom_op("gfn_fast::bfn_continuous_output", mutates_args=())
def _continuous_output_op(mu: torch.Tensor, eps_hat: torch.Tensor, t: torch.Tensor,
                          sigma_1: float, t_min: float, x_min: float, x_max: float, clamp: bool,
                          backend: str) -> torch.Tensor:
    return _impl(backend).continuous_output(mu, eps_hat, t, sigma_1, t_min, x_min, x_max, clamp)


@_continuous_output_op.register_fake
def _(mu, eps_hat, t, sigma_1, t_min, x_min, x_max, clamp, backend):
    return torch.empty_like(mu, memory_format=torch.contiguous_format)


def continuous_output(mu: torch.Tensor, eps_hat: torch.Tensor, t, sigma_1: float, *,
                      t_min: float = 1e-6, x_range: tuple[float, float] | None = None,
                      backend: str | None = None) -> torch.Tensor:
    """Network output -> data estimate x_hat = mu / gamma - sqrt((1 - gamma) / gamma) eps_hat.

    x_hat = 0 where t < t_min; clamped to x_range = (x_min, x_max) when given.
    mu, eps_hat: [B, ...]; t: float, 0-dim or [B]. Returns x_hat like mu, with no gradient on
    any backend (`continuous_loss` is the differentiable, fused path for training).
    """
    op = "continuous_output"
    mu, eps_hat = _continuous_inputs(op, "mu", {"mu": mu, "eps_hat": eps_hat})
    sigma_1 = _checks.open_unit(op, "sigma_1", sigma_1)
    t_min = _t_min(op, t_min)
    x_min, x_max, clamp = _x_range(op, x_range)
    dtype = reference.compute_dtype(mu, eps_hat)
    t = _checks.per_sample(op, "t", t, mu.shape[0], mu, dtype, low=0.0, high=1.0)
    name = _backends.resolve(op, backend, mu.device)
    if name == "reference":
        with torch.no_grad():  # not differentiable on any backend (the docstring)
            out = reference.continuous_output(_flat(mu), _flat(eps_hat), t, sigma_1, t_min,
                                              (x_min, x_max) if clamp else None)
        return out.to(mu.dtype).reshape(mu.shape)
    # detached: the op has no autograd formula, so a graph-tracking input would make compiled
    # and op-path calls fail (eager calls below the dispatcher would merely drop the graph)
    out = _continuous_output_op(_flat(mu.detach()), _flat(eps_hat.detach()), t.detach(), sigma_1,
                                t_min, x_min, x_max, clamp, name)
    return _shaped(out, mu.shape)


# ------------------------------------------------------------------------------ continuous loss

@_ops.custom_op("gfn_fast::bfn_continuous_loss_fwd", mutates_args=())
def _continuous_loss_op(x: torch.Tensor, mu: torch.Tensor, eps_hat: torch.Tensor,
                        t: torch.Tensor, sigma_1: float, n_steps: int, t_min: float,
                        x_min: float, x_max: float, clamp: bool, backend: str,
                        want_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample loss [B], d loss_b / d eps_hat [B, D] when want_grad else an empty tensor).
    The kernel that reads x, mu and eps_hat for the loss writes the per-unit gradient in the same
    pass, so the backward is the chain rule's one multiply (no second kernel, no re-read)."""
    loss, unit = _impl(backend).continuous_loss_forward(x, mu, eps_hat, t, sigma_1, n_steps,
                                                        t_min, x_min, x_max, clamp, want_grad)
    return loss, (unit if want_grad else loss.new_empty(0))


@_continuous_loss_op.register_fake
def _(x, mu, eps_hat, t, sigma_1, n_steps, t_min, x_min, x_max, clamp, backend, want_grad=False):
    return t.new_empty(x.shape[0]), t.new_empty(x.shape if want_grad else (0,))


def _continuous_loss_setup(ctx, inputs, output):
    # The inputs are kept only for a direct call of the op without want_grad (opcheck does
    # that): its backward recomputes the per-unit gradient in one more pass.
    ctx.recompute = output[1].numel() == 0
    # eps_hat kept too (a reference, no copy) for a backward with create_graph=True to link
    # its result to (see _continuous_loss_backward)
    ctx.save_for_backward(*_ops.saveable(*(inputs[:4] if ctx.recompute
                                             else (output[1], inputs[2]))))
    ctx.config = inputs[4:11]
    ctx.eps_dtype = inputs[2].dtype
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # see _ops.Op.register_autograd


def _continuous_loss_backward(ctx, grad, _grad_unit):
    if not ctx.needs_input_grad[2]:
        return (None,) * 12
    if ctx.recompute:
        eps_hat = ctx.saved_tensors[2]
        unit = _continuous_loss_op(*ctx.saved_tensors, *ctx.config, True)[1]
    else:
        unit, eps_hat = ctx.saved_tensors
    # Untracked (grad detached; unit is a non-differentiable output): the gradient is once
    # differentiable, like every fused op's. With create_graph, a multiply tracked through
    # `grad` alone would give a silently partial second derivative (unit depends on eps_hat
    # too), and an untracked result a silently missing one (a penalty on the gradient added
    # to the loss was dropped): the result is marked to raise when differentiated.
    # Each skipped no-op (detach of an untracked grad, same-dtype .to) is a dispatcher trip,
    # ~1 us (~4 us with the caches cold, as after a network's forward).
    # a backward run with create_graph=True: what the result is linked to (see below)
    anchors = [v for v in (eps_hat, grad) if v.requires_grad] if torch.is_grad_enabled() else []
    if grad.requires_grad:
        grad = grad.detach()
    if grad.dtype != unit.dtype:
        grad = grad.to(unit.dtype)
    grad_eps = unit * grad.unsqueeze(1)
    if grad_eps.dtype != ctx.eps_dtype:
        grad_eps = grad_eps.to(ctx.eps_dtype)
    if anchors:
        grad_eps = _ops.not_twice_differentiable("bfn.continuous_loss", grad_eps, anchors)
    return (None, None, grad_eps) + (None,) * 9


_continuous_loss_op.register_autograd(_continuous_loss_backward,
                                      setup_context=_continuous_loss_setup)


def continuous_loss(x: torch.Tensor, mu: torch.Tensor, eps_hat: torch.Tensor, t, sigma_1: float,
                    n_steps: int | None = None, *, t_min: float = 1e-6,
                    x_range: tuple[float, float] | None = None, backend: str | None = None
                    ) -> torch.Tensor:
    """Per-sample BFN loss of continuous data, fused from the network output eps_hat.

    x_hat = continuous_output(mu, eps_hat, t, sigma_1, t_min=t_min, x_range=x_range), then
    continuous time (n_steps=None): L = -ln(sigma_1) sigma_1^(-2t) ||x - x_hat||^2, or the
    n-step loss with t = (i-1)/n: L = (n/2) alpha_i ||x - x_hat||^2.

    x, mu, eps_hat: [B, ...] (same shape); t: float, 0-dim or [B]. Returns [B] in float32
    (float64 when an input is float64), differentiable w.r.t. eps_hat (x and mu are data and the
    flow sample: no gradient).
    """
    op = "continuous_loss"
    x, mu, eps_hat = _continuous_inputs(op, "x", {"x": x, "mu": mu, "eps_hat": eps_hat})
    sigma_1 = _checks.open_unit(op, "sigma_1", sigma_1)
    steps = _n_steps(op, n_steps)
    t_min = _t_min(op, t_min)
    x_min, x_max, clamp = _x_range(op, x_range)
    dtype = reference.compute_dtype(x, mu, eps_hat)
    t = _checks.per_sample(op, "t", t, x.shape[0], x, dtype, low=0.0, high=1.0)
    name = _backends.resolve(op, backend, x.device)
    if name == "reference":
        return reference.continuous_loss(_flat(x.detach()), _flat(mu.detach()), _flat(eps_hat),
                                         t.detach(), sigma_1, steps, t_min,
                                         (x_min, x_max) if clamp else None)
    want_grad = eps_hat.requires_grad and torch.is_grad_enabled()
    loss, _ = _continuous_loss_op(_flat(x.detach()), _flat(mu.detach()), _flat(eps_hat), t,
                                  sigma_1, steps, t_min, x_min, x_max, clamp, name, want_grad)
    return loss


# ---------------------------------------------------------------------------- continuous update

@_ops.custom_op("gfn_fast::bfn_continuous_update", mutates_args=())
def _continuous_update_op(mu: torch.Tensor, rho: torch.Tensor, y: torch.Tensor,
                          alpha: torch.Tensor, backend: str) -> torch.Tensor:
    return _impl(backend).continuous_update(mu, rho, y, alpha)


@_continuous_update_op.register_fake
def _(mu, rho, y, alpha, backend):
    return torch.empty_like(mu, memory_format=torch.contiguous_format)


def _full_precision(rho, mu: torch.Tensor) -> bool:
    """Whether rho holds one precision per element (mu's shape) rather than one per sample."""
    return torch.is_tensor(rho) and rho.shape == mu.shape and rho.numel() != mu.shape[0]


def _precision(op: str, rho, mu: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """rho as a float, [B] / [B, 1, ...] (per sample) or mu's shape -> ([B, D] (maybe expanded),
    the per-sample [B] or None)."""
    batch = mu.shape[0]
    dims = mu[0].numel()
    if _full_precision(rho, mu):
        _checks.require_tensor(op, "rho", rho, floating=True)
        _checks.same_device(op, "mu", mu, rho=rho)
        if _checks.value_checks_enabled() and rho.numel() > 0 and \
                not _checks.value_range(rho)[0] > 0:
            _checks.fail(op, "rho", "must be > 0")
        return _flat(rho.to(dtype)), None
    per = _checks.per_sample(op, "rho", rho, batch, mu, dtype, positive=True)
    return per.reshape(batch, 1).expand(batch, dims), per


def continuous_update(mu: torch.Tensor, rho, y: torch.Tensor, alpha, *,
                      backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bayesian update of a Gaussian belief with sender sample y ~ N(x, 1/alpha).

    rho' = rho + alpha; mu' = (rho mu + alpha y) / rho' (computed as mu + alpha/rho' (y - mu)).
    mu, y: [B, ...]; rho: float, [B] or mu's shape; alpha: float > 0, 0-dim or [B].
    Returns (mu' like mu, rho' in the compute dtype with rho's shape ([B] for a scalar)), with
    no gradient.
    """
    op = "continuous_update"
    mu, y = _continuous_inputs(op, "mu", {"mu": mu, "y": y})
    dtype = reference.compute_dtype(mu, y, rho if torch.is_tensor(rho) else None,
                                    alpha if torch.is_tensor(alpha) else None)
    alpha = _checks.per_sample(op, "alpha", alpha, mu.shape[0], mu, dtype,
                               positive=True).detach()
    rho_2d, per_sample_rho = _precision(op, rho, mu, dtype)
    # no gradient (the docstring), rho' included; the op has no autograd formula, so a
    # graph-tracking input would also make compiled and op-path calls fail
    mu, y, rho_2d = mu.detach(), y.detach(), rho_2d.detach()
    per_sample_rho = None if per_sample_rho is None else per_sample_rho.detach()
    name = _backends.resolve(op, backend, mu.device)
    if name == "reference":
        with torch.no_grad():  # no gradient on any backend
            mu_new, _ = reference.continuous_update(_flat(mu), rho_2d, _flat(y),
                                                    alpha.reshape(-1, 1))
        mu_new = mu_new.to(mu.dtype)
    else:
        mu_new = _continuous_update_op(_flat(mu), rho_2d, _flat(y), alpha, name)
    if per_sample_rho is None:
        rho_new = (rho_2d + alpha.reshape(-1, 1)).reshape(mu.shape)
    else:
        rho_new = per_sample_rho.reshape(-1) + alpha
        if torch.is_tensor(rho) and rho.dim() > 0 and rho.numel() == mu.shape[0]:
            rho_new = rho_new.reshape(rho.shape)  # [B, 1, ...] stays so (a scalar gives [B])
    return _shaped(mu_new, mu.shape), rho_new


# ----------------------------------------------------------------------------- discretised loss

@_ops.custom_op("gfn_fast::bfn_discretised_loss_fwd", mutates_args=())
def _discretised_loss_op(x: torch.Tensor, mu_x: torch.Tensor, log_sigma_x: torch.Tensor,
                         t: torch.Tensor, sigma_1: float, n_steps: int, n_bins: int,
                         backend: str) -> torch.Tensor:
    return _impl(backend).discretised_loss_forward(x, mu_x, log_sigma_x, t, sigma_1, n_steps,
                                                   n_bins)


@_discretised_loss_op.register_fake
def _(x, mu_x, log_sigma_x, t, sigma_1, n_steps, n_bins, backend):
    return t.new_empty(x.shape[0])


@_ops.custom_op("gfn_fast::bfn_discretised_loss_bwd", mutates_args=())
def _discretised_loss_bwd_op(grad: torch.Tensor, x: torch.Tensor, mu_x: torch.Tensor,
                             log_sigma_x: torch.Tensor, t: torch.Tensor, sigma_1: float,
                             n_steps: int, n_bins: int, backend: str
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    return _impl(backend).discretised_loss_backward(grad.contiguous(), x, mu_x, log_sigma_x, t,
                                                    sigma_1, n_steps, n_bins)


@_discretised_loss_bwd_op.register_fake
def _(grad, x, mu_x, log_sigma_x, t, sigma_1, n_steps, n_bins, backend):
    return (torch.empty_like(mu_x, memory_format=torch.contiguous_format),
            torch.empty_like(log_sigma_x, memory_format=torch.contiguous_format))


def _discretised_setup(ctx, inputs, output):
    ctx.save_for_backward(*_ops.saveable(*inputs[:4]))
    ctx.config = inputs[4:]


def _discretised_backward(ctx, grad):
    x, mu_x, log_sigma_x, t = ctx.saved_tensors
    grad_mu, grad_log_sigma = _discretised_loss_bwd_op(grad.to(t.dtype), x, mu_x, log_sigma_x,
                                                       t, *ctx.config)
    return (None, grad_mu, grad_log_sigma) + (None,) * 5


_discretised_loss_op.register_autograd(_discretised_backward, setup_context=_discretised_setup)


def discretised_loss(x: torch.Tensor, mu_x: torch.Tensor, log_sigma_x: torch.Tensor, t,
                     sigma_1: float, n_bins: int, n_steps: int | None = None, *,
                     backend: str | None = None) -> torch.Tensor:
    """Per-sample BFN loss of data discretised into K = n_bins bins on [-1, 1].

    The network's Gaussian (mu_x, sigma_x = clamp(exp(log_sigma_x), 1e-3, 10)) puts
    p(k) = Phi((k_r - mu_x)/sigma_x) - Phi((k_l - mu_x)/sigma_x) on bin k (outer edges at
    -inf/+inf); x_hat = sum_k p(k) k_c is formed in registers (no [B, D, K] tensor) and
    L = w(t) ||x - x_hat||^2 with the weight of `continuous_loss`.

    x (bin centres), mu_x, log_sigma_x: [B, ...]; t: float, 0-dim or [B]. Returns [B] (float32,
    float64 for float64 inputs), differentiable w.r.t. mu_x and log_sigma_x.
    """
    op = "discretised_loss"
    x, mu_x, log_sigma_x = _continuous_inputs(
        op, "x", {"x": x, "mu_x": mu_x, "log_sigma_x": log_sigma_x})
    sigma_1 = _checks.open_unit(op, "sigma_1", sigma_1)
    n_bins = _checks.positive_int(op, "n_bins", n_bins, minimum=2)
    steps = _n_steps(op, n_steps)
    dtype = reference.compute_dtype(x, mu_x, log_sigma_x)
    t = _checks.per_sample(op, "t", t, x.shape[0], x, dtype, low=0.0, high=1.0)
    name = _backends.resolve(op, backend, x.device)
    if name == "reference":
        return reference.discretised_loss(_flat(x.detach()), _flat(mu_x), _flat(log_sigma_x),
                                          t.detach(), sigma_1, n_bins, steps)
    return _discretised_loss_op(_flat(x.detach()), _flat(mu_x), _flat(log_sigma_x), t, sigma_1,
                                steps, n_bins, name)


@_ops.custom_op("gfn_fast::bfn_discretised_probs", mutates_args=())
def _discretised_probs_op(mu_x: torch.Tensor, log_sigma_x: torch.Tensor, n_bins: int,
                          backend: str) -> torch.Tensor:
    return _impl(backend).discretised_probs(mu_x, log_sigma_x, n_bins)


@_discretised_probs_op.register_fake
def _(mu_x, log_sigma_x, n_bins, backend):
    dtype = reference.compute_dtype(mu_x, log_sigma_x)
    return mu_x.new_empty((mu_x.shape[0], n_bins), dtype=dtype)


def discretised_probs(mu_x: torch.Tensor, log_sigma_x: torch.Tensor, n_bins: int, *,
                      backend: str | None = None) -> torch.Tensor:
    """Bin probabilities p(k) of the discretised output distribution, [..., K] (float32, or
    float64 for float64 inputs), for sampling. On the reference, Numba and CUDA backends a bin
    right of the mean is a difference of upper-tail probabilities, so far-tail bins keep their
    relative precision instead of cancelling to 0. The Triton kernel takes differences of
    0.5 (1 + erf(z / sqrt 2)) (Triton has no erfc that also runs in its interpreter), whose
    absolute error is ~1e-7 in float32 and ~1e-16 in float64: bins with probabilities near or
    below that come out as 0 or with few correct digits. No gradient (`discretised_loss` is the
    differentiable path)."""
    op = "discretised_probs"
    _checks.require_tensor(op, "mu_x", mu_x, floating=True)
    _checks.require_tensor(op, "log_sigma_x", log_sigma_x, floating=True)
    _checks.same_shape(op, "mu_x", mu_x, log_sigma_x=log_sigma_x)
    _checks.same_device(op, "mu_x", mu_x, log_sigma_x=log_sigma_x)
    n_bins = _checks.positive_int(op, "n_bins", n_bins, minimum=2)
    name = _backends.resolve(op, backend, mu_x.device)
    # detached: no gradient, and the op has no autograd formula (see continuous_output)
    flat_mu = mu_x.detach().reshape(-1).contiguous()
    flat_ls = log_sigma_x.detach().reshape(-1).contiguous()
    if name == "reference":
        with torch.no_grad():  # no gradient on any backend
            probs = reference.discretised_probs(flat_mu, flat_ls, n_bins)
    else:
        probs = _discretised_probs_op(flat_mu, flat_ls, n_bins, name)
    return probs.reshape(*mu_x.shape, n_bins)


# -------------------------------------------------------------------------------- discrete loss

def _discrete_inputs(op: str, x_index, logits, logits_arg: str = "logits_out"):
    """x_index [B, ...] integer, logits [B, ..., K] floating -> ([B, D] int64, [B, D, K])."""
    _batched(op, "x_index", x_index, floating=False)
    _checks.require_tensor(op, logits_arg, logits, floating=True)
    if logits.shape[:-1] != x_index.shape:
        expected = ", ".join(map(str, x_index.shape))
        _checks.fail(op, logits_arg, f"must be [*x_index.shape, K] = [{expected}, K], got "
                     f"{list(logits.shape)}")
    _checks.same_device(op, "x_index", x_index, **{logits_arg: logits})
    n_classes = logits.shape[-1]
    if n_classes < 2:
        _checks.fail(op, logits_arg, "must have K >= 2 classes in its last dimension, got "
                     f"{n_classes}")
    x_index = _checks.class_indices(op, "x_index", x_index, n_classes)
    batch = x_index.shape[0]
    return x_index.reshape(batch, -1), logits.reshape(batch, -1, n_classes).contiguous()


@_ops.custom_op("gfn_fast::bfn_discrete_loss_fwd", mutates_args=())
def _discrete_loss_op(x_index: torch.Tensor, logits: torch.Tensor, t: torch.Tensor,
                      beta_1: float, backend: str) -> torch.Tensor:
    return _impl(backend).discrete_loss_forward(x_index, logits, t, beta_1)


@_discrete_loss_op.register_fake
def _(x_index, logits, t, beta_1, backend):
    return t.new_empty(logits.shape[0])


@_ops.custom_op("gfn_fast::bfn_discrete_loss_bwd", mutates_args=())
def _discrete_loss_bwd_op(grad: torch.Tensor, x_index: torch.Tensor, logits: torch.Tensor,
                          t: torch.Tensor, beta_1: float, backend: str) -> torch.Tensor:
    return _impl(backend).discrete_loss_backward(grad.contiguous(), x_index, logits, t, beta_1)


@_discrete_loss_bwd_op.register_fake
def _(grad, x_index, logits, t, beta_1, backend):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _discrete_loss_setup(ctx, inputs, output):
    ctx.save_for_backward(*_ops.saveable(*inputs[:3]))
    ctx.config = inputs[3:]


def _discrete_loss_backward(ctx, grad):
    x_index, logits, t = ctx.saved_tensors
    grad_logits = _discrete_loss_bwd_op(grad.to(t.dtype), x_index, logits, t, *ctx.config)
    return None, grad_logits, None, None, None


_discrete_loss_op.register_autograd(_discrete_loss_backward, setup_context=_discrete_loss_setup)


def discrete_loss(x_index: torch.Tensor, logits_out: torch.Tensor, t, beta_1: float,
                  n_steps: int | None = None, *, generator: torch.Generator | None = None,
                  seed: int | None = None, offset: int | None = None,
                  backend: str | None = None) -> torch.Tensor:
    """Per-sample BFN loss of discrete data with K classes, fused from the network logits.

    Continuous time (n_steps=None): L = K beta_1 t ||e_x - softmax(logits_out)||^2 summed over
    dimensions and classes. With n_steps = n (t = (i-1)/n, alpha_i = beta_1 (2i-1)/n^2): a
    one-sample estimate of L_n = n E_y[ln p_S(y | x) - ln p_R(y)] with the K-component mixture
    receiver, y ~ N(alpha (K e_x - 1), alpha K I) drawn from counters (generator or seed/offset);
    it reduces to n sum_d [y_x - logsumexp_k(ln p_O(k) + y_k)], never forming [.., K, K].

    x_index: [B, ...] integer in [0, K); logits_out: [B, ..., K]; t: float, 0-dim or [B].
    Returns [B] (float32, float64 for float64 logits), differentiable w.r.t. logits_out.
    """
    op = "discrete_loss"
    beta_1 = _checks.positive_float(op, "beta_1", beta_1)
    steps = _n_steps(op, n_steps)
    x_index, flat_logits = _discrete_inputs(op, x_index, logits_out)
    dtype = reference.compute_dtype(logits_out)
    t = _checks.per_sample(op, "t", t, x_index.shape[0], logits_out, dtype, low=0.0, high=1.0)
    if steps:
        return _discrete_nstep_loss(op, x_index, flat_logits, t, beta_1, steps, generator, seed,
                                    offset, backend)
    name = _backends.resolve(op, backend, logits_out.device)
    if name == "reference":
        return reference.discrete_loss(x_index, flat_logits, t.detach(), beta_1)
    return _discrete_loss_op(x_index, flat_logits, t, beta_1, name)


@_ops.custom_op("gfn_fast::bfn_discrete_nstep_loss_fwd", mutates_args=())
def _discrete_nstep_op(x_index: torch.Tensor, logits: torch.Tensor, t: torch.Tensor,
                       beta_1: float, n_steps: int, seed: int, offset: int, backend: str
                       ) -> torch.Tensor:
    return _impl(backend).discrete_nstep_loss_forward(x_index, logits, t, beta_1, n_steps,
                                                      seed, offset)


@_discrete_nstep_op.register_fake
def _(x_index, logits, t, beta_1, n_steps, seed, offset, backend):
    return t.new_empty(logits.shape[0])


@_ops.custom_op("gfn_fast::bfn_discrete_nstep_loss_bwd", mutates_args=())
def _discrete_nstep_bwd_op(grad: torch.Tensor, x_index: torch.Tensor, logits: torch.Tensor,
                           t: torch.Tensor, beta_1: float, n_steps: int, seed: int, offset: int,
                           backend: str) -> torch.Tensor:
    return _impl(backend).discrete_nstep_loss_backward(grad.contiguous(), x_index, logits, t,
                                                       beta_1, n_steps, seed, offset)


@_discrete_nstep_bwd_op.register_fake
def _(grad, x_index, logits, t, beta_1, n_steps, seed, offset, backend):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _discrete_nstep_setup(ctx, inputs, output):
    ctx.save_for_backward(*_ops.saveable(*inputs[:3]))
    ctx.config = inputs[3:]


def _discrete_nstep_backward(ctx, grad):
    x_index, logits, t = ctx.saved_tensors
    grad_logits = _discrete_nstep_bwd_op(grad.to(t.dtype), x_index, logits, t, *ctx.config)
    return (None, grad_logits) + (None,) * 6


_discrete_nstep_op.register_autograd(_discrete_nstep_backward,
                                     setup_context=_discrete_nstep_setup)


def _discrete_nstep_loss(op, x_index, logits, t, beta_1, n_steps, generator, seed, offset,
                         backend):
    """The n-step loss; the backward regenerates the sender noise from (seed, offset)."""
    seed, offset = _rng.seed_offset(op, logits.device, generator, seed, offset)
    name = _backends.resolve(op, backend, logits.device)
    if name == "reference":
        eps = reference.philox_normals(seed, offset, logits.shape, logits.device)
        return reference.discrete_nstep_loss(x_index, logits, t.detach(), beta_1, n_steps, eps)
    return _discrete_nstep_op(x_index, logits, t, beta_1, n_steps, _signed(seed),
                              _signed(offset), name)


# ------------------------------------------------------------------------------ discrete update

@_ops.custom_op("gfn_fast::bfn_discrete_update", mutates_args=())
def _discrete_update_op(log_theta: torch.Tensor, y: torch.Tensor, backend: str) -> torch.Tensor:
    return _impl(backend).discrete_update(log_theta, y)


@_discrete_update_op.register_fake
def _(log_theta, y, backend):
    return torch.empty_like(log_theta, memory_format=torch.contiguous_format)


def discrete_update(log_theta: torch.Tensor, y: torch.Tensor, *, backend: str | None = None
                    ) -> torch.Tensor:
    """Bayesian update of categorical beliefs in log space:
    log theta' = log theta + y - logsumexp_k(log theta + y) (theta' proportional to e^y theta,
    never formed in linear space). log_theta, y: [..., K]. Returns log theta' like log_theta,
    with no gradient."""
    op = "discrete_update"
    _checks.require_tensor(op, "log_theta", log_theta, floating=True)
    _checks.require_tensor(op, "y", y, floating=True)
    _checks.same_shape(op, "log_theta", log_theta, y=y)
    _checks.same_device(op, "log_theta", log_theta, y=y)
    if log_theta.dim() < 1 or log_theta.shape[-1] < 1:
        _checks.fail(op, "log_theta", f"must be [..., K] with K >= 1, got {list(log_theta.shape)}")
    n_classes = log_theta.shape[-1]
    # detached: no gradient, and the op has no autograd formula (see continuous_output)
    flat_theta = log_theta.detach().reshape(-1, 1, n_classes).contiguous()
    flat_y = y.detach().reshape(-1, 1, n_classes).contiguous()
    name = _backends.resolve(op, backend, log_theta.device)
    if name == "reference":
        with torch.no_grad():  # no gradient on any backend
            out = reference.discrete_update(flat_theta, flat_y).to(log_theta.dtype)
    else:
        out = _discrete_update_op(flat_theta, flat_y, name)
    return _shaped(out, log_theta.shape)


# ------------------------------------------------------------------------------------ flows

@_ops.custom_op("gfn_fast::bfn_continuous_flow", mutates_args=())
def _continuous_flow_op(x: torch.Tensor, t: torch.Tensor, sigma_1: float, seed: int, offset: int,
                        backend: str) -> torch.Tensor:
    return _impl(backend).continuous_flow(x, t, sigma_1, seed, offset)


@_continuous_flow_op.register_fake
def _(x, t, sigma_1, seed, offset, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def continuous_flow(x: torch.Tensor, t, sigma_1: float, *,
                    generator: torch.Generator | None = None, seed: int | None = None,
                    offset: int | None = None, backend: str | None = None) -> torch.Tensor:
    """Bayesian flow sample of continuous data: mu = gamma x + sqrt(gamma (1 - gamma)) eps.

    x: [B, ...]; t: float, 0-dim or [B]. eps ~ N(0, I) comes from Philox counters: pass a
    torch.Generator (default: the device's default generator, advanced per call) or an explicit
    seed (and offset) for the same draws on every backend. Returns mu like x (no gradient).
    """
    op = "continuous_flow"
    x = _batched(op, "x", x)
    sigma_1 = _checks.open_unit(op, "sigma_1", sigma_1)
    dtype = reference.compute_dtype(x)
    t = _checks.per_sample(op, "t", t, x.shape[0], x, dtype, low=0.0, high=1.0)
    seed, offset = _rng.seed_offset(op, x.device, generator, seed, offset)
    name = _backends.resolve(op, backend, x.device)
    flat = _flat(x.detach())
    if name == "reference":
        eps = reference.philox_normals(seed, offset, flat.shape, x.device)
        return reference.continuous_flow(flat, t.detach(), sigma_1, eps).reshape(x.shape)
    # t detached: the op has no autograd formula (see continuous_output)
    return _shaped(_continuous_flow_op(flat, t.detach(), sigma_1, _signed(seed), _signed(offset),
                                       name), x.shape)


@_ops.custom_op("gfn_fast::bfn_discrete_flow", mutates_args=())
def _discrete_flow_op(x_index: torch.Tensor, t: torch.Tensor, beta_1: float, n_classes: int,
                      seed: int, offset: int, log: bool, backend: str) -> torch.Tensor:
    return _impl(backend).discrete_flow(x_index, t, beta_1, n_classes, seed, offset, log)


@_discrete_flow_op.register_fake
def _(x_index, t, beta_1, n_classes, seed, offset, log, backend):
    return t.new_empty((*x_index.shape, n_classes))


def discrete_flow(x_index: torch.Tensor, t, beta_1: float, n_classes: int, *, log: bool = False,
                  dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None,
                  seed: int | None = None, offset: int | None = None,
                  backend: str | None = None) -> torch.Tensor:
    """Bayesian flow sample of discrete data: theta = softmax(y),
    y ~ N(beta(t) (K e_x - 1), beta(t) K I), beta(t) = beta_1 t^2.

    x_index: [B, ...] integer in [0, K); t: float, 0-dim or [B]. Returns theta (or log theta
    when `log`, exact where theta underflows) [B, ..., K] in `dtype` (float32 or float64), with
    no gradient. Randomness as in `continuous_flow`.
    """
    op = "discrete_flow"
    beta_1 = _checks.positive_float(op, "beta_1", beta_1)
    n_classes = _checks.positive_int(op, "n_classes", n_classes, minimum=2)
    if dtype not in (torch.float32, torch.float64):
        _checks.fail(op, "dtype", f"must be torch.float32 or torch.float64, got {dtype}",
                     TypeError)
    x_index = _batched(op, "x_index", x_index, floating=False)
    shape = x_index.shape
    x_index = _checks.class_indices(op, "x_index", x_index, n_classes).reshape(shape[0], -1)
    t = _checks.per_sample(op, "t", t, shape[0], x_index, dtype, low=0.0, high=1.0)
    seed, offset = _rng.seed_offset(op, x_index.device, generator, seed, offset)
    name = _backends.resolve(op, backend, x_index.device)
    if name == "reference":
        eps = reference.philox_normals(seed, offset, (*x_index.shape, n_classes),
                                       x_index.device)
        out = reference.discrete_flow(x_index, t.detach(), beta_1, n_classes, eps.to(dtype),
                                      log)
    else:
        out = _discrete_flow_op(x_index, t.detach(), beta_1, n_classes, _signed(seed),
                                _signed(offset), bool(log), name)
    return out.reshape(*shape, n_classes)


# ------------------------------------------------------------------------- generation steps

@_ops.custom_op("gfn_fast::bfn_continuous_step", mutates_args=("mu",))
def _continuous_step_op(mu: torch.Tensor, rho: torch.Tensor, eps_hat: torch.Tensor, a: float,
                        c: float, alpha: float, x_min: float, x_max: float, clamp: bool,
                        seed: int, offset: int, backend: str) -> None:
    _impl(backend).continuous_step(mu, rho, eps_hat, a, c, alpha, x_min, x_max, clamp, seed,
                                   offset)


@_continuous_step_op.register_fake
def _(mu, rho, eps_hat, a, c, alpha, x_min, x_max, clamp, seed, offset, backend):
    return None


@_ops.custom_op("gfn_fast::bfn_discretised_step", mutates_args=("mu", "draw"))
def _discretised_step_op(mu: torch.Tensor, rho: torch.Tensor, mu_x: torch.Tensor,
                         log_sigma_x: torch.Tensor, n_bins: int, alpha: float, seed: int,
                         offset: int, update: bool, draw: torch.Tensor, backend: str) -> None:
    _impl(backend).discretised_step(mu, rho, mu_x, log_sigma_x, n_bins, alpha, seed, offset,
                                    update, draw)


@_discretised_step_op.register_fake
def _(mu, rho, mu_x, log_sigma_x, n_bins, alpha, seed, offset, update, draw, backend):
    return None


@_ops.custom_op("gfn_fast::bfn_discrete_step", mutates_args=("log_theta", "draw"))
def _discrete_step_op(log_theta: torch.Tensor, logits: torch.Tensor, alpha: float, seed: int,
                      offset: int, update: bool, draw: torch.Tensor, backend: str) -> None:
    _impl(backend).discrete_step(log_theta, logits, alpha, seed, offset, update, draw)


@_discrete_step_op.register_fake
def _(log_theta, logits, alpha, seed, offset, update, draw, backend):
    return None


def _state(op: str, arg: str, tensor: torch.Tensor, shape=None) -> torch.Tensor:
    """A contiguous floating state tensor updated in place."""
    _checks.require_tensor(op, arg, tensor, floating=True)
    if not tensor.is_contiguous():
        _checks.fail(op, arg, "must be contiguous (it is updated in place)")
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        _checks.fail(op, arg, f"must have shape {list(shape)}, got {list(tensor.shape)}")
    _checks.not_tracked_in_place(op, arg, tensor)
    return tensor


def _step_rho(op: str, rho: torch.Tensor, batch: int, like: torch.Tensor,
              check_values: bool) -> torch.Tensor:
    """The precisions of a generation step: a contiguous [B] tensor, > 0 when value checks are
    on and `check_values` (a host sync on a GPU; generate, which makes rho itself, skips it)."""
    _checks.require_tensor(op, "rho", rho, floating=True)
    _checks.same_device(op, "mu", like, rho=rho)
    if rho.shape != (batch,) or not rho.is_contiguous():
        _checks.fail(op, "rho", f"must be a contiguous [B] = [{batch}] tensor, got "
                     f"{list(rho.shape)}")
    _checks.not_tracked_in_place(op, "rho", rho)
    if check_values and batch > 0 and _checks.value_checks_enabled() and \
            not _checks.value_range(rho)[0] > 0:
        _checks.fail(op, "rho", "must be > 0 (precisions; a NaN fails too)")
    return rho


def continuous_step(mu: torch.Tensor, rho: torch.Tensor, eps_hat: torch.Tensor, t: float,
                    alpha: float, sigma_1: float, *, t_min: float = 1e-6,
                    x_range: tuple[float, float] | None = None,
                    generator: torch.Generator | None = None, seed: int | None = None,
                    offset: int | None = None, backend: str | None = None) -> None:
    """One generation step after the network, in place: x_hat from eps_hat (as
    `continuous_output` at time t), sender sample y = x_hat + eps / sqrt(alpha), Bayesian update
    of mu [B, ...] (in place) and rho [B] (in place, rho += alpha; rho must be > 0, checked
    with the value checks). No gradient: with grad mode on, mu and rho must not require grad."""
    _continuous_step(mu, rho, eps_hat, t, alpha, sigma_1, t_min, x_range, generator, seed,
                     offset, backend, True)


def _continuous_step(mu, rho, eps_hat, t, alpha, sigma_1, t_min, x_range, generator, seed,
                     offset, backend, check_rho: bool) -> None:
    op = "continuous_step"
    mu = _state(op, "mu", mu)
    _continuous_inputs(op, "mu", {"mu": mu, "eps_hat": eps_hat})
    rho = _step_rho(op, rho, mu.shape[0], mu, check_rho)
    t = _checks.parse_float(op, "t", t)
    if not 0.0 <= t <= 1.0:
        _checks.fail(op, "t", f"must lie in [0, 1], got {t}")
    alpha = _checks.positive_float(op, "alpha", alpha)
    sigma_1 = _checks.open_unit(op, "sigma_1", sigma_1)
    t_min = _t_min(op, t_min)
    x_min, x_max, clamp = _x_range(op, x_range)
    if t < t_min:
        a = c = 0.0
    else:
        g = -math.expm1(2.0 * t * math.log(sigma_1))
        a, c = 1.0 / g, math.sqrt(math.exp(2.0 * t * math.log(sigma_1)) / g)
    seed, offset = _rng.seed_offset(op, mu.device, generator, seed, offset)
    name = _backends.resolve(op, backend, mu.device)
    flat_mu = mu.view(mu.shape[0], -1)
    if name == "reference":
        eps = reference.philox_normals(seed, offset, flat_mu.shape, mu.device)
        t_vec = torch.full((mu.shape[0],), t, dtype=rho.dtype, device=mu.device)
        new_mu, _ = reference.continuous_step(flat_mu, rho, _flat(eps_hat), t_vec, alpha, sigma_1,
                                              t_min, (x_min, x_max) if clamp else None, eps)
        flat_mu.copy_(new_mu)
    else:
        _continuous_step_op(flat_mu, rho, _flat(eps_hat), a, c, alpha, x_min, x_max, clamp,
                            _signed(seed), _signed(offset), name)
    rho.add_(alpha)


def discretised_step(mu: torch.Tensor | None, rho: torch.Tensor | None, mu_x: torch.Tensor,
                     log_sigma_x: torch.Tensor, alpha: float, n_bins: int, *,
                     draw: torch.Tensor | None = None, generator: torch.Generator | None = None,
                     seed: int | None = None, offset: int | None = None,
                     backend: str | None = None) -> torch.Tensor:
    """One generation step of discretised data after the network: draw a bin k ~ p_O (from the
    network's mu_x, log_sigma_x; returned as its centre k_c), sender sample
    y = k_c + eps / sqrt(alpha), Bayesian update of mu [B, ...] and rho [B] in place. With
    mu = rho = None it only draws (the final sample). Returns the drawn centres (into `draw`
    when given). rho must be > 0 (checked with the value checks). No gradient: with grad mode
    on, mu, rho and draw must not require grad."""
    return _discretised_step(mu, rho, mu_x, log_sigma_x, alpha, n_bins, draw, generator, seed,
                             offset, backend, True)


def _discretised_step(mu, rho, mu_x, log_sigma_x, alpha, n_bins, draw, generator, seed, offset,
                      backend, check_rho: bool) -> torch.Tensor:
    op = "discretised_step"
    _continuous_inputs(op, "mu_x", {"mu_x": mu_x, "log_sigma_x": log_sigma_x})
    n_bins = _checks.positive_int(op, "n_bins", n_bins, minimum=2)
    alpha = _checks.positive_float(op, "alpha", alpha)
    update = mu is not None
    batch = mu_x.shape[0]
    if update:
        mu = _state(op, "mu", mu, mu_x.shape)
        _checks.same_device(op, "mu_x", mu_x, mu=mu)
        rho = _step_rho(op, rho, batch, mu, check_rho)
    if draw is None:
        draw = torch.empty(mu_x.shape, dtype=mu_x.dtype, device=mu_x.device)
    draw = _state(op, "draw", draw, mu_x.shape)
    _checks.same_device(op, "mu_x", mu_x, draw=draw)
    seed, offset = _rng.seed_offset(op, mu_x.device, generator, seed, offset)
    name = _backends.resolve(op, backend, mu_x.device)
    flat_draw = draw.view(batch, -1)
    if name == "reference":
        first, second = reference.philox_normal_pairs(seed, offset, flat_draw.shape,
                                                      mu_x.device)
        dummy = torch.zeros(batch, dtype=reference.compute_dtype(mu_x), device=mu_x.device)
        mu_in = mu.view(batch, -1) if update else torch.zeros_like(flat_draw)
        new_mu, _ = reference.discretised_step(mu_in, rho if update else dummy, _flat(mu_x),
                                               _flat(log_sigma_x), alpha, n_bins, first, second)
        flat_draw.copy_(reference.discretised_draw(_flat(mu_x), _flat(log_sigma_x), n_bins,
                                                   first))
        if update:
            mu.view(batch, -1).copy_(new_mu)
    else:
        mu_arg = mu.view(batch, -1) if update else flat_draw.new_empty((batch, 0))
        rho_arg = rho if update else torch.ones(batch, dtype=reference.compute_dtype(mu_x),
                                                device=mu_x.device)
        _discretised_step_op(mu_arg, rho_arg, _flat(mu_x), _flat(log_sigma_x), n_bins, alpha,
                             _signed(seed), _signed(offset), update, flat_draw, name)
    if update:
        rho.add_(alpha)
    return draw


def discrete_step(log_theta: torch.Tensor | None, logits: torch.Tensor, alpha: float, *,
                  draw: torch.Tensor | None = None, generator: torch.Generator | None = None,
                  seed: int | None = None, offset: int | None = None,
                  backend: str | None = None) -> torch.Tensor:
    """One generation step of discrete data after the network: draw k ~ p_O = softmax(logits)
    per dimension, sender sample y ~ N(alpha (K e_k - 1), alpha K I), and the log-space Bayesian
    update of log_theta [B, ..., K] in place. With log_theta = None it only draws (the final
    sample). Returns the drawn classes [B, ...] int64 (into `draw` when given). The draw uses one
    float32 uniform (23 bits) per dimension by inverse CDF. No gradient: with grad mode on,
    log_theta must not require grad."""
    op = "discrete_step"
    _checks.require_tensor(op, "logits", logits, floating=True)
    if logits.dim() < 2 or logits.shape[-1] < 2 or logits.shape[0] < 1:
        _checks.fail(op, "logits", f"must be [B, ..., K] with B >= 1 and K >= 2, got "
                     f"{list(logits.shape)}")
    alpha = _checks.positive_float(op, "alpha", alpha)
    update = log_theta is not None
    if update:
        log_theta = _state(op, "log_theta", log_theta, logits.shape)
        _checks.same_device(op, "logits", logits, log_theta=log_theta)
    batch, n_classes = logits.shape[0], logits.shape[-1]
    if draw is None:
        draw = torch.empty(logits.shape[:-1], dtype=torch.int64, device=logits.device)
    _checks.require_tensor(op, "draw", draw, integer=True)
    if draw.dtype != torch.int64 or tuple(draw.shape) != tuple(logits.shape[:-1]) \
            or not draw.is_contiguous():
        _checks.fail(op, "draw", f"must be a contiguous int64 tensor of shape "
                     f"{list(logits.shape[:-1])}")
    _checks.same_device(op, "logits", logits, draw=draw)
    _checks.not_tracked_in_place(op, "draw", draw)
    seed, offset = _rng.seed_offset(op, logits.device, generator, seed, offset)
    name = _backends.resolve(op, backend, logits.device)
    flat_logits = logits.reshape(batch, -1, n_classes).contiguous()
    flat_draw = draw.view(batch, -1)
    if name == "reference":
        eps = reference.philox_normals(seed, offset, flat_logits.shape, logits.device)
        uniform = reference.philox_uniforms(seed, offset, flat_logits.shape[:2], logits.device)
        theta = log_theta.view(flat_logits.shape) if update else flat_logits
        new_theta, k = reference.discrete_step(theta, flat_logits, alpha, uniform, eps)
        flat_draw.copy_(k)
        if update:
            theta.copy_(new_theta)
    else:
        theta = log_theta.view(flat_logits.shape) if update else flat_logits
        _discrete_step_op(theta, flat_logits, alpha, _signed(seed), _signed(offset), update,
                          flat_draw, name)
    return draw


# ------------------------------------------------------------------------------ generation

@torch.no_grad()
def generate(model, shape, n_steps: int, *, kind: str = "continuous", sigma_1: float = 1e-3,
             beta_1: float = 0.5625, n_bins: int = 256, n_classes: int | None = None,
             t_min: float = 1e-6, x_range: tuple[float, float] | None = None,
             device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
             generator: torch.Generator | None = None, seed: int | None = None,
             offset: int | None = None, backend: str | None = None) -> torch.Tensor:
    """Sample from a BFN with n_steps steps (spec: "Generation").

    shape: data shape [B, ...] (discrete: [B, ...] positions; the K classes are added).
    model(theta, t) is called with t a [B] tensor and theta
      - kind="continuous": mu [B, ...]; returns eps_hat [B, ...];
      - kind="discretised": mu [B, ...]; returns (mu_x, log_sigma_x), each [B, ...];
      - kind="discrete": the probabilities theta [B, ..., K]; returns logits [B, ..., K].
    Starts from the prior (mu = 0, rho = 1 / theta uniform); step i = 1..n runs the network at
    t = (i-1)/n then one fused step kernel with alpha_i; a final network call at t = 1 gives the
    sample (continuous: x_hat; discretised: bin centres drawn from p_O; discrete: classes drawn
    from p_O, int64). Buffers are allocated once; steps read no device value on the host.
    Step i draws its noise at (seed, offset + 4 (i - 1)) of one (seed, offset) taken at the
    start, and the final draw at (seed, offset + 4 n): a generator is advanced past all n + 1,
    so the next call draws fresh noise. Runs under torch.no_grad() (sampling is not trained
    through: no graph is kept across steps, whatever the model's parameters).
    """
    op = "generate"
    n_steps = _checks.positive_int(op, "n_steps", n_steps)
    if kind not in ("continuous", "discretised", "discrete"):
        _checks.fail(op, "kind", f"must be 'continuous', 'discretised' or 'discrete', got {kind!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or shape[0] < 1:
        _checks.fail(op, "shape", f"must be [B, ...] with B >= 1, got {list(shape)}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    seed, offset = _rng.seed_offset(op, device, generator, seed, offset, increment=n_steps + 1)
    batch = shape[0]
    t_vec = torch.empty(batch, dtype=dtype, device=device)
    if kind == "discrete":
        beta_1 = _checks.positive_float(op, "beta_1", beta_1)
        if n_classes is None:
            _checks.fail(op, "n_classes", "is required for kind='discrete'", TypeError)
        n_classes = _checks.positive_int(op, "n_classes", n_classes, minimum=2)
        log_theta = torch.full((*shape, n_classes), -math.log(n_classes), dtype=dtype,
                               device=device)
        theta = torch.empty_like(log_theta)
        draw = torch.empty(shape, dtype=torch.int64, device=device)
        for i in range(1, n_steps + 1):
            t_vec.fill_((i - 1) / n_steps)
            torch.exp(log_theta, out=theta)
            alpha = beta_1 * (2 * i - 1) / n_steps ** 2
            discrete_step(log_theta, model(theta, t_vec), alpha, draw=draw, seed=seed,
                          offset=offset + 4 * (i - 1), backend=backend)
        t_vec.fill_(1.0)
        torch.exp(log_theta, out=theta)
        return discrete_step(None, model(theta, t_vec), 1.0, draw=draw, seed=seed,
                             offset=offset + 4 * n_steps, backend=backend)
    sigma_1 = _checks.open_unit(op, "sigma_1", sigma_1)
    mu = torch.zeros(shape, dtype=dtype, device=device)
    rho = torch.ones(batch, dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                     device=device)
    draw = torch.empty(shape, dtype=dtype, device=device) if kind == "discretised" else None
    log_s = math.log(sigma_1)
    for i in range(1, n_steps + 1):
        t = (i - 1) / n_steps
        t_vec.fill_(t)
        alpha = math.exp(-2.0 * i * log_s / n_steps) * -math.expm1(2.0 * log_s / n_steps)
        if kind == "continuous":
            # rho is made here, so > 0: no value check (a host sync per step on a GPU)
            _continuous_step(mu, rho, model(mu, t_vec), t, alpha, sigma_1, t_min, x_range,
                             None, seed, offset + 4 * (i - 1), backend, False)
        else:
            mu_x, log_sigma_x = model(mu, t_vec)
            _discretised_step(mu, rho, mu_x, log_sigma_x, alpha, n_bins, draw, None, seed,
                              offset + 4 * (i - 1), backend, False)
    t_vec.fill_(1.0)
    if kind == "continuous":
        return continuous_output(mu, model(mu, t_vec), 1.0, sigma_1, t_min=t_min,
                                 x_range=x_range, backend=backend)
    mu_x, log_sigma_x = model(mu, t_vec)
    return discretised_step(None, None, mu_x, log_sigma_x, 1.0, n_bins, draw=draw, seed=seed,
                            offset=offset + 4 * n_steps, backend=backend)


__all__ = [
    "beta",
    "continuous_flow",
    "continuous_step",
    "discrete_flow",
    "discrete_step",
    "discretised_step",
    "generate",
    "continuous_alpha",
    "continuous_loss",
    "continuous_output",
    "continuous_update",
    "discrete_alpha",
    "discrete_loss",
    "discrete_update",
    "discretised_loss",
    "discretised_probs",
    "gamma",
]
