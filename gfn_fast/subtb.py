"""Detailed balance (DB) and sub-trajectory balance (SubTB): public functions, torch ops, autograd.

Math: ../shared/spec/balance.md. Same structure as gfn_fast.balance: validate
(gfn_fast._checks), resolve the backend, then either the plain-PyTorch reference under autograd
or the torch ops below, whose kernels live in gfn_fast.{cpu,kernels,cuda}.subtb.

Memory: nothing of size O(B T^2) is ever allocated. DB saves nothing but its inputs (the
backward recomputes each residual). SubTB saves the shifted potentials a_b(k) = F_b(k) - F_b(0) -
P_b(k), k = 0..n_b ([B * (T + 1)], or [N + B] packed, in the accumulation dtype); every residual
is d_bij = a_b(i) - a_b(j). Squared and half-squared losses with geometric or equal weights use
O(T) recurrences per trajectory; other losses and the `geometric` weighting (whose per-length
normalisation is not geometric) loop over pairs in registers.

SubTB weightings reduce to per-pair weights row_weight[b] * lambda^(j-i) (geometric_within,
equal_within, equal), or table[j-i-1] (geometric), computed here from the lengths with torch ops on
the device (no host sync: the `geometric` weighting's M = max_b n_b stays a device tensor).
`TB` and `DB` weightings are the trajectory-balance op with log Z_b = F_b(0), and the DB op.
"""

import math

import torch

from gfn_fast import _backends, _checks, _ops
from gfn_fast.balance import _sum_to, _tb_forward
from gfn_fast.reference import subtb as reference
from gfn_fast.reference.balance import MEAN, NONE, compute_dtype
from gfn_fast.reference.losses import HALF_SQUARED, SQUARED

# ------------------------------------------------------------------ helpers


def _transition_count(lengths: torch.Tensor, packed: bool, log_pf: torch.Tensor):
    return log_pf.shape[0] if packed else lengths.sum()


def _potentials_size(log_pf: torch.Tensor, packed: bool, batch: int) -> int:
    return log_pf.shape[0] + batch if packed else batch * (log_pf.shape[1] + 1)


def _need(tensor, flag: bool):
    return flag and tensor is not None


def _fake_grads(log_pf, has_pb, log_reward, need_log_reward, need_beta):
    """Shapes of [grad_log_pf, grad_log_pb, grad_flow, grad_log_reward, grad_beta] (absent ones
    empty; each its own tensor, since custom ops may not return aliases)."""
    batch = log_reward.shape[0]

    def per_row(needed):
        return log_reward.new_empty(batch if needed else 0)

    return [torch.empty_like(log_pf), torch.empty_like(log_pf) if has_pb else per_row(False),
            torch.empty_like(log_pf), per_row(need_log_reward), per_row(need_beta)]


# ------------------------------------------------------------------ detailed balance op


@_ops.custom_op("gfn_fast::detailed_balance_fwd", mutates_args=())
def _db_forward(log_pf: torch.Tensor, log_pb: torch.Tensor | None, log_flow: torch.Tensor,
                log_state_reward: torch.Tensor | None, lengths: torch.Tensor,
                log_reward: torch.Tensor, beta: torch.Tensor | None, packed: bool,
                clip_min: float, loss_id: int, loss_param: float, reduction: int, backend: str
                ) -> torch.Tensor:
    impl = _backends.module(backend, "subtb")
    rows, steps = impl.db_forward(log_pf, log_pb, log_flow, log_state_reward, lengths, packed,
                                  log_reward, beta, clip_min, loss_id, loss_param,
                                  reduction == NONE)
    if reduction == NONE:
        return steps
    total = rows.sum()
    if reduction == MEAN:
        total = total / _transition_count(lengths, packed, log_pf)
    return total


@_db_forward.register_fake
def _(log_pf, log_pb, log_flow, log_state_reward, lengths, log_reward, beta, packed, clip_min,
      loss_id, loss_param, reduction, backend):
    return log_reward.new_empty(log_pf.shape if reduction == NONE else ())


