"""Trajectory balance and log-partition variance (VarGrad): public functions, torch ops, autograd.

Math: ../shared/spec/balance.md. Each public function validates and normalises its inputs
(gfn_fast._checks), picks a backend (gfn_fast._backends), then either runs the plain-PyTorch
reference under autograd or calls the torch op ``gfn_fast::trajectory_balance_fwd``, whose
backward is ``gfn_fast::trajectory_balance_bwd``. The forward reads each log-prob once and saves
only the per-trajectory residual d [B]; the backward writes each gradient once from d.

The backend is resolved before the op is called and passed to it as a string, because the
choice is not a function of the device alone (Triton runs CPU tensors under TRITON_INTERPRET=1,
and a user may ask for any backend); the op has one device-generic implementation that looks the
backend module up in gfn_fast._backends.
"""

import math

import torch
import torch.distributed as dist

from gfn_fast import _backends, _checks, _ops
from gfn_fast.reference import balance as reference
from gfn_fast.reference.losses import rho, rho_grad

_MEAN, _SUM, _NONE = reference.MEAN, reference.SUM, reference.NONE


def _reduce(values: torch.Tensor, reduction: int) -> torch.Tensor:
    return reference.reduce(values, reduction)


# ---- torch.distributed: VarGrad's batch mean over a process group ----
# Ops take the group by name (a string fits the op schema); "" means no group (local mean).
_PROCESS_GROUPS: dict = {}


def _group_name(op: str, process_group) -> str:
    if process_group is None:
        return ""
    if not dist.is_available() or not isinstance(process_group, dist.ProcessGroup):
        _checks.fail(op, "process_group", "must be None or a torch.distributed.ProcessGroup, "
                     f"got {type(process_group).__name__}", TypeError)
    if not dist.is_initialized():
        _checks.fail(op, "process_group", "must belong to an initialized torch.distributed "
                     "(call dist.init_process_group first), got one while it is not")
    name = process_group.group_name
    _PROCESS_GROUPS[name] = process_group
    return name


def _group_sum_and_count(values: torch.Tensor, group_name: str) -> tuple:
    """(sum of `values` over every rank, number of entries over every rank): one all-reduce of
    two float64 scalars (exact counts, and a sum whose rounding does not depend on dtype)."""
    total = torch.stack([values.sum(dtype=torch.float64),
                         torch.full((), float(values.numel()), dtype=torch.float64,
                                    device=values.device)])
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=_PROCESS_GROUPS[group_name])
    return total[0], total[1]


def _group_mean(values: torch.Tensor, group_name: str) -> torch.Tensor:
    """Mean over the local batch, or over the batches of every rank of the group."""
    if not group_name:
        return values.mean()
    total, count = _group_sum_and_count(values, group_name)
    return (total / count).to(values.dtype)


class _GlobalMean(torch.autograd.Function):
    """Mean of a [B] tensor over every rank of a group (reference backend). The backward
    all-reduces the incoming gradient too: each rank's loss depends on every rank's entries
    through the mean, so d(sum of the ranks' losses)/d values_b = sum_r grad_r / N."""

    @staticmethod
    def forward(ctx, values, group_name):
        total, count = _group_sum_and_count(values.detach(), group_name)
        ctx.group_name, ctx.count, ctx.shape_b = group_name, count, values.shape
        return (total / count).to(values.dtype)

    @staticmethod
    def backward(ctx, grad_mean):
        total = grad_mean.detach().to(torch.float64).reshape(1).clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=_PROCESS_GROUPS[ctx.group_name])
        return (total / ctx.count).to(grad_mean.dtype).expand(ctx.shape_b), None


def _reference_group_variance(log_pf, log_pb, lengths, packed, log_reward, beta, clip_min,
                              loss_id, loss_param, reduction, group_name):
    """Reference VarGrad with the batch mean taken over the process group."""
    dtype = reference.compute_dtype(log_pf, log_pb, log_reward, beta)
    s = reference.row_sums(log_pf, lengths, packed, dtype)
    if log_pb is not None:
        s = s - reference.row_sums(log_pb, lengths, packed, dtype)
    s = s - reference.terminal_log_flow(log_reward, beta, clip_min, dtype)
    d = s - _GlobalMean.apply(s, group_name)
    return reference.reduce(rho(d, loss_id, loss_param), reduction)


