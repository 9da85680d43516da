"""Bayesian Flow Networks in plain PyTorch: the executable form of ../shared/spec/bfn.md.

Inputs are validated and normalised by gfn_fast.bfn: continuous data is [B, D], discrete data is
class indices [B, D] (int64) with network logits / log theta [B, D, K], and `t` is a [B] tensor
in the compute dtype. Noise enters as explicit standard-normal tensors (`eps`) so the same math
can be checked against the kernels, which draw the same normals from counters (Philox).
Everything is differentiable by autograd; this module materialises whatever the spec's formulas
materialise (the [B, D, K] bin probabilities, for example), which is what the kernels avoid.
"""

import math

import torch

from gfn_fast.reference.balance import compute_dtype

SIGMA_MIN, SIGMA_MAX = 1e-3, 10.0


def _col(t: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1] for broadcasting over dimensions."""
    return t.reshape(-1, 1)


# ----------------------------------------------------------------------------------- schedules

def gamma(t: torch.Tensor, sigma_1: float) -> torch.Tensor:
    """gamma(t) = 1 - sigma_1^(2t), as -expm1(2 t ln sigma_1) (no cancellation at small t)."""
    return -torch.expm1(2.0 * t * math.log(sigma_1))


def continuous_alpha(i: torch.Tensor, n_steps: int, sigma_1: float) -> torch.Tensor:
    """alpha_i = sigma_1^(-2i/n) (1 - sigma_1^(2/n)) for step i in 1..n."""
    log_s = math.log(sigma_1)
    return torch.exp(-2.0 * i * log_s / n_steps) * -math.expm1(2.0 * log_s / n_steps)


def beta(t: torch.Tensor, beta_1: float) -> torch.Tensor:
    """beta(t) = beta_1 t^2."""
    return beta_1 * t * t


def discrete_alpha(i: torch.Tensor, n_steps: int, beta_1: float) -> torch.Tensor:
    """alpha_i = beta_1 (2i - 1) / n^2 for step i in 1..n."""
    return beta_1 * (2.0 * i - 1.0) / (n_steps * n_steps)


def continuous_loss_weight(t: torch.Tensor, sigma_1: float, n_steps: int) -> torch.Tensor:
    """Per-sample weight w of the loss w ||x - x_hat||^2.

    n_steps = 0 (continuous time): w = -ln(sigma_1) sigma_1^(-2t). Otherwise, with t = (i-1)/n,
    w = (n/2) alpha_i = (n/2) sigma_1^(-2t) (sigma_1^(-2/n) - 1), the same alpha_i as
    `continuous_alpha` written in t, so no rounding of t n is needed.
    """
    log_s = math.log(sigma_1)
    scale = torch.exp(-2.0 * t * log_s)
    if n_steps == 0:
        return -log_s * scale
    return 0.5 * n_steps * scale * math.expm1(-2.0 * log_s / n_steps)


# ----------------------------------------------------------------------------- continuous data

def continuous_flow(x: torch.Tensor, t: torch.Tensor, sigma_1: float, eps: torch.Tensor
                    ) -> torch.Tensor:
    """mu = gamma x + sqrt(gamma (1 - gamma)) eps, computed in the compute dtype."""
    dtype = compute_dtype(x)
    t = _col(t.to(dtype))
    g = gamma(t, sigma_1)
    # 1 - gamma = sigma_1^(2t) directly: the subtraction loses all digits as gamma -> 1.
    mu = g * x.to(dtype) + torch.sqrt(g * torch.exp(2.0 * t * math.log(sigma_1))) * eps.to(dtype)
    return mu.to(x.dtype)


def continuous_output(mu, eps_hat, t, sigma_1: float, t_min: float, x_range):
    """x_hat = mu / gamma - sqrt((1 - gamma) / gamma) eps_hat, 0 where t < t_min, optionally
    clamped to x_range = (x_min, x_max). Returned in the compute dtype."""
    dtype = compute_dtype(mu, eps_hat)
    t = _col(t.to(dtype))
    safe_t = torch.clamp(t, min=t_min) if t_min > 0 else t
    g = gamma(safe_t, sigma_1)
    x_hat = mu.to(dtype) / g - torch.sqrt(torch.exp(2.0 * safe_t * math.log(sigma_1)) / g) \
        * eps_hat.to(dtype)
    x_hat = torch.where(t < t_min, torch.zeros_like(x_hat), x_hat)
    if x_range is not None:
        x_hat = torch.clamp(x_hat, x_range[0], x_range[1])
    return x_hat


def continuous_loss(x, mu, eps_hat, t, sigma_1: float, n_steps: int, t_min: float, x_range):
    """Per-sample loss w(t) ||x - x_hat||^2 over dimensions, [B] in the compute dtype."""
    dtype = compute_dtype(x, mu, eps_hat)
    x_hat = continuous_output(mu, eps_hat, t, sigma_1, t_min, x_range)
    sq = ((x.to(dtype) - x_hat) ** 2).sum(dim=1)
    return continuous_loss_weight(t.to(dtype), sigma_1, n_steps) * sq


def continuous_update(mu, rho, y, alpha):
    """Bayesian update with accuracy alpha and sender sample y: rho' = rho + alpha,
    mu' = mu + (alpha / rho') (y - mu) (= (rho mu + alpha y) / rho'). mu, y: [B, D]; rho, alpha:
    [B, 1] or [B, D] (broadcast). Returned in the compute dtype."""
    dtype = compute_dtype(mu, rho, y, alpha)
    rho_new = rho.to(dtype) + alpha.to(dtype)
    mu = mu.to(dtype)
    return mu + alpha.to(dtype) / rho_new * (y.to(dtype) - mu), rho_new


# ----------------------------------------------------------------------------- discretised data

def bin_centres(n_bins: int, dtype, device) -> torch.Tensor:
    """k_c = (2k - 1)/K - 1 for k = 1..K."""
    k = torch.arange(1, n_bins + 1, dtype=dtype, device=device)
    return (2.0 * k - 1.0) / n_bins - 1.0


def normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


def discretised_sigma(log_sigma_x: torch.Tensor) -> torch.Tensor:
    """clamp(exp(log_sigma_x), 1e-3, 10). The exponent is capped first, far above ln 10, where
    the clamp holds anyway: exp overflowing to inf (log sigma > 88.7 in float32) would make the
    clamp's zero gradient 0 * inf = NaN."""
    return torch.clamp(torch.exp(log_sigma_x.clamp(max=30.0)), SIGMA_MIN, SIGMA_MAX)


def discretised_probs(mu_x, log_sigma_x, n_bins: int):
    """[B, D, K] bin probabilities p(k) = Phi((k_r - mu)/sigma) - Phi((k_l - mu)/sigma), first
    left edge -inf, last right edge +inf, sigma = clamp(exp(log_sigma_x), 1e-3, 10). A bin right
    of the mean takes the difference of upper tails, (1 - Phi(z_l)) - (1 - Phi(z_r)), so that
    far-tail bins keep their relative precision instead of cancelling to 0 (as Numba and CUDA)."""
    dtype = compute_dtype(mu_x, log_sigma_x)
    mu = mu_x.to(dtype).unsqueeze(-1)
    sigma = discretised_sigma(log_sigma_x.to(dtype)).unsqueeze(-1)
    edges = torch.arange(0, n_bins + 1, dtype=dtype, device=mu_x.device) * (2.0 / n_bins) - 1.0
    z = (edges - mu) / sigma
    cdf, upper = normal_cdf(z), normal_cdf(-z)
    cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf[..., 1:-1], torch.ones_like(cdf[..., :1])],
                    dim=-1)
    upper = torch.cat([torch.ones_like(upper[..., :1]), upper[..., 1:-1],
                       torch.zeros_like(upper[..., :1])], dim=-1)
    right_of_mean = z[..., :-1] > 0  # the left edge (never the first bin's: its z is finite)
    right_of_mean[..., 0] = False
    return torch.where(right_of_mean, upper[..., :-1] - upper[..., 1:],
                       cdf[..., 1:] - cdf[..., :-1])