@_ops.custom_op("gfn_fast::detailed_balance_bwd", mutates_args=())
def _db_backward(grad: torch.Tensor, log_pf: torch.Tensor, log_pb: torch.Tensor | None,
                 log_flow: torch.Tensor, log_state_reward: torch.Tensor | None,
                 lengths: torch.Tensor, log_reward: torch.Tensor, beta: torch.Tensor | None,
                 packed: bool, clip_min: float, loss_id: int, loss_param: float, reduction: int,
                 need_log_reward: bool, need_beta: bool, backend: str) -> list[torch.Tensor]:
    """[grad_log_pf, grad_log_pb, grad_flow (of log_flow and log_state_reward alike),
    grad_log_reward, grad_beta]; absent ones are empty tensors."""
    impl = _backends.module(backend, "subtb")
    if reduction == NONE:
        grad_steps = grad
    else:
        scale = grad / _transition_count(lengths, packed, log_pf) if reduction == MEAN else grad
        grad_steps = scale.to(log_reward.dtype).expand(log_pf.shape)
    grads = impl.db_backward(grad_steps, log_pf, log_pb, log_flow, log_state_reward, lengths,
                             packed, log_reward, beta, clip_min, loss_id, loss_param,
                             need_log_reward, need_beta)
    return [g if g is not None else log_reward.new_empty(0) for g in grads]


@_db_backward.register_fake
def _(grad, log_pf, log_pb, log_flow, log_state_reward, lengths, log_reward, beta, packed,
      clip_min, loss_id, loss_param, reduction, need_log_reward, need_beta, backend):
    return _fake_grads(log_pf, log_pb is not None, log_reward, need_log_reward, need_beta)


def _db_setup_context(ctx, inputs, output):
    (log_pf, log_pb, log_flow, log_state_reward, lengths, log_reward, beta, packed, clip_min,
     loss_id, loss_param, reduction, backend) = inputs
    ctx.save_for_backward(*_ops.saveable(log_pf, log_pb, log_flow, log_state_reward, lengths,
                                         log_reward, beta))
    ctx.beta_shape = None if beta is None else beta.shape
    ctx.config = (packed, clip_min, loss_id, loss_param, reduction, backend)


def _db_autograd(ctx, grad):
    log_pf, log_pb, log_flow, log_state_reward, lengths, log_reward, beta = ctx.saved_tensors
    packed, clip_min, loss_id, loss_param, reduction, backend = ctx.config
    needs = ctx.needs_input_grad
    grad_pf, grad_pb, grad_flow, grad_log_reward, grad_beta = _db_backward(
        grad, log_pf, log_pb, log_flow, log_state_reward, lengths, log_reward, beta, packed,
        clip_min, loss_id, loss_param, reduction, needs[5], _need(beta, needs[6]), backend)
    return _input_grads(ctx, needs, log_pb, log_state_reward, beta, grad_pf, grad_pb, grad_flow,
                        grad_log_reward, grad_beta, 13)


def _input_grads(ctx, needs, log_pb, log_state_reward, beta, grad_pf, grad_pb, grad_flow,
                 grad_log_reward, grad_beta, n_inputs):
    """Gradients in the op input order (log_pf, log_pb, log_flow, log_state_reward, lengths,
    log_reward, beta, then non-differentiable arguments)."""
    return (grad_pf if needs[0] else None,
            grad_pb if _need(log_pb, needs[1]) else None,
            grad_flow if needs[2] else None,
            grad_flow if _need(log_state_reward, needs[3]) else None,
            None,
            grad_log_reward if needs[5] else None,
            _sum_to(grad_beta, ctx.beta_shape) if _need(beta, needs[6]) else None,
            *([None] * (n_inputs - 7)))


_db_forward.register_autograd(_db_autograd, setup_context=_db_setup_context)


# ------------------------------------------------------------------ sub-trajectory balance op


