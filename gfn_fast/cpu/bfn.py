"""Numba CPU kernels of the Bayesian Flow Network ops, parallel over samples (rows of B).

Every kernel reads [B, D] (or [B, D, K]) NumPy views of contiguous tensors and keeps its
per-element chain (x_hat, bin probabilities, softmax) in registers; arithmetic runs in float64
(Python-float constants promote), outputs are stored in the output array's dtype.
Signatures mirror gfn_fast.kernels.bfn and gfn_fast.cuda.bfn.
"""

import math

import numba
import numpy as np
import torch

from gfn_fast.cpu._common import as_numpy

_SIGMA_MIN, _SIGMA_MAX = 1e-3, 10.0
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@numba.njit(inline="always", cache=True)
def _loss_weight(t, log_s, n_steps):
    scale = math.exp(-2.0 * t * log_s)
    if n_steps == 0:
        return -log_s * scale
    return 0.5 * n_steps * scale * math.expm1(-2.0 * log_s / n_steps)


@numba.njit(inline="always", cache=True)
def _output_coefficients(t, log_s, t_min):
    """(a, c) with x_hat = a mu - c eps_hat; both 0 below t_min."""
    if t < t_min:
        return 0.0, 0.0
    g = -math.expm1(2.0 * t * log_s)
    return 1.0 / g, math.sqrt(math.exp(2.0 * t * log_s) / g)


@numba.njit(parallel=True, cache=True)
def _continuous_output(mu, eps_hat, t, log_s, t_min, x_min, x_max, clamp, out):
    batch, dims = mu.shape
    for b in numba.prange(batch):
        a, c = _output_coefficients(t[b], log_s, t_min)
        for d in range(dims):
            x_hat = a * mu[b, d] - c * eps_hat[b, d]
            if clamp:
                x_hat = min(max(x_hat, x_min), x_max)
            out[b, d] = x_hat


@numba.njit(parallel=True, cache=True)
def _continuous_loss_forward(x, mu, eps_hat, t, log_s, n_steps, t_min, x_min, x_max, clamp,
                             out):
    batch, dims = x.shape
    for b in numba.prange(batch):
        a, c = _output_coefficients(t[b], log_s, t_min)
        total = 0.0
        for d in range(dims):
            x_hat = a * mu[b, d] - c * eps_hat[b, d]
            if clamp:
                x_hat = min(max(x_hat, x_min), x_max)
            diff = x[b, d] - x_hat
            total += diff * diff
        out[b] = _loss_weight(t[b], log_s, n_steps) * total


@numba.njit(parallel=True, cache=True)
def _continuous_loss_backward(grad, x, mu, eps_hat, t, log_s, n_steps, t_min, x_min, x_max,
                              clamp, grad_eps_hat):
    batch, dims = x.shape
    for b in numba.prange(batch):
        a, c = _output_coefficients(t[b], log_s, t_min)
        scale = -2.0 * c * grad[b] * _loss_weight(t[b], log_s, n_steps)
        for d in range(dims):
            x_hat = a * mu[b, d] - c * eps_hat[b, d]
            g = scale * (x_hat - x[b, d])
            if clamp and (x_hat < x_min or x_hat > x_max):
                g = 0.0
            grad_eps_hat[b, d] = g


@numba.njit(parallel=True, cache=True)
def _continuous_update(mu, rho, y, alpha, out):
    batch, dims = mu.shape
    for b in numba.prange(batch):
        a = alpha[b]
        for d in range(dims):
            m = mu[b, d]
            out[b, d] = m + a / (rho[b, d] + a) * (y[b, d] - m)


@numba.njit(inline="always", cache=True)
def _phi_cdf(z):
    return 0.5 * math.erfc(-z * _INV_SQRT2)


@numba.njit(inline="always", cache=True)
def _discretised_sigma(log_sigma):
    return min(max(math.exp(log_sigma), _SIGMA_MIN), _SIGMA_MAX)


@numba.njit(inline="always", cache=True)
def _discretised_mean(mu, sigma, n_bins):
    """x_hat = sum_k p(k) k_c telescoped over interior edges e_j = -1 + 2j/K:
    x_hat = k_c(K) - (2/K) sum_{j<K} Phi((e_j - mu)/sigma). Also returns sum phi(z_j) and
    sum phi(z_j) z_j for the gradients."""
    width = 2.0 / n_bins
    cdf_sum = 0.0
    pdf_sum = 0.0
    pdf_z_sum = 0.0
    for j in range(1, n_bins):
        z = (j * width - 1.0 - mu) / sigma
        cdf_sum += _phi_cdf(z)
        pdf = _INV_SQRT_2PI * math.exp(-0.5 * z * z)
        pdf_sum += pdf
        pdf_z_sum += pdf * z
    return 1.0 - 0.5 * width - width * cdf_sum, width * pdf_sum, width * pdf_z_sum