def discretised_output(mu_x, log_sigma_x, n_bins: int):
    """x_hat = sum_k p(k) k_c, [B, D] (through the materialised probabilities)."""
    probs = discretised_probs(mu_x, log_sigma_x, n_bins)
    return (probs * bin_centres(n_bins, probs.dtype, probs.device)).sum(dim=-1)


def discretised_loss(x, mu_x, log_sigma_x, t, sigma_1: float, n_bins: int, n_steps: int):
    """Per-sample w(t) ||x - x_hat||^2 with x_hat the mean of the discretised output, [B]."""
    dtype = compute_dtype(x, mu_x, log_sigma_x)
    x_hat = discretised_output(mu_x, log_sigma_x, n_bins)
    sq = ((x.to(dtype) - x_hat) ** 2).sum(dim=1)
    return continuous_loss_weight(t.to(dtype), sigma_1, n_steps) * sq


def discretised_draw(mu_x, log_sigma_x, n_bins: int, eps):
    """A draw k ~ p_O returned as its bin centre k_c: bins partition the real line, so binning
    a Gaussian draw mu + sigma eps samples p(k) exactly."""
    dtype = compute_dtype(mu_x, log_sigma_x)
    value = mu_x.to(dtype) + discretised_sigma(log_sigma_x.to(dtype)) * eps.to(dtype)
    k = torch.clamp(torch.floor((value + 1.0) * (0.5 * n_bins)), 0, n_bins - 1)
    return (2.0 * k + 1.0) / n_bins - 1.0


