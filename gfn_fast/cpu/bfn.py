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

from gfn_fast.cpu import _philox as px
from gfn_fast.cpu import _vmath as vm
from gfn_fast.cpu._common import as_numpy, empty, serial_if
from gfn_fast.reference.balance import compute_dtype as _acc

_SIGMA_MIN, _SIGMA_MAX = 1e-3, 10.0
# The loops over logits and noise vectorise only without calls and exceptions in their bodies:
# exp / log / cos come from _vmath (inlined arithmetic, not libm calls), error_model="numpy"
# drops the ZeroDivisionError branch of every division, and reassociation (no nnan / ninf, so
# NaN and inf still propagate) lets LLVM vectorise the sums. Measured single-threaded at text8's
# shape: a Box-Muller normal 15 ns -> ~1 ns, an exp 4.4 ns -> ~1 ns.
_FAST = {"reassoc", "contract"}
_KERNEL = dict(parallel=True, cache=True, fastmath=_FAST, error_model="numpy")
# Helpers that loop over a whole row (called once per row, never per element) are compiled as
# functions of their own, not inlined: Numba's IR inlining copies and retypes a helper at every
# call site, and these carry the Philox and _vmath chains. Built once per signature and shared
# by every kernel and serial twin that calls them, they halved the first-run compile time of
# the noisy kernels (e.g. the parallel discrete flow 3.8 s -> 1.3 s); the kernels ran as fast
# (text8 shape, side by side). Per-element helpers stay inlined: a call inside a loop stops
# its vectorisation.
_ROW_HELPER = dict(cache=True, fastmath=_FAST, error_model="numpy")
# Every _KERNEL's prange body and every _ROW_HELPER starts with vm.wide_vectors(): 512-bit
# vectors where LLVM's tuning picks 256 (see _vmath.wide_vectors). Side by side on a 2-core
# Xeon (LLVM "rocketlake"), two threads: the CIFAR-shape flow 109 -> 74 us and continuous step
# 106 -> 76 us, text8's discrete flow 5.1 -> 3.9 ms, its loss forward 1.86 -> 1.57 ms and
# backward 3.0 -> 2.5 ms.
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
    """(a, c) with x_hat = a mu - c eps_hat; both 0 below t_min, where the kernels set x_hat to 0
    without reading eps_hat (0 * an inf or NaN network output would be NaN, not the spec's 0)."""
    if t < t_min:
        return 0.0, 0.0
    g = -math.expm1(2.0 * t * log_s)
    return 1.0 / g, math.sqrt(math.exp(2.0 * t * log_s) / g)


@numba.njit(inline="always", cache=True)
def _x_hat(m, e, a, c, live, zero, x_min, x_max, clamp):
    """(x_hat, inside) of one element: x_hat = a mu - c eps_hat, or `zero` (0 in the kernel's
    type) below t_min, where `live` is False and eps_hat goes unused; clamped to [x_min, x_max]
    when `clamp`. `inside` is False where the clamp binds (no gradient there); a NaN stays
    inside and keeps its gradient."""
    x_hat = a * m - c * e if live else zero
    if not clamp:
        return x_hat, True
    return min(max(x_hat, x_min), x_max), not (x_hat < x_min or x_hat > x_max)


@numba.njit(**_KERNEL)
def _continuous_output(mu, eps_hat, t, log_s, t_min, x_min, x_max, clamp, out):
    batch, dims = mu.shape
    for b in numba.prange(batch):
        vm.wide_vectors()
        a, c = _output_coefficients(t[b], log_s, t_min)
        live = a != 0.0
        for d in range(dims):
            out[b, d] = _x_hat(mu[b, d], eps_hat[b, d], a, c, live, 0.0, x_min, x_max, clamp)[0]


@numba.njit(**_KERNEL)
def _continuous_loss_forward(x, mu, eps_hat, t, log_s, n_steps, t_min, x_min, x_max, clamp,
                             want_unit, out, unit):
    """out[b] = loss_b; when want_unit, also unit[b, d] = d loss_b / d eps_hat[b, d] (the
    backward is then one multiply by the upstream gradient, with no second pass over x, mu and
    eps_hat). A clamped-away x_hat has no gradient."""
    batch, dims = x.shape
    for b in numba.prange(batch):
        vm.wide_vectors()
        a, c = _output_coefficients(t[b], log_s, t_min)
        weight = _loss_weight(t[b], log_s, n_steps)
        unit_scale = 2.0 * c * weight
        live = a != 0.0
        total = 0.0
        for d in range(dims):
            x_hat, inside = _x_hat(mu[b, d], eps_hat[b, d], a, c, live, 0.0, x_min, x_max,
                                   clamp)
            diff = x[b, d] - x_hat
            total += diff * diff
            if want_unit:
                unit[b, d] = unit_scale * diff if inside else 0.0
        out[b] = weight * total


@numba.njit(**_KERNEL)
def _continuous_update(mu, rho, per_sample, y, alpha, out):
    """out = mu + alpha / (rho + alpha) (y - mu); rho [B, D], or [B, 1] with per_sample (one
    precision per sample: its coefficient is divided out once per row, the same value the
    element loop would compute, instead of a division per element through a stride-0 view,
    which kept the loop scalar: 2.3x slower than eager PyTorch at CIFAR-10's shape until
    session 20)."""
    batch, dims = mu.shape
    for b in numba.prange(batch):
        vm.wide_vectors()
        a = alpha[b]
        if per_sample:
            coefficient = a / (rho[b, 0] + a)
            for d in range(dims):
                m = mu[b, d]
                out[b, d] = m + coefficient * (y[b, d] - m)
        else:
            for d in range(dims):
                m = mu[b, d]
                out[b, d] = m + a / (rho[b, d] + a) * (y[b, d] - m)