@numba.njit(parallel=True, cache=True)
def _discretised_loss_forward(x, mu_x, log_sigma_x, t, log_s, n_steps, n_bins, out):
    batch, dims = x.shape
    for b in numba.prange(batch):
        total = 0.0
        for d in range(dims):
            x_hat, _, _ = _discretised_mean(mu_x[b, d], _discretised_sigma(log_sigma_x[b, d]),
                                            n_bins)
            diff = x[b, d] - x_hat
            total += diff * diff
        out[b] = _loss_weight(t[b], log_s, n_steps) * total


@numba.njit(parallel=True, cache=True)
def _discretised_loss_backward(grad, x, mu_x, log_sigma_x, t, log_s, n_steps, n_bins, grad_mu,
                               grad_log_sigma):
    batch, dims = x.shape
    for b in numba.prange(batch):
        scale = 2.0 * grad[b] * _loss_weight(t[b], log_s, n_steps)
        for d in range(dims):
            raw_sigma = math.exp(log_sigma_x[b, d])
            sigma = min(max(raw_sigma, _SIGMA_MIN), _SIGMA_MAX)
            x_hat, pdf_sum, pdf_z_sum = _discretised_mean(mu_x[b, d], sigma, n_bins)
            g = scale * (x_hat - x[b, d])
            grad_mu[b, d] = g * pdf_sum / sigma
            inside = _SIGMA_MIN <= raw_sigma <= _SIGMA_MAX
            grad_log_sigma[b, d] = g * pdf_z_sum if inside else 0.0 * g


@numba.njit(parallel=True, cache=True)
def _discretised_probs(mu_x, log_sigma_x, n_bins, out):
    rows = mu_x.shape[0]
    width = 2.0 / n_bins
    for r in numba.prange(rows):
        mu = mu_x[r]
        sigma = _discretised_sigma(log_sigma_x[r])
        for k in range(n_bins):
            z_left = (k * width - 1.0 - mu) / sigma
            z_right = ((k + 1) * width - 1.0 - mu) / sigma
            if k > 0 and z_left > 0.0:
                # Bin right of the mean: difference of upper tails, so far-tail bins keep
                # their relative precision instead of cancelling to 0.
                upper_right = _phi_cdf(-z_right) if k < n_bins - 1 else 0.0
                out[r, k] = _phi_cdf(-z_left) - upper_right
            else:
                cdf_right = _phi_cdf(z_right) if k < n_bins - 1 else 1.0
                out[r, k] = cdf_right - (_phi_cdf(z_left) if k > 0 else 0.0)


@numba.njit(inline="always", cache=True)
def _softmax_stats(logits, b, d, n_classes):
    """(max, sum exp(l - max)) of one [K] row."""
    m = -math.inf
    for k in range(n_classes):
        m = max(m, logits[b, d, k])
    s = 0.0
    for k in range(n_classes):
        s += math.exp(logits[b, d, k] - m)
    return m, s


@numba.njit(parallel=True, cache=True)
def _discrete_loss_forward(x_index, logits, t, beta_1, out):
    batch, dims, n_classes = logits.shape
    for b in numba.prange(batch):
        total = 0.0
        for d in range(dims):
            m, s = _softmax_stats(logits, b, d, n_classes)
            target = x_index[b, d]
            for k in range(n_classes):
                r = math.exp(logits[b, d, k] - m) / s - (1.0 if k == target else 0.0)
                total += r * r
        out[b] = n_classes * beta_1 * t[b] * total


@numba.njit(parallel=True, cache=True)
def _discrete_loss_backward(grad, x_index, logits, t, beta_1, grad_logits):
    batch, dims, n_classes = logits.shape
    for b in numba.prange(batch):
        c = 2.0 * n_classes * beta_1 * t[b] * grad[b]
        for d in range(dims):
            m, s = _softmax_stats(logits, b, d, n_classes)
            target = x_index[b, d]
            dot = 0.0
            for k in range(n_classes):
                p = math.exp(logits[b, d, k] - m) / s
                dot += (p - (1.0 if k == target else 0.0)) * p
            for k in range(n_classes):
                p = math.exp(logits[b, d, k] - m) / s
                grad_logits[b, d, k] = c * p * (p - (1.0 if k == target else 0.0) - dot)


@numba.njit(parallel=True, cache=True)
def _discrete_update(log_theta, y, out):
    batch, dims, n_classes = log_theta.shape
    for b in numba.prange(batch):
        for d in range(dims):
            m = -math.inf
            for k in range(n_classes):
                m = max(m, log_theta[b, d, k] + y[b, d, k])
            s = 0.0
            for k in range(n_classes):
                s += math.exp(log_theta[b, d, k] + y[b, d, k] - m)
            lse = m + math.log(s)
            for k in range(n_classes):
                out[b, d, k] = log_theta[b, d, k] + y[b, d, k] - lse


