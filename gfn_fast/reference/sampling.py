"""Masked, logit-scaled, epsilon-exploring action sampling in plain PyTorch: the executable form
of ../shared/spec/sampling.md.

Inputs are validated and normalised by gfn_fast.sampling: `logits` [N, A] (any strides),
`allowed` [N, A] bool or None (packed masks are unpacked first), `scale`, `inv_temperature` and
`epsilon` 0-dim or [N] tensors of the compute dtype, `clip` a (lo, hi) pair or None.

    z_{r,a} = clip(scale_r * logits_{r,a}) * inv_temperature_r     (a allowed; -inf otherwise)

The kernels compute exactly these float operations in this order (multiply, clamp, multiply),
so the perturbed keys below are bitwise those of every backend up to the last bits of `log`.

Sampling (randomness contract in gfn_fast/reference/_philox.py):
  * policy branch: a = argmax over allowed a of z_{r,a} + G_{r,a}, G = gumbel(word 2(a&1) of block
    (r, a >> 1)); NaN keys count as -inf; ties go to the smallest index;
  * uniform branch: a = argmax over allowed a of the raw word 2(a&1)+1 of block (r, a >> 1)
    (iid uint32 keys: uniform over the allowed set; ties to the smallest index);
  * the uniform branch is taken iff (c >> 8) * 2^-24 < epsilon_r, c = word 0 of block
    (r, COIN_COL): P = ceil(2^24 epsilon) / 2^24, exactly 0 at epsilon = 0 and 1 at epsilon = 1.
"""

import math

import torch

from gfn_fast.reference import _philox

