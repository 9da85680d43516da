"""The regression losses rho(d) of ../shared/spec/balance.md and their derivatives, in PyTorch.

Loss ids are shared with every backend (Numba, Triton, CUDA): keep them in sync with
`gfn_fast._checks.LOSSES`.
"""

import torch

SQUARED, HALF_SQUARED, ABSOLUTE, HUBER, SHIFTED_COSH, LINEX = range(6)


def rho(d: torch.Tensor, loss_id: int, param: float) -> torch.Tensor:
    """Elementwise regression loss of residuals ``d``; ``param`` is Huber's delta or LinEx's a."""
    if loss_id == SQUARED:
        return d * d
    if loss_id == HALF_SQUARED:
        return 0.5 * d * d
    if loss_id == ABSOLUTE:
        return d.abs()
    if loss_id == HUBER:
        a = d.abs()
        # the quadratic branch on d clamped to [-delta, delta] (equal where it is selected):
        # torch.where's backward multiplies the other branch's gradient by 0, and 0 * d is NaN
        # at an infinite residual, whose Huber gradient is +-delta
        inner = d.clamp(-param, param)
        return torch.where(a <= param, 0.5 * inner * inner, param * (a - 0.5 * param))
    if loss_id == SHIFTED_COSH:
        return torch.exp(d) + torch.exp(-d) - 2.0
    if loss_id == LINEX:
        ad = param * d
        return (torch.exp(ad) - ad - 1.0) / (param * param)
    raise ValueError(f"unknown loss id {loss_id}")


def rho_grad(d: torch.Tensor, loss_id: int, param: float) -> torch.Tensor:
    """d rho / d d, elementwise; equal to what autograd gives for `rho` (sign(0) = 0)."""
    if loss_id == SQUARED:
        return 2.0 * d
    if loss_id == HALF_SQUARED:
        return d
    if loss_id == ABSOLUTE:
        return torch.sign(d)
    if loss_id == HUBER:
        return torch.where(d.abs() <= param, d, param * torch.sign(d))
    if loss_id == SHIFTED_COSH:
        return torch.exp(d) - torch.exp(-d)
    if loss_id == LINEX:
        return torch.expm1(param * d) / param
    raise ValueError(f"unknown loss id {loss_id}")