def _np(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return as_numpy(tensor, dtype)


def _acc(*tensors) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def continuous_output(mu, eps_hat, t, sigma_1, t_min, x_min, x_max, clamp):
    """x_hat [B, D] in mu's dtype (mu, eps_hat [B, D] contiguous; t [B])."""
    acc = _acc(mu, eps_hat)
    out = torch.empty(mu.shape, dtype=acc)
    _continuous_output(_np(mu, acc), _np(eps_hat, acc), _np(t, acc), math.log(sigma_1),
                       float(t_min), float(x_min), float(x_max), bool(clamp), out.numpy())
    return out.to(mu.dtype)


def continuous_loss_forward(x, mu, eps_hat, t, sigma_1, n_steps, t_min, x_min, x_max, clamp):
    """Per-sample loss [B] in the compute dtype."""
    acc = _acc(x, mu, eps_hat)
    out = torch.empty(x.shape[0], dtype=acc)
    _continuous_loss_forward(_np(x, acc), _np(mu, acc), _np(eps_hat, acc), _np(t, acc),
                             math.log(sigma_1), int(n_steps), float(t_min), float(x_min),
                             float(x_max), bool(clamp), out.numpy())
    return out


def continuous_loss_backward(grad, x, mu, eps_hat, t, sigma_1, n_steps, t_min, x_min, x_max,
                             clamp):
    """d loss / d eps_hat [B, D] in eps_hat's dtype; grad is [B] in the compute dtype."""
    acc = _acc(x, mu, eps_hat)
    out = torch.empty(eps_hat.shape, dtype=acc)
    _continuous_loss_backward(_np(grad, acc), _np(x, acc), _np(mu, acc), _np(eps_hat, acc),
                              _np(t, acc), math.log(sigma_1), int(n_steps), float(t_min),
                              float(x_min), float(x_max), bool(clamp), out.numpy())
    return out.to(eps_hat.dtype)


def continuous_update(mu, rho, y, alpha):
    """mu' [B, D] in mu's dtype; rho [B, D] (may be an expanded view), alpha [B]."""
    acc = _acc(mu, rho, y, alpha)
    out = torch.empty(mu.shape, dtype=acc)
    _continuous_update(_np(mu, acc), _np(rho, acc), _np(y, acc), _np(alpha, acc), out.numpy())
    return out.to(mu.dtype)


def discretised_loss_forward(x, mu_x, log_sigma_x, t, sigma_1, n_steps, n_bins):
    acc = _acc(x, mu_x, log_sigma_x)
    out = torch.empty(x.shape[0], dtype=acc)
    _discretised_loss_forward(_np(x, acc), _np(mu_x, acc), _np(log_sigma_x, acc), _np(t, acc),
                              math.log(sigma_1), int(n_steps), int(n_bins), out.numpy())
    return out


def discretised_loss_backward(grad, x, mu_x, log_sigma_x, t, sigma_1, n_steps, n_bins):
    """(d loss / d mu_x, d loss / d log_sigma_x), [B, D] each in their input dtypes."""
    acc = _acc(x, mu_x, log_sigma_x)
    grad_mu = torch.empty(mu_x.shape, dtype=acc)
    grad_log_sigma = torch.empty(mu_x.shape, dtype=acc)
    _discretised_loss_backward(_np(grad, acc), _np(x, acc), _np(mu_x, acc),
                               _np(log_sigma_x, acc), _np(t, acc), math.log(sigma_1),
                               int(n_steps), int(n_bins), grad_mu.numpy(),
                               grad_log_sigma.numpy())
    return grad_mu.to(mu_x.dtype), grad_log_sigma.to(log_sigma_x.dtype)


def discretised_probs(mu_x, log_sigma_x, n_bins):
    """[N, K] bin probabilities (compute dtype) of flat [N] mu_x / log_sigma_x."""
    acc = _acc(mu_x, log_sigma_x)
    out = torch.empty((mu_x.shape[0], n_bins), dtype=acc)
    _discretised_probs(_np(mu_x, acc), _np(log_sigma_x, acc), int(n_bins), out.numpy())
    return out


def discrete_loss_forward(x_index, logits, t, beta_1):
    acc = _acc(logits)
    out = torch.empty(logits.shape[0], dtype=acc)
    _discrete_loss_forward(x_index.numpy(), _np(logits, acc), _np(t, acc), float(beta_1),
                           out.numpy())
    return out


def discrete_loss_backward(grad, x_index, logits, t, beta_1):
    acc = _acc(logits)
    out = torch.empty(logits.shape, dtype=acc)
    _discrete_loss_backward(_np(grad, acc), x_index.numpy(), _np(logits, acc), _np(t, acc),
                            float(beta_1), out.numpy())
    return out.to(logits.dtype)


def discrete_update(log_theta, y):
    acc = _acc(log_theta, y)
    out = torch.empty(log_theta.shape, dtype=acc)
    _discrete_update(_np(log_theta, acc), _np(y, acc), out.numpy())
    return out.to(log_theta.dtype)