NEG_INF = -math.inf


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def unpack_mask(packed: torch.Tensor, actions: int) -> torch.Tensor:
    """uint8 [N, ceil(A/8)] -> bool [N, A]; bit j of byte k is action 8k + j (LSB first)."""
    bits = torch.arange(8, device=packed.device, dtype=torch.uint8)
    unpacked = (packed.unsqueeze(-1) >> bits) & 1
    # the widths spelled out: reshape(0, -1) is ambiguous, and N = 0 is a valid batch
    return unpacked.reshape(packed.shape[0], 8 * packed.shape[1])[:, :actions].bool()


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """bool [N, A] -> uint8 [N, ceil(A/8)], bit j of byte k = action 8k + j (LSB first)."""
    rows, actions = mask.shape
    padded = torch.zeros(rows, (actions + 7) // 8 * 8, dtype=torch.uint8, device=mask.device)
    padded[:, :actions] = mask.to(torch.uint8)
    weights = (1 << torch.arange(8, device=mask.device, dtype=torch.int32)).to(torch.uint8)
    return (padded.reshape(rows, (actions + 7) // 8, 8) * weights).sum(
        -1, dtype=torch.int32).to(torch.uint8)


def scaled_logits(logits, allowed, scale, inv_temperature, clip, dtype) -> torch.Tensor:
    """z [N, A] in `dtype`, -inf on masked entries (differentiable w.r.t. logits and scale).

    The gradient w.r.t. scale is sum_a dz_a * logit_a over the entries where z depends on the
    scale: masked entries are zeroed before the product, entries where the clip binds take the
    clipped value without it, and infinite logits take their product without a gradient, so
    that none of them turns a zero gradient into 0 * inf = NaN (the kernels skip zero terms)."""
    z = logits.to(dtype)
    if allowed is not None:
        z = z.masked_fill(~allowed, 0.0)
    if scale is not None:
        scale = _per_row(scale, dtype)
        raw = (scale * z).detach()
        # the entries whose product moves with the scale: inside the clip where there is one
        # (which also leaves out infinite logits), else finite logits. An infinite logit's
        # product carries no gradient: a -inf one has probability 0 at every scale > 0, and
        # 0 * -inf would make the scale's gradient NaN
        moves = (raw >= clip[0]) & (raw <= clip[1]) if clip is not None else torch.isfinite(z)
        z = torch.where(moves, scale * torch.where(moves, z, torch.zeros_like(z)), raw)
    if clip is not None:
        z = torch.clamp(z, clip[0], clip[1])
    if inv_temperature is not None:
        z = z * _per_row(inv_temperature, dtype)
    if allowed is not None:
        z = z.masked_fill(~allowed, NEG_INF)
    return z


def _per_row(value: torch.Tensor, dtype) -> torch.Tensor:
    value = value.to(dtype)
    return value if value.dim() == 0 else value[:, None]


def _first_argmax(keys: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Smallest allowed index attaining the max of `keys` over allowed entries, per row."""
    keys = torch.where(allowed, keys, torch.full_like(keys, NEG_INF))
    best = keys.amax(dim=1, keepdim=True)
    columns = torch.arange(keys.shape[1], device=keys.device).expand_as(keys)
    hit = allowed & (keys == best)
    return torch.where(hit, columns, keys.shape[1]).amin(dim=1).clamp(max=keys.shape[1] - 1)


def noise(seed: int, offset: int, rows: int, actions: int, device):
    """(Gumbel [N, A] float32, uniform-branch keys [N, A] int64, coin words [N] int64)."""
    r = torch.arange(rows, dtype=torch.int64, device=device)[:, None]
    a = torch.arange(actions, dtype=torch.int64, device=device)[None, :]
    words = _philox.philox4x32(seed, offset, r, a >> 1)
    word = 2 * (a & 1)
    gumbel_bits = torch.gather(words, 2, word.expand(rows, -1).unsqueeze(-1)).squeeze(-1)
    uniform_keys = torch.gather(words, 2, (word + 1).expand(rows, -1).unsqueeze(-1)).squeeze(-1)
    coin = _philox.philox4x32(seed, offset, r[:, 0], _philox.COIN_COL)[:, 0]
    return _philox.gumbel(gumbel_bits), uniform_keys, coin


def log_mixture(log_pi, epsilon, count):
    """log((1 - eps) exp(log_pi) + eps / count), stable at eps = 0 and eps = 1."""
    eps = epsilon.to(log_pi.dtype).expand_as(log_pi)
    a = torch.where(eps < 1, torch.log1p(-eps) + log_pi, torch.full_like(log_pi, NEG_INF))
    b = torch.where(eps > 0, torch.log(eps) - torch.log(count.to(log_pi.dtype)),
                    torch.full_like(log_pi, NEG_INF))
    return torch.logaddexp(a, b)


def entropy(z: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """H(pi) = -sum_a p_a (z_a - lse) over entries with p_a != 0 (a NaN row stays NaN)."""
    log_p = z - lse[:, None]
    p = torch.exp(log_p)
    return -torch.where(p == 0, torch.zeros_like(p), p * log_p).sum(dim=1)


def sample_actions(logits, allowed, scale, inv_temperature, clip, epsilon, seed, offset,
                   want_log_mu, want_entropy):
    """(actions [N] int64, log_pi, log_mu or None, entropy or None), log-probs in the compute
    dtype (float64 for float64 logits, else float32)."""
    rows, actions = logits.shape
    dtype = compute_dtype(logits)
    if allowed is None:
        allowed = torch.ones(rows, actions, dtype=torch.bool, device=logits.device)
    z = scaled_logits(logits, allowed, scale, inv_temperature, clip, dtype)
    gumbel, uniform_keys, coin = noise(seed, offset, rows, actions, logits.device)
    keys = z + gumbel.to(dtype)
    keys = torch.where(torch.isnan(keys), torch.full_like(keys, NEG_INF), keys)
    policy_choice = _first_argmax(keys, allowed)
    uniform_choice = _first_argmax(uniform_keys.to(torch.float64), allowed)
    eps = (epsilon if epsilon is not None else
           torch.zeros((), dtype=dtype, device=logits.device)).to(dtype)
    explore = ((coin >> 8).to(dtype) * 2.0 ** -24) < eps.to(logits.device)
    chosen = torch.where(explore, uniform_choice, policy_choice)
    lse = torch.logsumexp(z, dim=1)
    log_pi = z.gather(1, chosen[:, None]).squeeze(1) - lse
    log_mu = None
    if want_log_mu:
        log_mu = log_mixture(log_pi, eps, allowed.sum(dim=1))
    return chosen, log_pi, log_mu, entropy(z, lse) if want_entropy else None


def action_log_prob(logits, actions, allowed, scale, inv_temperature, clip):
    """log pi_r(a_r) [N] in the compute dtype, differentiable w.r.t. logits and scale."""
    z = scaled_logits(logits, allowed, scale, inv_temperature, clip, compute_dtype(logits))
    return z.gather(1, actions[:, None]).squeeze(1) - torch.logsumexp(z, dim=1)


def distribution(logits, allowed, scale, inv_temperature, clip, epsilon):
    """(pi [N, A], mu [N, A]) in float64: the exact policy and behaviour distributions."""
    rows, actions = logits.shape
    if allowed is None:
        allowed = torch.ones(rows, actions, dtype=torch.bool, device=logits.device)
    z = scaled_logits(logits, allowed, scale, inv_temperature, clip, torch.float64)
    pi = torch.softmax(z, dim=1)
    eps = (epsilon if epsilon is not None else
           torch.zeros((), device=logits.device)).to(torch.float64)
    eps = eps if eps.dim() == 0 else eps[:, None]
    uniform = allowed.to(torch.float64) / allowed.sum(dim=1, keepdim=True)
    return pi, (1 - eps) * pi + eps * uniform


def _merge_logsumexp(m: torch.Tensor, s: torch.Tensor):
    """Combine per-chunk (max, sum exp(z - max)) partials [N, S] -> (max [N], sum [N], weights
    exp(m - max) [N, S])."""
    top = m.amax(dim=1)
    weight = torch.where(m == NEG_INF, torch.zeros_like(m), torch.exp(m - top[:, None]))
    return top, (weight * s).sum(dim=1), weight


def _merge_argmax(keys: torch.Tensor, index: torch.Tensor, values: torch.Tensor, width: int):
    """Per row, the smallest index among the chunks attaining the largest key (chunks with no
    candidate carry index == width) and the value stored with it."""
    best = keys.amax(dim=1, keepdim=True)
    hit = (keys == best) & (index < width)
    chosen = torch.where(hit, index, width).amin(dim=1)
    slot = (hit & (index == chosen[:, None])).to(torch.int8).argmax(dim=1)
    return chosen, values.gather(1, slot[:, None]).squeeze(1)


def finish_partials(part_f: torch.Tensor, part_i: torch.Tensor, epsilon: torch.Tensor,
                    width: int, want_log_mu: bool, want_entropy: bool):
    """Combine the per-chunk partials of a row split over S programs (GPU backends):
    part_f [6, N, S] = (max, sum exp, entropy tilt, Gumbel key, z at it, z at uniform key),
    part_i [5, N, S] = (Gumbel index, uniform key, uniform index, allowed count, explore flag).
    Returns (actions, log_pi, log_mu or empty, entropy or empty, lse) like the kernels."""
    m, s, t, g_key, g_z, u_z = part_f.unbind(0)
    g_idx, u_key, u_idx, count, explore = part_i.unbind(0)
    top, total, weight = _merge_logsumexp(m, s)
    shift = torch.where(m == NEG_INF, torch.zeros_like(m), m - top[:, None])
    tilt = (weight * (t + shift * s)).sum(dim=1)
    lse = top + torch.log(total)
    g_choice, g_value = _merge_argmax(g_key, g_idx, g_z, width)
    u_choice, u_value = _merge_argmax(u_key, u_idx, u_z, width)
    take_uniform = explore[:, 0].bool()
    chosen = torch.where(take_uniform, u_choice, g_choice)
    chosen = torch.where(chosen >= width, torch.zeros_like(chosen), chosen)
    log_pi = torch.where(take_uniform, u_value, g_value) - lse
    empty = log_pi.new_empty(0)
    log_mu = log_mixture(log_pi, epsilon, count.sum(dim=1)) if want_log_mu else empty
    entropy = torch.log(total) - tilt / total if want_entropy else empty
    return chosen, log_pi, log_mu, entropy, lse


def finish_log_prob_partials(part: torch.Tensor):
    """part [3, N, S] = (max, sum exp, z at the action) -> (log_pi, lse)."""
    m, s, z_action = part.unbind(0)
    top, total, _ = _merge_logsumexp(m, s)
    lse = top + torch.log(total)
    return z_action[:, 0] - lse, lse
