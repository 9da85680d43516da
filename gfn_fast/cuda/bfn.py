"""CUDA backend of the Bayesian Flow Network ops (kernels in csrc/include/gfn_fast/bfn.cuh).

Data arrays of one call share one element type (promoted here when they differ); per-sample
vectors (t, alpha, rho, upstream gradients) and losses are float32, or float64 for float64 data.
Signatures mirror gfn_fast.cpu.bfn.
"""

import math

import torch

from gfn_fast.cuda._ext import dtype_code, ext, ptr, stream


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _common(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The data tensors in one element type, contiguous."""
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return [tensor.to(dtype).contiguous() for tensor in tensors]


def _weight_scale(sigma_1: float, n_steps: int) -> float:
    log_s = math.log(sigma_1)
    return -log_s if n_steps == 0 else 0.5 * n_steps * math.expm1(-2.0 * log_s / n_steps)


def _call(name: str, data: torch.Tensor, **args) -> None:
    """Launch; tensor arguments become pointers while `args` keeps them alive through the call."""
    values = {key: ptr(value) if value is None or isinstance(value, torch.Tensor) else value
              for key, value in args.items()}
    getattr(ext(), name)(dict(dtype=dtype_code(data), stream=stream(data.device), **values))


def continuous_output(mu, eps_hat, t, sigma_1, t_min, x_min, x_max, clamp):
    mu_c, eps_c = _common(mu, eps_hat)
    out = torch.empty_like(mu_c)
    _call("bfn_continuous_output", mu_c, mu=(mu_c), eps=(eps_c),
          t=(t.to(_acc(mu_c.dtype)).contiguous()), out=(out), batch=mu.shape[0],
          dims=mu.shape[1], log_sigma_1=math.log(sigma_1), t_min=float(t_min),
          x_min=float(x_min), x_max=float(x_max), clamp=bool(clamp))
    return out.to(mu.dtype)


def continuous_loss_forward(x, mu, eps_hat, t, sigma_1, n_steps, t_min, x_min, x_max, clamp,
                            want_unit):
    x_c, mu_c, eps_c = _common(x, mu, eps_hat)
    acc = _acc(x_c.dtype)
    out = torch.empty(x.shape[0], dtype=acc, device=x.device)
    unit = torch.empty(x.shape, dtype=acc, device=x.device) if want_unit else None
    _call("bfn_continuous_loss_forward", x_c, x=(x_c), mu=(mu_c), eps=(eps_c),
          t=(t.to(acc).contiguous()), out=(out), out2=unit, batch=x.shape[0], dims=x.shape[1],
          log_sigma_1=math.log(sigma_1), weight_scale=_weight_scale(sigma_1, n_steps),
          t_min=float(t_min), x_min=float(x_min), x_max=float(x_max), clamp=bool(clamp))
    return out, unit


def continuous_update(mu, rho, y, alpha):
    mu_c, y_c = _common(mu, y)
    acc = _acc(mu_c.dtype)
    rho = rho.to(acc)
    out = torch.empty_like(mu_c)
    _call("bfn_continuous_update", mu_c, mu=(mu_c), eps=(y_c), rho=(rho),
          alpha=(alpha.to(acc).contiguous()), out=(out), batch=mu.shape[0],
          dims=mu.shape[1], stride_rho_b=rho.stride(0), stride_rho_d=rho.stride(1))
    return out.to(mu.dtype)


def discretised_loss_forward(x, mu_x, log_sigma_x, t, sigma_1, n_steps, n_bins):
    x_c, mu_c, ls_c = _common(x, mu_x, log_sigma_x)
    acc = _acc(x_c.dtype)
    out = torch.empty(x.shape[0], dtype=acc, device=x.device)
    _call("bfn_discretised_loss_forward", x_c, x=(x_c), mu=(mu_c), eps=(ls_c),
          t=(t.to(acc).contiguous()), out=(out), batch=x.shape[0], dims=x.shape[1],
          bins=int(n_bins), log_sigma_1=math.log(sigma_1),
          weight_scale=_weight_scale(sigma_1, n_steps))
    return out


def discretised_loss_backward(grad, x, mu_x, log_sigma_x, t, sigma_1, n_steps, n_bins):
    x_c, mu_c, ls_c = _common(x, mu_x, log_sigma_x)
    acc = _acc(x_c.dtype)
    grad_mu = torch.empty_like(mu_c)
    grad_log_sigma = torch.empty_like(mu_c)
    _call("bfn_discretised_loss_backward", x_c, x=(x_c), mu=(mu_c), eps=(ls_c),
          t=(t.to(acc).contiguous()), grad=(grad.to(acc).contiguous()), out=(grad_mu),
          out2=(grad_log_sigma), batch=x.shape[0], dims=x.shape[1], bins=int(n_bins),
          log_sigma_1=math.log(sigma_1), weight_scale=_weight_scale(sigma_1, n_steps))
    return grad_mu.to(mu_x.dtype), grad_log_sigma.to(log_sigma_x.dtype)


def discretised_probs(mu_x, log_sigma_x, n_bins):
    mu_c, ls_c = _common(mu_x, log_sigma_x)
    out = torch.empty((mu_x.shape[0], n_bins), dtype=_acc(mu_c.dtype), device=mu_x.device)
    _call("bfn_discretised_probs", mu_c, mu=(mu_c), eps=(ls_c), out=(out),
          batch=mu_x.shape[0], bins=int(n_bins))
    return out


def discrete_loss_forward(x_index, logits, t, beta_1):
    acc = _acc(logits.dtype)
    batch, dims, n_classes = logits.shape
    out = torch.empty(batch, dtype=acc, device=logits.device)
    _call("bfn_discrete_loss_forward", logits, index=(x_index), logits=(logits),
          t=(t.to(acc).contiguous()), out=(out), batch=batch, dims=dims,
          classes=n_classes, beta_1=float(beta_1))
    return out


def discrete_loss_backward(grad, x_index, logits, t, beta_1):
    acc = _acc(logits.dtype)
    batch, dims, n_classes = logits.shape
    out = torch.empty_like(logits)
    _call("bfn_discrete_loss_backward", logits, index=(x_index), logits=(logits),
          t=(t.to(acc).contiguous()), grad=(grad.to(acc).contiguous()), out=(out),
          batch=batch, dims=dims, classes=n_classes, beta_1=float(beta_1))
    return out


def discrete_update(log_theta, y):
    theta_c, y_c = _common(log_theta, y)
    batch, dims, n_classes = theta_c.shape
    out = torch.empty_like(theta_c)
    _call("bfn_discrete_update", theta_c, logits=(theta_c), eps=(y_c), out=(out),
          batch=batch, dims=dims, classes=n_classes)
    return out.to(log_theta.dtype)


def _key(seed: int, offset: int) -> dict:
    """Seed and offset as unsigned 64-bit values (they may arrive as signed ints)."""
    mask = (1 << 64) - 1
    return dict(seed=seed & mask, offset=offset & mask)


def continuous_flow(x, t, sigma_1, seed, offset):
    out = torch.empty_like(x)
    _call("bfn_continuous_flow", x, x=x, t=t.to(_acc(x.dtype)).contiguous(), out=out,
          batch=x.shape[0], dims=x.shape[1], log_sigma_1=math.log(sigma_1), **_key(seed, offset))
    return out


def discrete_flow(x_index, t, beta_1, n_classes, seed, offset, log):
    batch, dims = x_index.shape
    out = torch.empty((batch, dims, n_classes), dtype=t.dtype, device=t.device)
    _call("bfn_discrete_flow", out, index=x_index, t=t, out=out, batch=batch, dims=dims,
          classes=n_classes, beta_1=float(beta_1), log_output=bool(log), **_key(seed, offset))
    return out


def discrete_nstep_loss_forward(x_index, logits, t, beta_1, n_steps, seed, offset):
    acc = _acc(logits.dtype)
    batch, dims, n_classes = logits.shape
    out = torch.empty(batch, dtype=acc, device=logits.device)
    _call("bfn_discrete_nstep_loss_forward", logits, index=x_index, logits=logits,
          t=t.to(acc).contiguous(), out=out, batch=batch, dims=dims, classes=n_classes,
          beta_1=float(beta_1), n_steps=int(n_steps), **_key(seed, offset))
    return out


def discrete_nstep_loss_backward(grad, x_index, logits, t, beta_1, n_steps, seed, offset):
    acc = _acc(logits.dtype)
    batch, dims, n_classes = logits.shape
    out = torch.empty_like(logits)
    _call("bfn_discrete_nstep_loss_backward", logits, index=x_index, logits=logits,
          t=t.to(acc).contiguous(), grad=grad.to(acc).contiguous(), out=out, batch=batch,
          dims=dims, classes=n_classes, beta_1=float(beta_1), n_steps=int(n_steps),
          **_key(seed, offset))
    return out


def continuous_step(mu, rho, eps_hat, a, c, alpha, x_min, x_max, clamp, seed, offset):
    eps_c = eps_hat.to(mu.dtype).contiguous()
    _call("bfn_continuous_step", mu, state=mu, eps=eps_c, rho=rho.to(_acc(mu.dtype)),
          batch=mu.shape[0], dims=mu.shape[1], coef_a=float(a), coef_c=float(c),
          alpha_value=float(alpha), inv_sqrt_alpha=1.0 / math.sqrt(alpha), x_min=float(x_min),
          x_max=float(x_max), clamp=bool(clamp), **_key(seed, offset))


def discretised_step(mu, rho, mu_x, log_sigma_x, n_bins, alpha, seed, offset, update, draw):
    dtype = draw.dtype
    mu_c, ls_c = mu_x.to(dtype).contiguous(), log_sigma_x.to(dtype).contiguous()
    if update and mu.dtype != dtype:
        raise TypeError("gfn_fast.discretised_step: `mu` must have the dtype of `draw` on the "
                        f"cuda backend, got {mu.dtype} and {dtype}")
    _call("bfn_discretised_step", draw, state=mu if update else None, mu=mu_c, eps=ls_c,
          rho=rho.to(_acc(dtype)), draw=draw, batch=mu_x.shape[0], dims=mu_x.shape[1],
          bins=int(n_bins), alpha_value=float(alpha), inv_sqrt_alpha=1.0 / math.sqrt(alpha),
          update=bool(update), **_key(seed, offset))


def discrete_step(log_theta, logits, alpha, seed, offset, update, draw):
    logits_c = logits.to(log_theta.dtype).contiguous() if update else logits
    batch, dims, n_classes = logits.shape
    _call("bfn_discrete_step", logits_c, state=log_theta if update else None, logits=logits_c,
          draw=draw, batch=batch, dims=dims, classes=n_classes, alpha_value=float(alpha),
          update=bool(update), **_key(seed, offset))
