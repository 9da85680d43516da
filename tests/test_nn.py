"""nn.Module wrappers of the balance losses."""

import pytest
import torch
from torch import nn

import gfn_fast


def test_trajectory_balance_scalar_log_z_learns_the_partition_function():
    torch.manual_seed(0)
    module = gfn_fast.nn.TrajectoryBalance(0.0)
    optimiser = torch.optim.Adam(module.parameters(), lr=0.1)
    log_pf = torch.zeros(64, 3)
    log_reward = torch.full((64,), 2.5)
    for _ in range(300):
        optimiser.zero_grad()
        module(log_pf, None, log_reward).backward()
        optimiser.step()
    assert abs(module.log_z.item() - 2.5) < 1e-2


def test_trajectory_balance_conditional_log_z_matches_functional():
    log_z_model = nn.Linear(1, 1)
    module = gfn_fast.nn.TrajectoryBalance(log_z_model, loss="huber", backend="numba")
    beta = torch.rand(8, 1) + 0.5
    log_pf, log_pb = torch.randn(8, 5), torch.randn(8, 5)
    log_reward = torch.randn(8)
    lengths = torch.randint(1, 6, (8,))
    loss = module(log_pf, log_pb, log_reward, conditioning=beta, lengths=lengths)
    expected = gfn_fast.trajectory_balance(log_pf, log_pb, log_reward,
                                           log_z_model(beta).squeeze(1), lengths=lengths,
                                           loss="huber", backend="reference")
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert log_z_model.weight.grad is not None and log_z_model.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="`conditioning`"):
        module(log_pf, log_pb, log_reward)
    with pytest.raises(TypeError, match="`log_z`"):
        gfn_fast.nn.TrajectoryBalance("zero")


def test_log_partition_variance_module():
    log_pf, log_reward = torch.randn(10, 4), torch.randn(10)
    module = gfn_fast.nn.LogPartitionVariance(reduction="sum")
    torch.testing.assert_close(module(log_pf, None, log_reward),
                               gfn_fast.log_partition_variance(log_pf, None, log_reward,
                                                               reduction="sum"))
