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

import torch

from gfn_fast import _backends, _checks
from gfn_fast.reference import bfn as reference

_NO_RANGE = (0.0, 0.0)


def _impl(backend: str):
    return _backends.module(backend, "bfn")


# ------------------------------------------------------------------------------------- schedules

def gamma(t, sigma_1: float):
    """gamma(t) = 1 - sigma_1^(2t) (computed as -expm1(2 t ln sigma_1))."""
    sigma_1 = _checks.open_unit("gamma", "sigma_1", sigma_1)
    return reference.gamma(torch.as_tensor(t, dtype=torch.float64) if not torch.is_tensor(t)
                           else t, sigma_1)


def continuous_alpha(i, n_steps: int, sigma_1: float):
    """alpha_i = sigma_1^(-2i/n) (1 - sigma_1^(2/n)), the accuracy of step i in 1..n."""
    sigma_1 = _checks.open_unit("continuous_alpha", "sigma_1", sigma_1)
    n_steps = _checks.positive_int("continuous_alpha", "n_steps", n_steps)
    return reference.continuous_alpha(torch.as_tensor(i, dtype=torch.float64)
                                      if not torch.is_tensor(i) else i, n_steps, sigma_1)


def beta(t, beta_1: float):
    """beta(t) = beta_1 t^2."""
    beta_1 = _checks.positive_float("beta", "beta_1", beta_1)
    return reference.beta(torch.as_tensor(t, dtype=torch.float64) if not torch.is_tensor(t)
                          else t, beta_1)


def discrete_alpha(i, n_steps: int, beta_1: float):
    """alpha_i = beta_1 (2i - 1) / n^2, the accuracy of step i in 1..n."""
    beta_1 = _checks.positive_float("discrete_alpha", "beta_1", beta_1)
    n_steps = _checks.positive_int("discrete_alpha", "n_steps", n_steps)
    return reference.discrete_alpha(torch.as_tensor(i, dtype=torch.float64)
                                    if not torch.is_tensor(i) else i, n_steps, beta_1)


# ---------------------------------------------------------------------------- shared validation