# -------------------------------------------------------------------------------- discrete data

def discrete_sender_logits(x_index, alpha, n_classes: int, eps):
    """y = alpha (K e_x - 1) + sqrt(alpha K) eps, [B, D, K]; alpha is [B] (or [B, D])."""
    dtype = eps.dtype
    alpha = alpha.to(dtype)
    alpha = alpha.reshape(alpha.shape + (1,) * (3 - alpha.dim()))
    one_hot = torch.nn.functional.one_hot(x_index, n_classes).to(dtype)
    return alpha * (n_classes * one_hot - 1.0) + torch.sqrt(alpha * n_classes) * eps


def discrete_flow(x_index, t, beta_1: float, n_classes: int, eps, log: bool):
    """theta = softmax(y), y ~ N(beta(t) (K e_x - 1), beta(t) K I); log theta when `log`."""
    y = discrete_sender_logits(x_index, beta(t.to(eps.dtype), beta_1), n_classes, eps)
    return torch.log_softmax(y, dim=-1) if log else torch.softmax(y, dim=-1)


def discrete_loss(x_index, logits, t, beta_1: float):
    """Continuous-time loss K beta_1 t ||e_x - softmax(logits)||^2 over D and K, [B]."""
    dtype = compute_dtype(logits)
    n_classes = logits.shape[-1]
    e_hat = torch.softmax(logits.to(dtype), dim=-1)
    hot = torch.nn.functional.one_hot(x_index, n_classes).bool()
    # ||e_x - e_hat||^2 = sum_{k != x} e_hat_k^2 + q^2 with q = sum_{k != x} e_hat_k = 1 - e_hat_x:
    # forming 1 - e_hat_x cancels when e_hat_x nears 1 (3e-4 relative error at a 30-logit
    # margin in float64), the sum of the other classes does not.
    others = e_hat.masked_fill(hot, 0.0)
    q = others.sum(dim=-1)
    sq = ((others ** 2).sum(dim=-1) + q ** 2).sum(dim=1)
    return n_classes * beta_1 * t.to(dtype) * sq


def discrete_nstep_alpha(t, beta_1: float, n_steps: int):
    """alpha_i with i = t n + 1: beta_1 (2 t n + 1) / n^2."""
    return beta_1 * (2.0 * t * n_steps + 1.0) / (n_steps * n_steps)


def discrete_nstep_loss(x_index, logits, t, beta_1: float, n_steps: int, eps):
    """One-sample estimate of L_n = n E_y[ln p_S(y | x) - ln p_R(y)], [B].

    y ~ p_S(. | x, alpha_i) from eps [B, D, K]. With all K Gaussians sharing the covariance
    alpha K I, ln N(y | alpha (K e_k - 1), alpha K I) = y_k + (terms equal for every k), so
    per dimension ln p_S - ln p_R = y_x - logsumexp_k(ln p_O(k) + y_k): no [K, K] products.
    """
    dtype = compute_dtype(logits)
    n_classes = logits.shape[-1]
    alpha = discrete_nstep_alpha(t.to(dtype), beta_1, n_steps)
    y = discrete_sender_logits(x_index, alpha, n_classes, eps.to(dtype))
    log_p = torch.log_softmax(logits.to(dtype), dim=-1)
    y_x = torch.gather(y, -1, x_index.unsqueeze(-1)).squeeze(-1)
    per_dim = y_x - torch.logsumexp(log_p + y, dim=-1)
    return n_steps * per_dim.sum(dim=1)


def discrete_update(log_theta, y):
    """log theta' = log theta + y - logsumexp(log theta + y) over K (never exp(y) in linear
    space). Returned in the compute dtype."""
    dtype = compute_dtype(log_theta, y)
    z = log_theta.to(dtype) + y.to(dtype)
    return z - torch.logsumexp(z, dim=-1, keepdim=True)