@_ops.custom_op("gfn_fast::trajectory_balance_fwd", mutates_args=())
def _tb_forward(log_pf: torch.Tensor, log_pb: torch.Tensor | None, lengths: torch.Tensor,
                log_reward: torch.Tensor, log_z: torch.Tensor | None, beta: torch.Tensor | None,
                packed: bool, clip_min: float, loss_id: int, loss_param: float, reduction: int,
                backend: str, group_name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (loss, d). With log_z: TB, d = log_z + s. Without: VarGrad, d = s - mean(s), the
    mean over the process group `group_name` when given."""
    impl = _backends.module(backend, "balance")
    centered = log_z is None
    d, loss_rows = impl.rows_forward(log_pf, log_pb, lengths, packed, log_reward, log_z, beta,
                                     clip_min, loss_id, loss_param, not centered)
    if centered:
        d = d - _group_mean(d, group_name)
        loss_rows = rho(d, loss_id, loss_param)
    return _reduce(loss_rows, reduction), d


@_tb_forward.register_fake
def _(log_pf, log_pb, lengths, log_reward, log_z, beta, packed, clip_min, loss_id, loss_param,
      reduction, backend, group_name=""):
    batch = log_reward.shape[0]
    d = log_reward.new_empty(batch)
    return (log_reward.new_empty(batch if reduction == _NONE else ()), d)


@_ops.custom_op("gfn_fast::trajectory_balance_bwd", mutates_args=())
def _tb_backward(grad_loss: torch.Tensor, d: torch.Tensor, log_pf: torch.Tensor, has_pb: bool,
                 lengths: torch.Tensor, log_reward: torch.Tensor, beta: torch.Tensor | None,
                 centered: bool, packed: bool, clip_min: float, loss_id: int, loss_param: float,
                 reduction: int, need_log_reward: bool, need_beta: bool, backend: str,
                 group_name: str = "") -> list[torch.Tensor]:
    """[grad_log_pf, grad_log_pb, grad per row (= d loss / d log_z_b), grad_log_reward,
    grad_beta]; absent ones are empty tensors."""
    impl = _backends.module(backend, "balance")
    batch = d.shape[0]
    weight = 1.0 / batch if reduction == _MEAN else 1.0
    if centered:
        grad_rows = grad_loss.expand(batch) * weight * rho_grad(d, loss_id, loss_param)
        grad_rows = grad_rows - _group_mean(grad_rows, group_name)
        grads = impl.rows_backward(grad_rows, d, False, 1.0, loss_id, loss_param, lengths,
                                   packed, log_pf, has_pb, log_reward, beta, clip_min,
                                   need_log_reward, need_beta)
    else:
        grads = impl.rows_backward(grad_loss, d, True, weight, loss_id, loss_param, lengths,
                                   packed, log_pf, has_pb, log_reward, beta, clip_min,
                                   need_log_reward, need_beta)
    return [g if g is not None else d.new_empty(0) for g in grads]


@_tb_backward.register_fake
def _(grad_loss, d, log_pf, has_pb, lengths, log_reward, beta, centered, packed, clip_min,
      loss_id, loss_param, reduction, need_log_reward, need_beta, backend, group_name=""):
    batch = d.shape[0]
    return [torch.empty_like(log_pf), torch.empty_like(log_pf) if has_pb else d.new_empty(0),
            d.new_empty(batch), d.new_empty(batch if need_log_reward else 0),
            d.new_empty(batch if need_beta else 0)]


def _setup_context(ctx, inputs, output):
    (log_pf, log_pb, lengths, log_reward, log_z, beta, packed, clip_min, loss_id, loss_param,
     reduction, backend, *group) = inputs
    ctx.save_for_backward(*_ops.saveable(log_pf, lengths, log_reward, beta, output[1]))
    ctx.has_pb = log_pb is not None
    ctx.log_z_shape = None if log_z is None else log_z.shape
    ctx.beta_shape = None if beta is None else beta.shape
    ctx.config = (packed, clip_min, loss_id, loss_param, reduction, backend)
    ctx.group_name = group[0] if group else ""
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # see _ops.Op.register_autograd


def _sum_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Per-row gradient summed back to a scalar parameter's shape."""
    return grad.sum().reshape(shape) if len(shape) == 0 else grad


def _backward(ctx, grad_loss, _grad_d):
    log_pf, lengths, log_reward, beta, d = ctx.saved_tensors
    packed, clip_min, loss_id, loss_param, reduction, backend = ctx.config
    needs = ctx.needs_input_grad
    # grad_log_pb is written only when asked for: a fixed backward policy (e.g. uniform P_B)
    # needs none, and skipping it saves a [B, T] allocation and write.
    need_pb = ctx.has_pb and needs[1]
    grad_pf, grad_pb, grad_row, grad_log_reward, grad_beta = _tb_backward(
        grad_loss, d, log_pf, need_pb, lengths, log_reward, beta, ctx.log_z_shape is None,
        packed, clip_min, loss_id, loss_param, reduction, needs[3], needs[5] and beta is not None,
        backend, ctx.group_name)
    return (grad_pf if needs[0] else None,
            grad_pb if need_pb else None,
            None,
            grad_log_reward if needs[3] else None,
            _sum_to(grad_row, ctx.log_z_shape) if ctx.log_z_shape is not None and needs[4]
            else None,
            _sum_to(grad_beta, ctx.beta_shape) if ctx.beta_shape is not None and needs[5]
            else None,
            None, None, None, None, None, None, None)


_tb_forward.register_autograd(_backward, setup_context=_setup_context)


def _balance(op: str, log_pf, log_pb, log_reward, log_z, *, lengths, mask, cu_seqlens, beta,
             log_reward_clip_min, loss, reduction, check_finite, backend, process_group=None):
    layout = _checks.balance_layout(op, {"log_pf": log_pf, "log_pb": log_pb}, lengths, mask,
                                    cu_seqlens)
    loss_id, loss_param = _checks.parse_loss(op, loss)
    reduction_id = _checks.parse_reduction(op, reduction)
    clip_min = _checks.parse_float(op, "log_reward_clip_min", log_reward_clip_min,
                                   allow_neg_inf=True)
    log_reward = _checks.per_trajectory(op, "log_reward", log_reward, layout.batch, log_pf,
                                        allow_scalar=False)
    # Python-number log_z / beta in the dtype of the tensors they meet
    scalars = reference.compute_dtype(log_pf, log_pb, log_reward)
    if op == "trajectory_balance":
        log_z = _checks.per_trajectory(op, "log_z", log_z, layout.batch, log_pf,
                                       scalar_dtype=scalars)
    beta = _checks.per_trajectory(op, "beta", beta, layout.batch, log_pf, required=False,
                                  scalar_dtype=scalars)
    group_name = _group_name(op, process_group)
    if check_finite:
        _checks.check_finite(op, layout, {"log_pf": log_pf, "log_pb": log_pb},
                             {"log_reward": log_reward, "log_z": log_z, "beta": beta})
    dtype = reference.compute_dtype(log_pf, log_pb, log_reward, log_z, beta)
    log_reward = log_reward.to(dtype).contiguous()
    log_z = None if log_z is None else log_z.to(dtype)
    beta = None if beta is None else beta.to(dtype)
    name = _backends.resolve(op, backend, log_pf.device)
    if name == "reference":
        if log_z is None and group_name:
            return _reference_group_variance(
                log_pf, log_pb, layout.lengths, layout.packed, log_reward, beta, clip_min,
                loss_id, loss_param, reduction_id, group_name)
        if log_z is None:
            return reference.log_partition_variance(
                log_pf, log_pb, layout.lengths, layout.packed, log_reward, beta, clip_min,
                loss_id, loss_param, reduction_id)
        return reference.trajectory_balance(
            log_pf, log_pb, layout.lengths, layout.packed, log_reward, log_z, beta, clip_min,
            loss_id, loss_param, reduction_id)
    value, _ = _tb_forward(log_pf, log_pb, layout.lengths, log_reward, log_z, beta,
                           layout.packed, clip_min, loss_id, loss_param, reduction_id, name,
                           group_name)
    return value


def trajectory_balance(
    log_pf: torch.Tensor,
    log_pb: torch.Tensor | None,
    log_reward: torch.Tensor,
    log_z: torch.Tensor | float,
    *,
    lengths: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    beta: torch.Tensor | float | None = None,
    log_reward_clip_min: float = -math.inf,
    loss: str | tuple = "squared",
    reduction: str = "mean",
    check_finite: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Trajectory balance loss, fused forward and backward.

    d_b = log_z_b + sum_{t<n_b} log_pf[b, t] - sum_{t<n_b} log_pb[b, t]
          - beta_b * max(log R_b, clip),
    and the loss is ``reduction`` over b of rho(d_b).

    Args:
        log_pf: [B, T] padded (any strides; a time-major [T, B] tensor passed as ``.T`` is read
            in place) or [N] packed with ``cu_seqlens``. float16/bfloat16/float32/float64.
        log_pb: like ``log_pf`` (same dtype), or None for a tree DAG (log P_B = 0).
        log_reward: [B] log R(x_b).
        log_z: scalar (float or 0-dim tensor) or [B] conditional log Z.
        lengths / mask / cu_seqlens: at most one: [B] integer lengths in [1, T], a [B, T] bool
            prefix mask, or [B+1] offsets of the packed layout. None means every trajectory has T
            steps.
        beta: None, scalar or [B] reward exponent.
        log_reward_clip_min: log rewards below this are raised to it (no gradient there).
        loss: "squared" | "half_squared" | "absolute" | "huber" | "shifted_cosh" | "linex",
            with a parameter as "huber(0.5)" / ("huber", 0.5) (defaults: delta = alpha = 1).
        reduction: "mean" | "sum" | "none" (-> [B]).
        check_finite: raise (naming the input) on NaN, or infinities in log-probs/log_z/beta.
        backend: "cuda" | "triton" | "numba" | "reference" | None (automatic).

    Returns the loss in float32, or float64 when any input is float64.
    """
    return _balance("trajectory_balance", log_pf, log_pb, log_reward, log_z, lengths=lengths,
                    mask=mask, cu_seqlens=cu_seqlens, beta=beta,
                    log_reward_clip_min=log_reward_clip_min, loss=loss, reduction=reduction,
                    check_finite=check_finite, backend=backend)


def log_partition_variance(
    log_pf: torch.Tensor,
    log_pb: torch.Tensor | None,
    log_reward: torch.Tensor,
    *,
    lengths: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    beta: torch.Tensor | float | None = None,
    log_reward_clip_min: float = -math.inf,
    loss: str | tuple = "squared",
    reduction: str = "mean",
    check_finite: bool = False,
    backend: str | None = None,
    process_group=None,
) -> torch.Tensor:
    """Log-partition variance loss (VarGrad): trajectory balance with log Z replaced by the
    batch mean. s_b = sum log_pf - sum log_pb - beta_b * max(log R_b, clip), d_b = s_b - mean(s),
    loss = ``reduction`` of rho(d_b); the gradient flows through the mean. Arguments as in
    `trajectory_balance`, without log_z, plus:

        process_group: None (the mean of this batch) or a torch.distributed ProcessGroup
            (e.g. ``dist.group.WORLD``): the mean is over the batches of every rank (one
            all-reduce of two scalars, their sum and count, in the forward, and one in the
            backward, so that each rank's gradients are those of the sum of every rank's loss).
            The loss returned is still this rank's ``reduction`` of rho(d_b); with equal
            per-rank batch sizes, reduction="mean" and DDP's gradient averaging, training
            matches one process on the concatenated batch. Every rank of the group must call it.
    """
    return _balance("log_partition_variance", log_pf, log_pb, log_reward, None, lengths=lengths,
                    mask=mask, cu_seqlens=cu_seqlens, beta=beta,
                    log_reward_clip_min=log_reward_clip_min, loss=loss, reduction=reduction,
                    check_finite=check_finite, backend=backend, process_group=process_group)