def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> contiguous [B, D]."""
    return tensor.reshape(tensor.shape[0], -1).contiguous()


def _batched(op: str, arg: str, tensor, *, floating: bool = True) -> torch.Tensor:
    _checks.require_tensor(op, arg, tensor, floating=floating, integer=not floating)
    if tensor.dim() < 1 or tensor.shape[0] < 1:
        _checks.fail(op, arg, f"must be [B, ...] with B >= 1, got {list(tensor.shape)}")
    return tensor


def _continuous_inputs(op: str, first: str, tensors: dict) -> list[torch.Tensor]:
    """Same-shape, same-device floating [B, ...] tensors."""
    lead = _batched(op, first, tensors[first])
    for name, value in tensors.items():
        if name != first:
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

@torch.library.custom_op("gfn_fast::bfn_continuous_output", mutates_args=())
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
    mu, eps_hat: [B, ...]; t: float, 0-dim or [B]. Returns x_hat like mu (not differentiable
    through the fused backends; use `continuous_loss` for training).
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
        out = reference.continuous_output(_flat(mu), _flat(eps_hat), t, sigma_1, t_min,
                                          (x_min, x_max) if clamp else None)
        return out.to(mu.dtype).reshape(mu.shape)
    out = _continuous_output_op(_flat(mu), _flat(eps_hat), t, sigma_1, t_min, x_min, x_max,
                                clamp, name)
    return out.reshape(mu.shape)


# ------------------------------------------------------------------------------ continuous loss

@torch.library.custom_op("gfn_fast::bfn_continuous_loss_fwd", mutates_args=())
def _continuous_loss_op(x: torch.Tensor, mu: torch.Tensor, eps_hat: torch.Tensor,
                        t: torch.Tensor, sigma_1: float, n_steps: int, t_min: float,
                        x_min: float, x_max: float, clamp: bool, backend: str) -> torch.Tensor:
    return _impl(backend).continuous_loss_forward(x, mu, eps_hat, t, sigma_1, n_steps, t_min,
                                                  x_min, x_max, clamp)


@_continuous_loss_op.register_fake
def _(x, mu, eps_hat, t, sigma_1, n_steps, t_min, x_min, x_max, clamp, backend):
    return t.new_empty(x.shape[0])


@torch.library.custom_op("gfn_fast::bfn_continuous_loss_bwd", mutates_args=())
def _continuous_loss_bwd_op(grad: torch.Tensor, x: torch.Tensor, mu: torch.Tensor,
                            eps_hat: torch.Tensor, t: torch.Tensor, sigma_1: float, n_steps: int,
                            t_min: float, x_min: float, x_max: float, clamp: bool, backend: str
                            ) -> torch.Tensor:
    return _impl(backend).continuous_loss_backward(grad.contiguous(), x, mu, eps_hat, t,
                                                   sigma_1, n_steps, t_min, x_min, x_max, clamp)


@_continuous_loss_bwd_op.register_fake
def _(grad, x, mu, eps_hat, t, sigma_1, n_steps, t_min, x_min, x_max, clamp, backend):
    return torch.empty_like(eps_hat, memory_format=torch.contiguous_format)


def _continuous_loss_setup(ctx, inputs, output):
    x, mu, eps_hat, t = inputs[:4]
    ctx.save_for_backward(x, mu, eps_hat, t)
    ctx.config = inputs[4:]


def _continuous_loss_backward(ctx, grad):
    x, mu, eps_hat, t = ctx.saved_tensors
    grad_eps = _continuous_loss_bwd_op(grad.to(t.dtype), x, mu, eps_hat, t, *ctx.config)
    return (None, None, grad_eps) + (None,) * 8


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
        return reference.continuous_loss(_flat(x), _flat(mu.detach()), _flat(eps_hat), t,
                                         sigma_1, steps, t_min, (x_min, x_max) if clamp else None)
    return _continuous_loss_op(_flat(x.detach()), _flat(mu.detach()), _flat(eps_hat), t,
                               sigma_1, steps, t_min, x_min, x_max, clamp, name)


# ---------------------------------------------------------------------------- continuous update

@torch.library.custom_op("gfn_fast::bfn_continuous_update", mutates_args=())
def _continuous_update_op(mu: torch.Tensor, rho: torch.Tensor, y: torch.Tensor,
                          alpha: torch.Tensor, backend: str) -> torch.Tensor:
    return _impl(backend).continuous_update(mu, rho, y, alpha)


@_continuous_update_op.register_fake
def _(mu, rho, y, alpha, backend):
    return torch.empty_like(mu, memory_format=torch.contiguous_format)


def _full_precision(rho, mu: torch.Tensor) -> bool:
    """Whether rho holds one precision per element (mu's shape) rather than one per sample."""
    return torch.is_tensor(rho) and rho.shape == mu.shape and rho.numel() != mu.shape[0]


def _precision(op: str, rho, mu: torch.Tensor, dtype) -> torch.Tensor:
    """rho as a float, [B] / [B, 1, ...] (per sample) or mu's shape -> [B, D] (maybe expanded)."""
    batch = mu.shape[0]
    dims = mu[0].numel()
    if _full_precision(rho, mu):
        _checks.require_tensor(op, "rho", rho, floating=True)
        _checks.same_device(op, "mu", mu, rho=rho)
        if _checks.value_checks_enabled() and not bool((rho > 0).all()):
            _checks.fail(op, "rho", "must be > 0")
        return _flat(rho.to(dtype))
    per = _checks.per_sample(op, "rho", rho, batch, mu, dtype, positive=True)
    return per.reshape(batch, 1).expand(batch, dims)


def continuous_update(mu: torch.Tensor, rho, y: torch.Tensor, alpha, *,
                      backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bayesian update of a Gaussian belief with sender sample y ~ N(x, 1/alpha).

    rho' = rho + alpha; mu' = (rho mu + alpha y) / rho' (computed as mu + alpha/rho' (y - mu)).
    mu, y: [B, ...]; rho: float, [B] or mu's shape; alpha: float > 0, 0-dim or [B].
    Returns (mu' like mu, rho' in the compute dtype with rho's shape ([B] for a scalar)).
    """
    op = "continuous_update"
    mu, y = _continuous_inputs(op, "mu", {"mu": mu, "y": y})
    dtype = reference.compute_dtype(mu, y, rho if torch.is_tensor(rho) else None,
                                    alpha if torch.is_tensor(alpha) else None)
    alpha = _checks.per_sample(op, "alpha", alpha, mu.shape[0], mu, dtype, positive=True)
    full = _full_precision(rho, mu)
    rho_2d = _precision(op, rho, mu, dtype)
    name = _backends.resolve(op, backend, mu.device)
    if name == "reference":
        mu_new, _ = reference.continuous_update(_flat(mu), rho_2d, _flat(y), alpha.reshape(-1, 1))
        mu_new = mu_new.to(mu.dtype)
    else:
        mu_new = _continuous_update_op(_flat(mu), rho_2d, _flat(y), alpha, name)
    if full:
        rho_new = (rho_2d + alpha.reshape(-1, 1)).reshape(mu.shape)
    else:
        rho_new = rho_2d[:, 0] + alpha
    return mu_new.reshape(mu.shape), rho_new


# ----------------------------------------------------------------------------- discretised loss

@torch.library.custom_op("gfn_fast::bfn_discretised_loss_fwd", mutates_args=())
def _discretised_loss_op(x: torch.Tensor, mu_x: torch.Tensor, log_sigma_x: torch.Tensor,
                         t: torch.Tensor, sigma_1: float, n_steps: int, n_bins: int,
                         backend: str) -> torch.Tensor:
    return _impl(backend).discretised_loss_forward(x, mu_x, log_sigma_x, t, sigma_1, n_steps,
                                                   n_bins)


@_discretised_loss_op.register_fake
def _(x, mu_x, log_sigma_x, t, sigma_1, n_steps, n_bins, backend):
    return t.new_empty(x.shape[0])


@torch.library.custom_op("gfn_fast::bfn_discretised_loss_bwd", mutates_args=())
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
    ctx.save_for_backward(*inputs[:4])
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
        return reference.discretised_loss(_flat(x), _flat(mu_x), _flat(log_sigma_x), t, sigma_1,
                                          n_bins, steps)
    return _discretised_loss_op(_flat(x.detach()), _flat(mu_x), _flat(log_sigma_x), t, sigma_1,
                                steps, n_bins, name)


@torch.library.custom_op("gfn_fast::bfn_discretised_probs", mutates_args=())
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
    float64 for float64 inputs), for sampling. Far-tail bins are computed from upper-tail
    probabilities, so they do not cancel to 0."""
    op = "discretised_probs"
    _checks.require_tensor(op, "mu_x", mu_x, floating=True)
    _checks.require_tensor(op, "log_sigma_x", log_sigma_x, floating=True)
    _checks.same_shape(op, "mu_x", mu_x, log_sigma_x=log_sigma_x)
    _checks.same_device(op, "mu_x", mu_x, log_sigma_x=log_sigma_x)
    n_bins = _checks.positive_int(op, "n_bins", n_bins, minimum=2)
    name = _backends.resolve(op, backend, mu_x.device)
    flat_mu, flat_ls = mu_x.reshape(-1).contiguous(), log_sigma_x.reshape(-1).contiguous()
    if name == "reference":
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
        _checks.fail(op, logits_arg, f"must be [*x_index.shape, K] = [{', '.join(map(str, x_index.shape))}"
                     f", K], got {list(logits.shape)}")
    _checks.same_device(op, "x_index", x_index, **{logits_arg: logits})
    n_classes = logits.shape[-1]
    if n_classes < 2:
        _checks.fail(op, logits_arg, f"must have K >= 2 classes in its last dimension, got {n_classes}")
    x_index = _checks.class_indices(op, "x_index", x_index, n_classes)
    batch = x_index.shape[0]
    return x_index.reshape(batch, -1), logits.reshape(batch, -1, n_classes).contiguous()


@torch.library.custom_op("gfn_fast::bfn_discrete_loss_fwd", mutates_args=())
def _discrete_loss_op(x_index: torch.Tensor, logits: torch.Tensor, t: torch.Tensor,
                      beta_1: float, backend: str) -> torch.Tensor:
    return _impl(backend).discrete_loss_forward(x_index, logits, t, beta_1)


@_discrete_loss_op.register_fake
def _(x_index, logits, t, beta_1, backend):
    return t.new_empty(logits.shape[0])


@torch.library.custom_op("gfn_fast::bfn_discrete_loss_bwd", mutates_args=())
def _discrete_loss_bwd_op(grad: torch.Tensor, x_index: torch.Tensor, logits: torch.Tensor,
                          t: torch.Tensor, beta_1: float, backend: str) -> torch.Tensor:
    return _impl(backend).discrete_loss_backward(grad.contiguous(), x_index, logits, t, beta_1)


@_discrete_loss_bwd_op.register_fake
def _(grad, x_index, logits, t, beta_1, backend):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _discrete_loss_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
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
        return reference.discrete_loss(x_index, flat_logits, t, beta_1)
    return _discrete_loss_op(x_index, flat_logits, t, beta_1, name)


def _discrete_nstep_loss(op, x_index, logits, t, beta_1, n_steps, generator, seed, offset,
                         backend):
    raise NotImplementedError(f"gfn_fast.{op}: the n-step loss needs the counter-based RNG")


# ------------------------------------------------------------------------------ discrete update

@torch.library.custom_op("gfn_fast::bfn_discrete_update", mutates_args=())
def _discrete_update_op(log_theta: torch.Tensor, y: torch.Tensor, backend: str) -> torch.Tensor:
    return _impl(backend).discrete_update(log_theta, y)


@_discrete_update_op.register_fake
def _(log_theta, y, backend):
    return torch.empty_like(log_theta, memory_format=torch.contiguous_format)


def discrete_update(log_theta: torch.Tensor, y: torch.Tensor, *, backend: str | None = None
                    ) -> torch.Tensor:
    """Bayesian update of categorical beliefs in log space:
    log theta' = log theta + y - logsumexp_k(log theta + y) (theta' proportional to e^y theta,
    never formed in linear space). log_theta, y: [..., K]. Returns log theta' like log_theta."""
    op = "discrete_update"
    _checks.require_tensor(op, "log_theta", log_theta, floating=True)
    _checks.require_tensor(op, "y", y, floating=True)
    _checks.same_shape(op, "log_theta", log_theta, y=y)
    _checks.same_device(op, "log_theta", log_theta, y=y)
    if log_theta.dim() < 1 or log_theta.shape[-1] < 1:
        _checks.fail(op, "log_theta", f"must be [..., K] with K >= 1, got {list(log_theta.shape)}")
    n_classes = log_theta.shape[-1]
    flat_theta = log_theta.reshape(-1, 1, n_classes).contiguous()
    flat_y = y.reshape(-1, 1, n_classes).contiguous()
    name = _backends.resolve(op, backend, log_theta.device)
    if name == "reference":
        out = reference.discrete_update(flat_theta, flat_y).to(log_theta.dtype)
    else:
        out = _discrete_update_op(flat_theta, flat_y, name)
    return out.reshape(log_theta.shape)


__all__ = [
    "beta",
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