@numba.njit(inline="always", cache=True)
def _discretised_sigma(log_sigma):
    return min(max(math.exp(log_sigma), _SIGMA_MIN), _SIGMA_MAX)


# The discretised kernels take the normal CDF at the K - 1 interior bin edges of each element
# through erfc: Phi(z) = erfc(|z| / sqrt 2) / 2 left of the mean, 1 minus that right of it. The
# tails come from _vmath.erfc_pos_inplace over a row of edges at a time (vectorised, ~6.5 ns an
# edge; libm's erfc, one call per edge, took ~15 and kept every loop around it scalar): fill
# the row with the |z| / sqrt 2 (_edge_arguments), transform it, read the tails.

@numba.njit(inline="always", cache=True)
def _edge_arguments(mu, sigma, width, tails):
    """tails[j] = |z_(j+1)| / sqrt 2, z_j = (e_j - mu) / sigma at interior edge e_j = -1 + j w."""
    for j in range(tails.shape[0]):
        tails[j] = abs(((j + 1) * width - 1.0 - mu) / sigma) * _INV_SQRT2


@numba.njit(inline="always", cache=True)
def _discretised_mean(mu, sigma, n_bins, tails):
    """x_hat = sum_k p(k) k_c telescoped over interior edges e_j = -1 + 2j/K:
    x_hat = k_c(K) - (2/K) sum_{j<K} Phi((e_j - mu)/sigma). Also returns sum phi(z_j) and
    sum phi(z_j) z_j for the gradients. `tails`: a float64 scratch of K - 1."""
    width = 2.0 / n_bins
    _edge_arguments(mu, sigma, width, tails)
    vm.erfc_pos_inplace(tails)
    cdf_sum = 0.0
    pdf_sum = 0.0
    pdf_z_sum = 0.0
    for j in range(tails.shape[0]):
        z = ((j + 1) * width - 1.0 - mu) / sigma
        tail = 0.5 * tails[j]
        cdf_sum += 1.0 - tail if z > 0.0 else tail
        pdf = _INV_SQRT_2PI * vm.exp(-0.5 * z * z)
        pdf_sum += pdf
        pdf_z_sum += pdf * z
    return 1.0 - 0.5 * width - width * cdf_sum, width * pdf_sum, width * pdf_z_sum


@numba.njit(**_KERNEL)
def _discretised_loss_forward(x, mu_x, log_sigma_x, t, log_s, n_steps, n_bins, out):
    batch, dims = x.shape
    for b in numba.prange(batch):
        vm.wide_vectors()
        tails = np.empty(n_bins - 1)
        total = 0.0
        for d in range(dims):
            x_hat, _, _ = _discretised_mean(mu_x[b, d], _discretised_sigma(log_sigma_x[b, d]),
                                            n_bins, tails)
            diff = x[b, d] - x_hat
            total += diff * diff
        out[b] = _loss_weight(t[b], log_s, n_steps) * total


@numba.njit(**_KERNEL)
def _discretised_loss_backward(grad, x, mu_x, log_sigma_x, t, log_s, n_steps, n_bins, grad_mu,
                               grad_log_sigma):
    batch, dims = x.shape
    for b in numba.prange(batch):
        vm.wide_vectors()
        tails = np.empty(n_bins - 1)
        scale = 2.0 * grad[b] * _loss_weight(t[b], log_s, n_steps)
        for d in range(dims):
            raw_sigma = math.exp(log_sigma_x[b, d])
            sigma = min(max(raw_sigma, _SIGMA_MIN), _SIGMA_MAX)
            x_hat, pdf_sum, pdf_z_sum = _discretised_mean(mu_x[b, d], sigma, n_bins, tails)
            g = scale * (x_hat - x[b, d])
            grad_mu[b, d] = g * pdf_sum / sigma
            inside = _SIGMA_MIN <= raw_sigma <= _SIGMA_MAX
            grad_log_sigma[b, d] = g * pdf_z_sum if inside else 0.0 * g


# Rows of _discretised_probs a block of its parallel loop holds (one tails scratch a block)
_PROBS_ROWS = 64