def categorical_draw(logits, uniform):
    """k ~ softmax(logits) by inverse CDF with one uniform per (b, d): the first k with
    cumsum p > u * sum p (clamped to K - 1)."""
    dtype = compute_dtype(logits)
    probs = torch.softmax(logits.to(dtype), dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    target = uniform.to(dtype).unsqueeze(-1) * cdf[..., -1:]
    k = (cdf <= target).sum(dim=-1)
    return torch.clamp(k, max=logits.shape[-1] - 1)


# --------------------------------------------------------------------------------------- noise
# Contract (on top of gfn_fast/reference/_philox.py). Normals: normal i (i >= 0) is output
# i & 3 of Philox block j = i >> 2, read at (row = j >> 32, col = j mod 2^32); the four outputs
# of a block are (cos, sin) of Box-Muller on words (0, 1), then (cos, sin) on words (2, 3).
# Every word is used and one log / sqrt serves two normals: a CPU draws a normal for a quarter
# of a Philox block.
#   * One normal per element (flows, continuous step, sender noise over [B, D, K]): element i
#     (the flat index over the op's tensor) takes normal i.
#   * Two per element (discretised step: the draw and the sender): element i takes normals 2i
#     and 2i + 1, the (cos, sin) pair of words (2 (i & 1), 2 (i & 1) + 1) of block i >> 1.
#   * Uniforms (the discrete step's draw, one per (b, d) row r = b D + d): word 0 of the block at
#     (row = UNIFORM_ROW | (r >> 32), col = r mod 2^32). Normal blocks never set bit 31 of the
#     row (that needs i >= 2^65), so the two streams are disjoint.
UNIFORM_ROW = 1 << 31


def _normal_quads(seed: int, offset: int, n_blocks: int, device) -> torch.Tensor:
    """[n_blocks, 4] float32: the four normals of blocks 0..n_blocks-1."""
    from gfn_fast.reference import _philox

    block = torch.arange(n_blocks, dtype=torch.int64, device=device)
    words = _philox.philox4x32(seed, offset, block >> 32, block & _philox.MASK32)
    first = _philox.normal_pair(words[..., 0], words[..., 1])
    second = _philox.normal_pair(words[..., 2], words[..., 3])
    return torch.stack((first[0], first[1], second[0], second[1]), dim=-1)


def philox_normals(seed: int, offset: int, shape, device) -> torch.Tensor:
    """float32 normals of `shape` for flat indices 0..prod(shape)-1 (one per element)."""
    count = math.prod(shape)
    quads = _normal_quads(seed, offset, (count + 3) // 4, device)
    return quads.reshape(-1)[:count].reshape(shape)


def philox_normal_pairs(seed: int, offset: int, shape, device) -> tuple:
    """(normals 2i, normals 2i + 1), each float32 of `shape` (two per element)."""
    count = math.prod(shape)
    pairs = _normal_quads(seed, offset, (count + 1) // 2, device).reshape(-1, 2)[:count]
    return pairs[:, 0].reshape(shape), pairs[:, 1].reshape(shape)


def philox_uniforms(seed: int, offset: int, shape, device) -> torch.Tensor:
    """float32 uniforms of `shape` (one per element, from the uniform stream)."""
    from gfn_fast.reference import _philox

    index = torch.arange(math.prod(shape), dtype=torch.int64, device=device)
    words = _philox.philox4x32(seed, offset, UNIFORM_ROW | (index >> 32), index & _philox.MASK32)
    return _philox.uniform(words[..., 0]).reshape(shape)


def continuous_step(mu, rho, eps_hat, t, alpha: float, sigma_1: float, t_min: float, x_range,
                    eps):
    """One generation step after the network: x_hat from eps_hat, sender y = x_hat +
    eps / sqrt(alpha), Bayesian update. Returns (mu', rho') (mu' in the compute dtype)."""
    x_hat = continuous_output(mu, eps_hat, t, sigma_1, t_min, x_range)
    y = x_hat + eps.to(x_hat.dtype) / math.sqrt(alpha)
    alpha_t = torch.full_like(rho, alpha)
    return continuous_update(mu, rho.reshape(-1, 1), y, alpha_t.reshape(-1, 1))


def discretised_step(mu, rho, mu_x, log_sigma_x, alpha: float, n_bins: int, eps_draw, eps):
    """Draw k ~ p_O (as its bin centre), sender y = k_c + eps / sqrt(alpha), update."""
    centre = discretised_draw(mu_x, log_sigma_x, n_bins, eps_draw)
    y = centre + eps.to(centre.dtype) / math.sqrt(alpha)
    alpha_t = torch.full_like(rho, alpha)
    return continuous_update(mu, rho.reshape(-1, 1), y, alpha_t.reshape(-1, 1))


def discrete_step(log_theta, logits, alpha: float, uniform, eps):
    """Draw k ~ p_O = softmax(logits) (uniform [B, D]), sender y ~ N(alpha (K e_k - 1),
    alpha K I) from eps [B, D, K], log-space update. Returns (log theta', k)."""
    n_classes = logits.shape[-1]
    k = categorical_draw(logits, uniform)
    alpha_t = torch.full(logits.shape[:1], alpha, dtype=compute_dtype(logits),
                         device=logits.device)
    y = discrete_sender_logits(k, alpha_t, n_classes, eps.to(alpha_t.dtype))
    return discrete_update(log_theta, y), k