@_ops.custom_op("gfn_fast::subtrajectory_balance_fwd", mutates_args=())
def _subtb_forward(log_pf: torch.Tensor, log_pb: torch.Tensor | None, log_flow: torch.Tensor,
                   log_state_reward: torch.Tensor | None, lengths: torch.Tensor,
                   log_reward: torch.Tensor, beta: torch.Tensor | None, row_weight: torch.Tensor,
                   table: torch.Tensor | None, packed: bool, clip_min: float, loss_id: int,
                   loss_param: float, lamda: float, running: bool, backend: str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (loss, potentials a)."""
    impl = _backends.module(backend, "subtb")
    rows, potentials = impl.subtb_forward(
        log_pf, log_pb, log_flow, log_state_reward, lengths, packed, log_reward, beta, clip_min,
        loss_id, loss_param, lamda, row_weight, table, running,
        _potentials_size(log_pf, packed, log_reward.shape[0]))
    return rows.sum(), potentials


@_subtb_forward.register_fake
def _(log_pf, log_pb, log_flow, log_state_reward, lengths, log_reward, beta, row_weight, table,
      packed, clip_min, loss_id, loss_param, lamda, running, backend):
    size = _potentials_size(log_pf, packed, log_reward.shape[0])
    return log_reward.new_empty(()), log_reward.new_empty(size)


@_ops.custom_op("gfn_fast::subtrajectory_balance_bwd", mutates_args=())
def _subtb_backward(grad_loss: torch.Tensor, potentials: torch.Tensor, lengths: torch.Tensor,
                    log_pf: torch.Tensor, has_pb: bool, log_reward: torch.Tensor,
                    beta: torch.Tensor | None, row_weight: torch.Tensor,
                    table: torch.Tensor | None, packed: bool, clip_min: float, loss_id: int,
                    loss_param: float, lamda: float, running: bool, need_log_reward: bool,
                    need_beta: bool, backend: str) -> list[torch.Tensor]:
    """[grad_log_pf, grad_log_pb, grad_flow, grad_log_reward, grad_beta]; absent ones empty."""
    impl = _backends.module(backend, "subtb")
    grads = impl.subtb_backward(grad_loss.to(log_reward.dtype), potentials, lengths, packed,
                                log_pf, has_pb, log_reward, beta, clip_min, loss_id, loss_param,
                                lamda, row_weight, table, running, need_log_reward, need_beta)
    return [g if g is not None else log_reward.new_empty(0) for g in grads]


@_subtb_backward.register_fake
def _(grad_loss, potentials, lengths, log_pf, has_pb, log_reward, beta, row_weight, table,
      packed, clip_min, loss_id, loss_param, lamda, running, need_log_reward, need_beta,
      backend):
    return _fake_grads(log_pf, has_pb, log_reward, need_log_reward, need_beta)


def _subtb_setup_context(ctx, inputs, output):
    (log_pf, log_pb, log_flow, log_state_reward, lengths, log_reward, beta, row_weight, table,
     packed, clip_min, loss_id, loss_param, lamda, running, backend) = inputs
    ctx.save_for_backward(*_ops.saveable(output[1], lengths, log_pf, log_reward, beta,
                                         row_weight, table))
    ctx.has_pb = log_pb is not None
    ctx.has_sr = log_state_reward is not None
    ctx.beta_shape = None if beta is None else beta.shape
    ctx.config = (packed, clip_min, loss_id, loss_param, lamda, running, backend)
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # see _ops.Op.register_autograd


def _subtb_autograd(ctx, grad_loss, _grad_potentials):
    potentials, lengths, log_pf, log_reward, beta, row_weight, table = ctx.saved_tensors
    packed, clip_min, loss_id, loss_param, lamda, running, backend = ctx.config
    needs = ctx.needs_input_grad
    grad_pf, grad_pb, grad_flow, grad_log_reward, grad_beta = _subtb_backward(
        grad_loss, potentials, lengths, log_pf, ctx.has_pb, log_reward, beta, row_weight, table,
        packed, clip_min, loss_id, loss_param, lamda, running, needs[5], _need(beta, needs[6]),
        backend)
    log_pb = True if ctx.has_pb else None
    log_state_reward = True if ctx.has_sr else None
    return _input_grads(ctx, needs, log_pb, log_state_reward, beta, grad_pf, grad_pb, grad_flow,
                        grad_log_reward, grad_beta, 16)


_subtb_forward.register_autograd(_subtb_autograd, setup_context=_subtb_setup_context)


# ------------------------------------------------------------------ weights from the lengths


def _lengths_of(layout: _checks.BalanceLayout) -> torch.Tensor:
    """n_b [B] int64, clamped to [0, steps] (kernels clamp the same way)."""
    n = layout.lengths[1:] - layout.lengths[:-1] if layout.packed else layout.lengths
    return n.clamp(0, layout.steps)


def _row_weights(weighting: str, lamda: float, n: torch.Tensor, steps: int, dtype):
    """Per-trajectory factor c_b of the pair weights c_b * lambda^(j-i), in `dtype`."""
    batch = n.shape[0]
    n64 = n.to(torch.float64)
    if weighting == "geometric_within":
        # Z(n) = sum_{i<j<=n} lambda^(j-i) = sum_{k=1}^{n} (n-k+1) lambda^k: a double cumsum
        powers = torch.full((steps,), lamda, dtype=torch.float64, device=n.device) ** torch.arange(
            1, steps + 1, device=n.device, dtype=torch.float64)
        totals = torch.cat([powers.new_zeros(1), powers.cumsum(0).cumsum(0)])
        weight = 1.0 / (batch * totals[n])
    elif weighting == "equal_within":
        weight = 2.0 / (batch * n64 * (n64 + 1.0))
    elif weighting == "equal":
        weight = (1.0 / (n64 * (n64 + 1.0) / 2.0).sum()).expand(batch)
    else:
        weight = torch.ones(batch, dtype=torch.float64, device=n.device)
    return torch.where(n > 0, weight, torch.zeros_like(weight)).to(dtype).contiguous()


def _length_table(lamda: float, n: torch.Tensor, steps: int, dtype) -> torch.Tensor:
    """table[k-1] = w_k / C_k: the `geometric` weight of one sub-trajectory of length k, where
    C_k is the number of length-k sub-trajectories in the batch and w_k = lambda^(k-1) (1-lambda)
    / (1-lambda^M), M = max_b n_b (1/M when lambda = 1). All on the device, no host sync."""
    device = n.device
    histogram = torch.zeros(steps + 1, dtype=torch.float64, device=device).index_add_(
        0, n, torch.ones(n.shape[0], dtype=torch.float64, device=device))
    positions = torch.arange(steps + 1, dtype=torch.float64, device=device)
    at_least = histogram.flip(0).cumsum(0).flip(0)                    # #{b: n_b >= k}
    weighted = (histogram * (positions + 1.0)).flip(0).cumsum(0).flip(0)
    counts = (weighted - positions * at_least)[1:]                    # C_k, k = 1..steps
    k = positions[1:]
    longest = n.max().to(torch.float64)
    if lamda == 1.0:
        w = (1.0 / longest).expand(steps)
    else:
        w = reference.geometric_weights(lamda, k, longest)
    usable = (counts > 0) & (k <= longest)
    return torch.where(usable, w / counts.clamp(min=1.0), torch.zeros_like(w)).to(dtype)


# ------------------------------------------------------------------ public functions


def _validate(op, log_pf, log_pb, log_flow, log_reward, lengths, mask, cu_seqlens,
              log_state_reward, beta, log_reward_clip_min, loss, check_finite):
    _checks.require_tensor(op, "log_pf", log_pf, floating=True)
    _checks.require_tensor(op, "log_flow", log_flow, floating=True)
    log_probs = {"log_pf": log_pf, "log_pb": log_pb, "log_flow": log_flow,
                 "log_state_reward": log_state_reward}
    layout = _checks.balance_layout(op, log_probs, lengths, mask, cu_seqlens)
    loss_id, loss_param = _checks.parse_loss(op, loss)
    clip_min = _checks.parse_float(op, "log_reward_clip_min", log_reward_clip_min,
                                   allow_neg_inf=True)
    log_reward = _checks.per_trajectory(op, "log_reward", log_reward, layout.batch, log_pf,
                                        allow_scalar=False)
    beta = _checks.per_trajectory(op, "beta", beta, layout.batch, log_pf, required=False,
                                  scalar_dtype=compute_dtype(*log_probs.values(), log_reward))
    if check_finite:
        _checks.check_finite(op, layout, log_probs, {"log_reward": log_reward, "beta": beta})
    dtype = compute_dtype(log_pf, log_pb, log_flow, log_state_reward, log_reward, beta)
    log_reward = log_reward.to(dtype).contiguous()
    beta = None if beta is None else beta.to(dtype)
    return layout, loss_id, loss_param, clip_min, log_reward, beta, dtype


def detailed_balance(
    log_pf: torch.Tensor,
    log_pb: torch.Tensor | None,
    log_flow: torch.Tensor,
    log_reward: torch.Tensor,
    *,
    lengths: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    log_state_reward: torch.Tensor | None = None,
    beta: torch.Tensor | float | None = None,
    log_reward_clip_min: float = -math.inf,
    loss: str | tuple = "squared",
    reduction: str = "mean",
    check_finite: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Detailed balance loss (forward-looking when ``log_state_reward`` is given).

    For every transition t < n_b: d[b, t] = F_b(t) + log_pf[b, t] - F_b(t+1) - log_pb[b, t], with
    F_b(t) = log_flow[b, t] (+ log_state_reward[b, t]) for t < n_b and
    F_b(n_b) = beta_b * max(log R_b, clip). The loss is rho(d) reduced over valid transitions.

    Args:
        log_pf, log_pb, log_flow, log_state_reward: [B, T] padded (any strides: a time-major
            [T, B] tensor passed as ``.T`` is read in place) or [N] packed with ``cu_seqlens``;
            one floating dtype. ``log_pb`` None means a tree DAG.
        log_reward: [B] log R(x_b) of the terminal objects.
        lengths / mask / cu_seqlens: as in `gfn_fast.trajectory_balance`.
        beta, log_reward_clip_min, loss, check_finite, backend: as in `trajectory_balance`.
        reduction: "mean" (over all valid transitions) | "sum" | "none" (-> [B, T] zero-padded,
            or [N] when packed).

    Returns float32, or float64 when any input is float64.
    """
    op = "detailed_balance"
    layout, loss_id, loss_param, clip_min, log_reward, beta, dtype = _validate(
        op, log_pf, log_pb, log_flow, log_reward, lengths, mask, cu_seqlens, log_state_reward,
        beta, log_reward_clip_min, loss, check_finite)
    reduction_id = _checks.parse_reduction(op, reduction)
    name = _backends.resolve(op, backend, log_pf.device)
    if name == "reference":
        return reference.detailed_balance(log_pf, log_pb, log_flow, log_state_reward,
                                          layout.lengths, layout.packed, log_reward, beta,
                                          clip_min, loss_id, loss_param, reduction_id)
    return _db_forward(log_pf, log_pb, log_flow, log_state_reward, layout.lengths, log_reward,
                       beta, layout.packed, clip_min, loss_id, loss_param, reduction_id, name)


def subtrajectory_balance(
    log_pf: torch.Tensor,
    log_pb: torch.Tensor | None,
    log_flow: torch.Tensor,
    log_reward: torch.Tensor,
    *,
    lamda: float = 0.9,
    weighting: str = "geometric_within",
    lengths: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    log_state_reward: torch.Tensor | None = None,
    beta: torch.Tensor | float | None = None,
    log_reward_clip_min: float = -math.inf,
    loss: str | tuple = "squared",
    check_finite: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Sub-trajectory balance loss SubTB(lambda), in O(B T) memory.

    For 0 <= i < j <= n_b: d_bij = F_b(i) + P_b(j) - P_b(i) - F_b(j), with
    P_b(k) = sum_{t<k} (log_pf - log_pb) and F_b as in `detailed_balance`.

    weighting (torchgfn's names and values):
        "geometric_within" (default): mean over b of
            sum_{i<j} lambda^(j-i) rho(d) / sum_{i<j} lambda^(j-i)
        "equal_within": the same with lambda = 1
        "geometric": sum_k w_k * (mean of rho(d) over length-k sub-trajectories of the batch),
            w_k = lambda^(k-1) (1-lambda) / (1-lambda^M), M = max_b n_b
        "equal": mean of rho(d) over every sub-trajectory of the batch
        "TB": rho(d_{b,0,n_b}) averaged over b (F_b(0) plays log Z)
        "DB": mean over transitions (= `detailed_balance`)

    Args: as in `detailed_balance`; ``lamda`` in (0, 1]. Returns a scalar (float32, or float64
    when any input is float64).
    """
    op = "subtrajectory_balance"
    weighting = _checks.parse_weighting(op, weighting)
    lamda = _checks.parse_lamda(op, lamda)
    layout, loss_id, loss_param, clip_min, log_reward, beta, dtype = _validate(
        op, log_pf, log_pb, log_flow, log_reward, lengths, mask, cu_seqlens, log_state_reward,
        beta, log_reward_clip_min, loss, check_finite)
    name = _backends.resolve(op, backend, log_pf.device)
    if name == "reference":
        return reference.subtrajectory_balance(
            log_pf, log_pb, log_flow, log_state_reward, layout.lengths, layout.packed, log_reward,
            beta, clip_min, loss_id, loss_param, lamda, weighting)
    if weighting == "DB":
        return _db_forward(log_pf, log_pb, log_flow, log_state_reward, layout.lengths,
                           log_reward, beta, layout.packed, clip_min, loss_id, loss_param, MEAN,
                           name)
    if weighting == "TB":
        first = layout.lengths[:-1] if layout.packed else 0
        log_z = (log_flow[first] if layout.packed else log_flow[:, 0]).to(dtype)
        if log_state_reward is not None:
            log_z = log_z + (log_state_reward[first] if layout.packed
                             else log_state_reward[:, 0]).to(dtype)
        value, _ = _tb_forward(log_pf, log_pb, layout.lengths, log_reward, log_z, beta,
                               layout.packed, clip_min, loss_id, loss_param, MEAN, name)
        return value
    n = _lengths_of(layout)
    row_weight = _row_weights(weighting, lamda, n, layout.steps, dtype)
    table = _length_table(lamda, n, layout.steps, dtype) if weighting == "geometric" else None
    lam = 1.0 if weighting in ("equal_within", "equal", "geometric") else lamda
    running = loss_id in (SQUARED, HALF_SQUARED) and table is None
    value, _ = _subtb_forward(log_pf, log_pb, log_flow, log_state_reward, layout.lengths,
                              log_reward, beta, row_weight, table, layout.packed, clip_min,
                              loss_id, loss_param, lam, running, name)
    return value