@numba.njit(parallel=True, cache=True, fastmath={"contract"}, error_model="numpy")
def _discretised_probs(mu_x, log_sigma_x, n_bins, out):
    """p(k) of each row's K bins, each edge's normal tail taken once (the bins share their
    edges): left of the mean a bin is a difference of CDFs, right of it (k > 0 and a left edge
    above the mean) a difference of upper tails, so far-tail bins keep their relative
    precision instead of cancelling to 0. The bin holding the mean is the one that needs both
    tails of its right edge. Until session 20 each bin took both of its edges' tails from
    libm's erfc, twice the calls for the same values, one at a time."""
    rows = mu_x.shape[0]
    width = 2.0 / n_bins
    edges = n_bins - 1
    for block in numba.prange((rows + _PROBS_ROWS - 1) // _PROBS_ROWS):
        vm.wide_vectors()
        tails = np.empty(edges)
        for r in range(block * _PROBS_ROWS, min(rows, (block + 1) * _PROBS_ROWS)):
            mu = mu_x[r]
            sigma = _discretised_sigma(log_sigma_x[r])
            _edge_arguments(mu, sigma, width, tails)
            vm.erfc_pos_inplace(tails)
            upper = False  # whether the current bin's left edge is above the mean (k > 0)
            left = 0.0  # that edge's tail: Phi(-z) if upper, else Phi(z) (0 at k = 0)
            for k in range(edges):
                z_right = ((k + 1) * width - 1.0 - mu) / sigma
                tail = 0.5 * tails[k]  # Phi(-|z_right|)
                if upper:
                    out[r, k] = left - tail
                    left = tail
                else:
                    cdf_right = 1.0 - tail if z_right > 0.0 else tail
                    out[r, k] = cdf_right - left
                    if z_right > 0.0:
                        upper = True
                        left = tail
                    else:
                        left = cdf_right
            out[r, edges] = left - 0.0 if upper else 1.0 - left


# The discrete kernels work on one sample's [D, K] rows at a time, in passes: per-row maxima
# and shifted values into a float64 [D, K] scratch, then ONE flat loop of exps over all D * K
# values, then per-row sums. A loop over K = 27 vectorises into one 16-wide step and 11 scalar
# remainder iterations, and a scalar exp costs as much as a vector one, so exps inside the
# [K] loops ran at ~3.5 ns; in the flat loop they run at ~0.7 ns (text8 shape, one thread).

@numba.njit(**_ROW_HELPER)
def _exp_inplace(scratch):
    """scratch[:] = exp(scratch) over a contiguous [D, K] array, as one flat vectorised loop."""
    vm.wide_vectors()
    flat = scratch.reshape(scratch.size)
    for j in range(flat.shape[0]):
        flat[j] = vm.exp(flat[j])


@numba.njit(inline="always", cache=True)
def _row_sums(values, sums):
    """sums[i] = sum_k values[i, k] over a [R, K] array, each in float64: the row totals of the
    exponentials that the softmaxes and log-sum-exps divide by or take the log of (those logs go
    through _log_inplace, one vectorised call for all R rows)."""
    for i in range(values.shape[0]):
        s = 0.0
        for k in range(values.shape[1]):
            s += values[i, k]
        sums[i] = s


@numba.njit(**_ROW_HELPER)
def _shift_rows(values, b, scratch, maxima):
    """scratch[d, k] = values[b, d, k] - max_k values[b, d, k], maxima[d] = that maximum."""
    vm.wide_vectors()
    dims, n_classes = scratch.shape
    for d in range(dims):
        m = values[b, d, 0]
        for k in range(1, n_classes):
            m = max(m, values[b, d, k])
        maxima[d] = m
        for k in range(n_classes):
            scratch[d, k] = values[b, d, k] - m


@numba.njit(**_KERNEL)
def _discrete_loss_forward(x_index, logits, t, beta_1, out):
    """sum_k (p_k - e_x)^2 = sum_{k != x} p_k^2 + q^2 with q = 1 - p_x = sum_{k != x} p_k, both
    summed from the other classes' exps e = exp(l - max) (one exp per logit). Forming 1 - p_x,
    or (sum e_k^2) / s^2 - 2 e_x / s + 1, cancels when p_x nears 1: that form lost all digits at
    a 30-logit margin even in float64. The target is picked by a select inside the loop, not by
    indexing, so a bad index reads nothing out of bounds."""
    batch, dims, n_classes = logits.shape
    for b in numba.prange(batch):
        vm.wide_vectors()
        e = np.empty((dims, n_classes), logits.dtype)
        maxima = np.empty(dims, logits.dtype)
        _shift_rows(logits, b, e, maxima)
        _exp_inplace(e)
        total = 0.0
        for d in range(dims):
            target = x_index[b, d]
            s = 0.0
            others = 0.0
            others_sq = 0.0
            for k in range(n_classes):
                v = e[d, k]
                other = 0.0 if k == target else v
                s += v
                others += other
                others_sq += other * other
            inv = 1.0 / s
            q = others * inv
            total += others_sq * inv * inv + q * q
        out[b] = n_classes * beta_1 * t[b] * total


@numba.njit(**_KERNEL)
def _discrete_loss_backward(grad, x_index, logits, t, beta_1, grad_logits):
    """d/d l_j = c p_j (r_j - sum_k r_k p_k), r = p - e_x (one exp per logit). With
    S = sum_{k != x} p_k^2 and q = sum_{k != x} p_k (= 1 - p_x, see the forward), the bracket is
    p_j + q p_x - S for j != x and -(S + q^2) for j = x: no 1 - p_x is formed."""
    batch, dims, n_classes = logits.shape
    for b in numba.prange(batch):
        vm.wide_vectors()
        c = 2.0 * n_classes * beta_1 * t[b] * grad[b]
        e = np.empty((dims, n_classes), logits.dtype)
        maxima = np.empty(dims, logits.dtype)
        _shift_rows(logits, b, e, maxima)
        _exp_inplace(e)
        for d in range(dims):
            target = x_index[b, d]
            s = 0.0
            others = 0.0
            others_sq = 0.0
            e_target = 0.0
            for k in range(n_classes):
                v = e[d, k]
                other = 0.0 if k == target else v
                s += v
                others += other
                others_sq += other * other
                e_target += v - other
            inv = 1.0 / s
            q = others * inv
            sum_sq = others_sq * inv * inv
            shift = q * e_target * inv - sum_sq
            at_target = -(sum_sq + q * q)
            for k in range(n_classes):
                p = e[d, k] * inv
                grad_logits[b, d, k] = c * p * (at_target if k == target else p + shift)


# Rows of the discrete update a block of its parallel loop holds: the op flattens any [..., K]
# input to [N, 1, K] (one row a sample), so blocks of rows, not the samples, are what the threads
# share and what one scratch serves. Per sample with a scratch each, as until session 20, the
# text8-shaped update (B=64, D=256, K=27, flattened) took 1.10 ms against 0.75 for eager PyTorch.
_UPDATE_ROWS = 256


@numba.njit(**_KERNEL)
def _discrete_update(log_theta, y, out):
    """out = log_theta + y - logsumexp_k(log_theta + y) over the rows of [B, D, K] (any B, D):
    z = log_theta + y is staged in out, its row maxima subtracted into a scratch that is
    exponentiated in one flat loop (see _exp_inplace), then each row's log-sum-exp is taken
    off, the block's row sums going through one vectorised log (_log_inplace; a scalar log per
    row took ~1/4 of the kernel: text8's B=416, paired in one process, two threads 2.8-3.8 ->
    2.1-3.1 ms, bit for bit the same)."""
    batch, dims, n_classes = log_theta.shape
    rows = batch * dims
    theta = log_theta.reshape(rows, n_classes)
    noise = y.reshape(rows, n_classes)
    z = out.reshape(rows, n_classes)
    for block in numba.prange((rows + _UPDATE_ROWS - 1) // _UPDATE_ROWS):
        vm.wide_vectors()
        first = block * _UPDATE_ROWS
        count = min(_UPDATE_ROWS, rows - first)
        e = np.empty((count, n_classes), out.dtype)
        maxima = np.empty(count, out.dtype)
        for i in range(count):
            r = first + i
            for k in range(n_classes):
                z[r, k] = theta[r, k] + noise[r, k]
            m = z[r, 0]
            for k in range(1, n_classes):
                m = max(m, z[r, k])
            maxima[i] = m
            for k in range(n_classes):
                e[i, k] = z[r, k] - m
        _exp_inplace(e)
        sums = np.empty(count)
        _row_sums(e, sums)
        _log_inplace(sums)
        for i in range(count):
            r = first + i
            lse = maxima[i] + sums[i]
            for k in range(n_classes):
                z[r, k] -= lse


def _np(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return as_numpy(tensor, dtype)


# A parallel region costs 10-60 us to wake Numba's second thread here (an oversubscribed
# 2-core machine; more when torch's OpenMP pool is spinning), so calls whose serial time
# is estimated below _SERIAL_BELOW_NS run on the calling thread alone. Per-element costs are
# single-thread measurements at the benchmark shapes (float32). At CIFAR-10's shape (98K
# elements) the flow and the continuous loss both run in parallel: forcing the loss serial
# made the flow + loss + backward step slower (276 -> 345 us, 390 -> 427 us with the caches
# cold after an eager step; 2-core Xeon).
_SERIAL_BELOW_NS = 20_000
_NS_CHEAP, _NS_LOGIT, _NS_NOISE = 0.25, 1.0, 1.0


def _run(kernel, work_ns: float, *args) -> None:
    serial_if(kernel, work_ns < _SERIAL_BELOW_NS)(*args)


def _cast(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """out in `dtype`. Tensor.to returns a same-dtype tensor as it is, but only after a trip
    through the dispatcher (~1 us; ~5 us with the caches cold, as after a network's forward)."""
    return out if out.dtype == dtype else out.to(dtype)


def _like(value: float, dtype: torch.dtype):
    """A threshold rounded to the compute dtype, so `t < t_min` is decided as on the GPU
    backends and the reference (a float32 t is compared with float32(t_min))."""
    return np.float32(value) if dtype == torch.float32 else float(value)


def continuous_output(mu, eps_hat, t, sigma_1, t_min, x_min, x_max, clamp):
    """x_hat [B, D] in mu's dtype (mu, eps_hat [B, D] contiguous; t [B])."""
    acc = _acc(mu, eps_hat)
    out = empty(mu.shape, dtype=acc)
    _run(_continuous_output, _NS_CHEAP * mu.numel(), _np(mu, acc), _np(eps_hat, acc), _np(t, acc),
         math.log(sigma_1), _like(t_min, acc), float(x_min), float(x_max), bool(clamp), out.numpy())
    return _cast(out, mu.dtype)


def continuous_loss_forward(x, mu, eps_hat, t, sigma_1, n_steps, t_min, x_min, x_max, clamp,
                            want_unit):
    """(per-sample loss [B], d loss_b / d eps_hat [B, D] or None), both in the compute dtype."""
    acc = _acc(x, mu, eps_hat)
    out = torch.empty(x.shape[0], dtype=acc, device="cpu")
    unit = empty(x.shape if want_unit else (1, 1), dtype=acc)
    _run(_continuous_loss_forward, (2 if want_unit else 1) * _NS_CHEAP * x.numel(), _np(x, acc),
         _np(mu, acc), _np(eps_hat, acc), _np(t, acc), math.log(sigma_1), int(n_steps),
         _like(t_min, acc), float(x_min), float(x_max), bool(clamp), bool(want_unit),
         out.numpy(), unit.numpy())
    return out, (unit if want_unit else None)


def continuous_update(mu, rho, y, alpha):
    """mu' [B, D] in mu's dtype; rho [B, D] (may be an expanded view of one precision per
    sample), alpha [B]."""
    acc = _acc(mu, rho, y, alpha)
    out = empty(mu.shape, dtype=acc)
    per_sample = rho.dim() == 2 and rho.stride(1) == 0
    if per_sample:
        rho = rho[:, :1]
    _run(_continuous_update, _NS_CHEAP * mu.numel(), _np(mu, acc), _np(rho, acc), per_sample,
         _np(y, acc), _np(alpha, acc), out.numpy())
    return _cast(out, mu.dtype)


def discretised_loss_forward(x, mu_x, log_sigma_x, t, sigma_1, n_steps, n_bins):
    acc = _acc(x, mu_x, log_sigma_x)
    out = torch.empty(x.shape[0], dtype=acc, device="cpu")
    _run(_discretised_loss_forward, _NS_CHEAP * x.numel() * n_bins, _np(x, acc), _np(mu_x, acc),
         _np(log_sigma_x, acc), _np(t, acc), math.log(sigma_1), int(n_steps), int(n_bins),
         out.numpy())
    return out


def discretised_loss_backward(grad, x, mu_x, log_sigma_x, t, sigma_1, n_steps, n_bins):
    """(d loss / d mu_x, d loss / d log_sigma_x), [B, D] each in their input dtypes."""
    acc = _acc(x, mu_x, log_sigma_x)
    grad_mu = empty(mu_x.shape, dtype=acc)
    grad_log_sigma = empty(mu_x.shape, dtype=acc)
    _run(_discretised_loss_backward, _NS_CHEAP * x.numel() * n_bins, _np(grad, acc), _np(x, acc),
         _np(mu_x, acc), _np(log_sigma_x, acc), _np(t, acc), math.log(sigma_1), int(n_steps),
         int(n_bins), grad_mu.numpy(), grad_log_sigma.numpy())
    return grad_mu.to(mu_x.dtype), grad_log_sigma.to(log_sigma_x.dtype)


def discretised_probs(mu_x, log_sigma_x, n_bins):
    """[N, K] bin probabilities (compute dtype) of flat [N] mu_x / log_sigma_x."""
    acc = _acc(mu_x, log_sigma_x)
    out = empty((mu_x.shape[0], n_bins), dtype=acc)
    _run(_discretised_probs, _NS_CHEAP * mu_x.numel() * n_bins, _np(mu_x, acc),
         _np(log_sigma_x, acc), int(n_bins), out.numpy())
    return out


def discrete_loss_forward(x_index, logits, t, beta_1):
    acc = _acc(logits)
    out = torch.empty(logits.shape[0], dtype=acc, device="cpu")
    _run(_discrete_loss_forward, _NS_LOGIT * logits.numel(), x_index.numpy(), _np(logits, acc),
         _np(t, acc), float(beta_1), out.numpy())
    return out


def discrete_loss_backward(grad, x_index, logits, t, beta_1):
    acc = _acc(logits)
    out = empty(logits.shape, dtype=acc)
    _run(_discrete_loss_backward, _NS_LOGIT * logits.numel(), _np(grad, acc), x_index.numpy(),
         _np(logits, acc), _np(t, acc), float(beta_1), out.numpy())
    return _cast(out, logits.dtype)


def discrete_update(log_theta, y):
    acc = _acc(log_theta, y)
    out = empty(log_theta.shape, dtype=acc)
    _run(_discrete_update, _NS_LOGIT * log_theta.numel(), _np(log_theta, acc), _np(y, acc),
         out.numpy())
    return _cast(out, log_theta.dtype)


# ------------------------------------------------------------------------------- noisy ops
# Noise contract: gfn_fast/reference/bfn.py ("noise"). The key and offset words arrive as Python
# ints < 2^32 (typed int64) and become uint64 in _words, where every kernel's draws go through
# (as in cpu/sampling.py): building four np.uint64 scalars per call cost ~1 us, ~8 us with the
# caches cold (after a network's forward), against ~1.6 us for the ints.

_UNIFORM_ROW = np.uint64(1 << 31)


@numba.njit(inline="always", cache=True)
def _words(k0, k1, o0, o1, row, col):
    return px.philox4x32(np.uint64(k0), np.uint64(k1), np.uint64(col) & px.MASK32,
                         np.uint64(row), np.uint64(o0), np.uint64(o1))


@numba.njit(inline="always", cache=True)
def _block_words(k0, k1, o0, o1, block):
    """The four words of flat Philox block `block`, read at (block >> 32, block mod 2^32)."""
    j = np.uint64(block)
    return _words(k0, k1, o0, o1, j >> px.SHIFT32, j)


@numba.njit(inline="always", cache=True)
def _normal_quad(k0, k1, o0, o1, block):
    """The four normals of Philox block `block` (normals 4 block .. 4 block + 3)."""
    w0, w1, w2, w3 = _block_words(k0, k1, o0, o1, block)
    n0, n1 = px.normal_pair(w0, w1)
    n2, n3 = px.normal_pair(w2, w3)
    return n0, n1, n2, n3


@numba.njit(inline="always", cache=True)
def _normal(k0, k1, o0, o1, index):
    """Normal `index` alone (the ragged ends of a fill)."""
    n0, n1, n2, n3 = _normal_quad(k0, k1, o0, o1, index >> 2)
    part = index & 3
    return n0 if part == 0 else (n1 if part == 1 else (n2 if part == 2 else n3))


_CHUNK_BLOCKS = 256


@numba.njit(**_ROW_HELPER)
def _fill_normals(values, base, scale, shift, k0, k1, o0, o1):
    """values[j] = scale * normal(base + j) + shift over a contiguous array (any shape; the
    kernels pass 1-D views, so that one build serves them all: each array type is a build of its
    own, ~1.5 s of a first run's compile). Whole blocks (four normals each) in vectorised loops,
    the ragged ends one by one. scale and shift are rounded to values' dtype first: float64
    factors on float32 normals would widen the whole vector loop to float64 (a fifth of the
    CIFAR-shape flow's time: 80 -> 64 us). The blocks go in chunks of two loops: the Philox words
    of a chunk into an L1-resident buffer, then Box-Muller over them. Fused in one loop, the
    64-bit integer words set the vector width (8 lanes) for the float32 transform too; split,
    each loop gets its own (98K normals, one thread: 117 -> 100 us; the CIFAR-shape flow
    74 -> 69 us)."""
    vm.wide_vectors()
    flat = values.reshape(values.size)
    scale = flat.dtype.type(scale)
    shift = flat.dtype.type(shift)
    count = flat.shape[0]
    head = min((4 - base % 4) % 4, count)
    blocks = (count - head) // 4
    for j in range(head):
        flat[j] = scale * _normal(k0, k1, o0, o1, base + j) + shift
    # A 1-D slice indexed 4 q + c: a reshaped [blocks, 4] view has a run-time stride, which
    # hides the interleaved stores from LLVM (5x slower).
    quads = flat[head:head + 4 * blocks]
    first = (base + head) // 4
    words = np.empty(4 * _CHUNK_BLOCKS, np.uint32)
    for start in range(0, blocks, _CHUNK_BLOCKS):
        size = min(_CHUNK_BLOCKS, blocks - start)
        for q in range(size):
            w0, w1, w2, w3 = _block_words(k0, k1, o0, o1, first + start + q)
            words[4 * q] = w0
            words[4 * q + 1] = w1
            words[4 * q + 2] = w2
            words[4 * q + 3] = w3
        chunk = quads[4 * start:4 * (start + size)]
        for p in range(2 * size):
            n0, n1 = px.normal_pair(np.uint64(words[2 * p]), np.uint64(words[2 * p + 1]))
            chunk[2 * p] = scale * n0 + shift
            chunk[2 * p + 1] = scale * n1 + shift
    for j in range(head + 4 * blocks, count):
        flat[j] = scale * _normal(k0, k1, o0, o1, base + j) + shift


@numba.njit(**_KERNEL)
def _continuous_flow(x, t, log_s, k0, k1, o0, o1, out):
    batch, dims = x.shape
    for b in numba.prange(batch):
        vm.wide_vectors()
        g = -math.expm1(2.0 * t[b] * log_s)
        spread = math.sqrt(g * math.exp(2.0 * t[b] * log_s))
        gain = out.dtype.type(g)  # in out's dtype, like the normals (see _fill_normals)
        row = out[b]
        _fill_normals(row, b * dims, spread, 0.0, k0, k1, o0, o1)
        for d in range(dims):
            row[d] += gain * x[b, d]


@numba.njit(**_KERNEL)
def _discrete_flow(x_index, t, beta_1, k0, k1, o0, o1, log, out):
    """out [B, D, K]. Each class row's softmax is shifted by y at the data class x, not by the
    row maximum: with |eps| <= 6.764 (the contract's Box-Muller bound),
    y_k - y_x <= 13.53 sqrt(beta K) - beta K <= 45.75, so exp(y_k - y_x) <= 7.4e19 cannot
    overflow in float64 and the sum is >= 1, with no max pass."""
    batch, dims, n_classes = out.shape
    for b in numba.prange(batch):
        vm.wide_vectors()
        beta_t = beta_1 * t[b] * t[b]
        y = out[b]
        _fill_normals(y.reshape(y.size), b * dims * n_classes, math.sqrt(beta_t * n_classes),
                      -beta_t, k0, k1, o0, o1)
        e = np.empty((dims, n_classes), out.dtype)
        shifts = np.empty(dims, out.dtype)
        for d in range(dims):
            target = min(max(x_index[b, d], 0), n_classes - 1)
            y[d, target] += beta_t * n_classes
            shift = y[d, target]
            shifts[d] = shift
            for k in range(n_classes):
                e[d, k] = y[d, k] - shift
        _exp_inplace(e)
        sums = np.empty(dims)
        _row_sums(e, sums)
        if log:
            _log_inplace(sums)  # one vectorised log, not a scalar one per row
            for d in range(dims):
                lse = shifts[d] + sums[d]
                for k in range(n_classes):
                    y[d, k] -= lse
        else:
            for d in range(dims):
                inv = 1.0 / sums[d]
                for k in range(n_classes):
                    y[d, k] = e[d, k] * inv


@numba.njit(**_ROW_HELPER)
def _log_inplace(values):
    """values[:] = ln(values) over a 1-D array, one vectorised loop (the per-row log-sum-exps:
    a scalar log per row cost ~1/3 of the n-step kernel)."""
    vm.wide_vectors()
    for j in range(values.shape[0]):
        values[j] = vm.log(values[j])


@numba.njit(**_ROW_HELPER)
def _nstep_rows(logits, b, x_index, alpha, k0, k1, o0, o1, p, w, maxima, stats):
    """One sample's n-step terms. Leaves p[d, k] = softmax(logits[b, d])_k and
    w[d, k] = exp(z_k - max_k z) with z = ln p_O + y (y the sender sample), and
    stats[0, d] = y_x - logsumexp_k z_k, stats[1, d] = sum_k w[d, k]. A row helper shared by
    the forward and backward kernels and their serial twins (inlined, each compiled a copy: the
    first-run compile of forward + backward went from 7.0 to 5.5 s)."""
    vm.wide_vectors()
    dims, n_classes = p.shape
    boost = alpha * n_classes
    _fill_normals(w.reshape(w.size), b * dims * n_classes, math.sqrt(boost), -alpha, k0, k1, o0,
                  o1)
    _shift_rows(logits, b, p, maxima)
    _exp_inplace(p)
    sums = stats[1]
    _row_sums(p, sums)
    logs = np.empty(dims)
    for d in range(dims):
        logs[d] = sums[d]
    _log_inplace(logs)
    for d in range(dims):
        inv = 1.0 / sums[d]
        log_norm = maxima[d] + logs[d]
        target = x_index[b, d]
        y_target = 0.0
        m = -math.inf
        for k in range(n_classes):
            y = w[d, k] + (boost if k == target else 0.0)
            y_target += y if k == target else 0.0
            z = logits[b, d, k] - log_norm + y
            w[d, k] = z
            m = max(m, z)
            p[d, k] *= inv
        for k in range(n_classes):
            w[d, k] -= m
        stats[0, d] = y_target - m
    _exp_inplace(w)
    _row_sums(w, sums)
    for d in range(dims):
        logs[d] = sums[d]
    _log_inplace(logs)
    for d in range(dims):
        stats[0, d] -= logs[d]


@numba.njit(**_KERNEL)
def _discrete_nstep_loss_forward(x_index, logits, t, beta_1, n_steps, k0, k1, o0, o1, out):
    batch, dims, n_classes = logits.shape
    for b in numba.prange(batch):
        vm.wide_vectors()
        alpha = beta_1 * (2.0 * t[b] * n_steps + 1.0) / (n_steps * n_steps)
        p = np.empty((dims, n_classes), logits.dtype)
        w = np.empty((dims, n_classes), logits.dtype)
        maxima = np.empty(dims, logits.dtype)
        stats = np.empty((2, dims))
        _nstep_rows(logits, np.int64(b), x_index, alpha, k0, k1, o0, o1, p, w, maxima, stats)
        total = 0.0
        for d in range(dims):
            total += stats[0, d]
        out[b] = n_steps * total


@numba.njit(**_KERNEL)
def _discrete_nstep_loss_backward(grad, x_index, logits, t, beta_1, n_steps, k0, k1, o0, o1,
                                  grad_logits):
    """d/d l_k = n grad (p_k - w_k / sum w): the noise is drawn again."""
    batch, dims, n_classes = logits.shape
    for b in numba.prange(batch):
        vm.wide_vectors()
        alpha = beta_1 * (2.0 * t[b] * n_steps + 1.0) / (n_steps * n_steps)
        scale = n_steps * grad[b]
        p = np.empty((dims, n_classes), logits.dtype)
        w = np.empty((dims, n_classes), logits.dtype)
        maxima = np.empty(dims, logits.dtype)
        stats = np.empty((2, dims))
        _nstep_rows(logits, np.int64(b), x_index, alpha, k0, k1, o0, o1, p, w, maxima, stats)
        for d in range(dims):
            inv = 1.0 / stats[1, d]
            for k in range(n_classes):
                grad_logits[b, d, k] = scale * (p[d, k] - w[d, k] * inv)


@numba.njit(**_KERNEL)
def _continuous_step(mu, rho, eps_hat, a, c, inv_sqrt_alpha, alpha, x_min, x_max, clamp,
                     k0, k1, o0, o1):
    batch, dims = mu.shape
    # The per-element arithmetic in mu's dtype, like the noise (see _fill_normals)
    real = mu.dtype.type
    a, c, x_min, x_max = real(a), real(c), real(x_min), real(x_max)
    live = a != 0.0  # t >= t_min (_output_coefficients)
    zero = real(0.0)
    for b in numba.prange(batch):
        vm.wide_vectors()
        gain = real(alpha / (rho[b] + alpha))
        noise = np.empty(dims, mu.dtype)
        _fill_normals(noise, b * dims, inv_sqrt_alpha, 0.0, k0, k1, o0, o1)
        for d in range(dims):
            m = mu[b, d]
            x_hat = _x_hat(m, eps_hat[b, d], a, c, live, zero, x_min, x_max, clamp)[0]
            mu[b, d] = m + gain * (x_hat + noise[d] - m)


@numba.njit(**_KERNEL)
def _discretised_step(mu, rho, mu_x, log_sigma_x, n_bins, inv_sqrt_alpha, alpha, k0, k1, o0,
                      o1, update, draw):
    batch, dims = mu_x.shape
    # The draw in mu_x's dtype and the update in mu's, as the reference computes them: float64
    # constants would widen the float32 loop (half the vector lanes)
    real, state = mu_x.dtype.type, mu.dtype.type
    sigma_min, sigma_max = real(_SIGMA_MIN), real(_SIGMA_MAX)
    one, two, half_bins, bins, top = real(1.0), real(2.0), real(0.5 * n_bins), real(n_bins), \
        real(n_bins - 1)
    zero = real(0.0)
    spread = state(inv_sqrt_alpha)
    for b in numba.prange(batch):
        vm.wide_vectors()
        gain = state(alpha / (rho[b] + alpha)) if update else state(0.0)
        # Element d takes Box-Muller pair b D + d: normals 2 (b D + d) (the draw) and the next
        # (the sender sample), so one fill of 2 D normals serves the row. A helper writing the
        # pairs into two arrays ran 2.4x slower on two threads than on one (cause not found).
        noise = np.empty(2 * dims, np.float32)
        _fill_normals(noise, 2 * b * dims, 1.0, 0.0, k0, k1, o0, o1)
        for d in range(dims):
            sigma = min(max(vm.exp(log_sigma_x[b, d]), sigma_min), sigma_max)
            value = mu_x[b, d] + sigma * real(noise[2 * d])
            k = min(max(np.floor((value + one) * half_bins), zero), top)
            centre = (two * k + one) / bins - one
            draw[b, d] = centre
            if update:
                m = mu[b, d]
                mu[b, d] = m + gain * (state(centre) + spread * state(noise[2 * d + 1]) - m)


@numba.njit(**_KERNEL)
def _discrete_step(log_theta, logits, alpha, k0, k1, o0, o1, update, draw):
    for b in numba.prange(logits.shape[0]):
        _discrete_step_row(log_theta, logits, np.int64(b), alpha, k0, k1, o0, o1, update, draw)


@numba.njit(**_ROW_HELPER)
def _discrete_step_row(log_theta, logits, b, alpha, k0, k1, o0, o1, update, draw):
    """Sample b of _discrete_step. A row helper, so that the parallel kernel and its serial twin
    share one build of it (the kernel alone compiles in about the same time either way)."""
    vm.wide_vectors()
    _, dims, n_classes = logits.shape
    boost = alpha * n_classes
    base = b * dims * n_classes
    # The draw's uniforms (the uniform stream, row r = b D + d) in one vectorised loop.
    uniforms = np.empty(dims)
    for d in range(dims):
        r = np.uint64(b * dims + d)
        w0, _, _, _ = _words(k0, k1, o0, o1, _UNIFORM_ROW | (r >> px.SHIFT32), r)
        uniforms[d] = px.uniform(w0)
    e = np.empty((dims, n_classes), logits.dtype)
    maxima = np.empty(dims, logits.dtype)
    _shift_rows(logits, b, e, maxima)
    _exp_inplace(e)
    for d in range(dims):
        s_l = 0.0
        for k in range(n_classes):
            s_l += e[d, k]
        # Inverse CDF: the first k whose running sum of exp(l - max) exceeds u * total.
        # None exceeds a NaN threshold (a NaN logit row): that row draws 0, the count of
        # running sums <= threshold that the reference and Triton take.
        threshold = uniforms[d] * s_l
        chosen = n_classes - 1 if threshold == threshold else 0
        running = 0.0
        for k in range(n_classes):
            running += e[d, k]
            if running > threshold:
                chosen = k
                break
        draw[b, d] = chosen
    if update:
        theta = log_theta[b]
        noise = np.empty_like(theta)
        _fill_normals(noise.reshape(noise.size), base, math.sqrt(boost), -alpha, k0, k1, o0, o1)
        for d in range(dims):
            chosen = draw[b, d]
            for k in range(n_classes):
                theta[d, k] += noise[d, k] + (boost if k == chosen else 0.0)
        theta_max = np.empty(dims, log_theta.dtype)
        _shift_rows(log_theta, b, noise, theta_max)
        _exp_inplace(noise)
        logs = np.empty(dims)
        _row_sums(noise, logs)
        _log_inplace(logs)
        for d in range(dims):
            lse = theta_max[d] + logs[d]
            for k in range(n_classes):
                theta[d, k] -= lse


def _key(seed: int, offset: int):
    """(k0, k1, o0, o1), 32-bit words as Python ints; seed and offset may arrive as signed
    64-bit ints."""
    mask = 0xFFFFFFFF
    return seed & mask, (seed >> 32) & mask, offset & mask, (offset >> 32) & mask


def continuous_flow(x, t, sigma_1, seed, offset):
    acc = _acc(x)
    out = empty(x.shape, dtype=acc)
    _run(_continuous_flow, _NS_NOISE * x.numel(), _np(x, acc), _np(t, acc), math.log(sigma_1),
         *_key(seed, offset), out.numpy())
    return _cast(out, x.dtype)


def discrete_flow(x_index, t, beta_1, n_classes, seed, offset, log):
    """theta (or log theta) [B, D, K] in t's dtype."""
    out = empty((*x_index.shape, n_classes), dtype=t.dtype)
    _run(_discrete_flow, _NS_NOISE * out.numel(), x_index.numpy(), t.numpy(), float(beta_1),
         *_key(seed, offset), bool(log), out.numpy())
    return out


def discrete_nstep_loss_forward(x_index, logits, t, beta_1, n_steps, seed, offset):
    acc = _acc(logits)
    out = torch.empty(logits.shape[0], dtype=acc, device="cpu")
    _run(_discrete_nstep_loss_forward, 2 * _NS_NOISE * logits.numel(), x_index.numpy(),
         _np(logits, acc), _np(t, acc), float(beta_1), int(n_steps), *_key(seed, offset),
         out.numpy())
    return out


def discrete_nstep_loss_backward(grad, x_index, logits, t, beta_1, n_steps, seed, offset):
    acc = _acc(logits)
    out = empty(logits.shape, dtype=acc)
    _run(_discrete_nstep_loss_backward, 2 * _NS_NOISE * logits.numel(), _np(grad, acc),
         x_index.numpy(), _np(logits, acc), _np(t, acc), float(beta_1), int(n_steps),
         *_key(seed, offset), out.numpy())
    return _cast(out, logits.dtype)


def _inplace(tensor: torch.Tensor):
    """(NumPy array the kernel writes, tensor to copy back into `tensor` or None)."""
    if tensor.dtype in (torch.float32, torch.float64):
        return tensor.numpy(), None
    wide = tensor.to(torch.float32)
    return wide.numpy(), wide


def continuous_step(mu, rho, eps_hat, a, c, alpha, x_min, x_max, clamp, seed, offset):
    """mu [B, D] updated in place; rho [B] (compute dtype), a, c the x_hat coefficients."""
    acc = _acc(mu, eps_hat)
    mu_np, wide = _inplace(mu)
    _run(_continuous_step, _NS_NOISE * mu.numel(), mu_np, _np(rho, acc), _np(eps_hat, acc),
         float(a), float(c), 1.0 / math.sqrt(alpha), float(alpha), float(x_min), float(x_max),
         bool(clamp), *_key(seed, offset))
    if wide is not None:
        mu.copy_(wide)


def discretised_step(mu, rho, mu_x, log_sigma_x, n_bins, alpha, seed, offset, update, draw):
    """Draw bin centres into `draw` [B, D]; when `update`, mu [B, D] is updated in place."""
    acc = _acc(mu_x, log_sigma_x)
    mu_np, wide = _inplace(mu)
    draw_np, draw_wide = _inplace(draw)
    _run(_discretised_step, _NS_NOISE * mu_x.numel(), mu_np, _np(rho, acc), _np(mu_x, acc),
         _np(log_sigma_x, acc), int(n_bins), 1.0 / math.sqrt(alpha), float(alpha),
         *_key(seed, offset), bool(update), draw_np)
    if wide is not None and update:
        mu.copy_(wide)
    if draw_wide is not None:
        draw.copy_(draw_wide)


def discrete_step(log_theta, logits, alpha, seed, offset, update, draw):
    """Draw k ~ softmax(logits) into `draw` [B, D] (int64); when `update`, log_theta [B, D, K]
    is updated in place."""
    acc = _acc(logits)
    theta_np, wide = _inplace(log_theta)
    _run(_discrete_step, 2 * _NS_NOISE * logits.numel(), theta_np, _np(logits, acc), float(alpha),
         *_key(seed, offset), bool(update), draw.numpy())
    if wide is not None and update:
        log_theta.copy_(wide)
