"""gfn_fast.integrations.torchgfn against torchgfn's own classes, on HyperGrid trajectories
sampled by torchgfn's sampler: loss values and every parameter gradient, in float64."""

import pytest
import torch

gfn = pytest.importorskip("gfn")
from gfn import gflownet as reference_classes  # noqa: E402
from gfn.estimators import DiscretePolicyEstimator, ScalarEstimator  # noqa: E402
from gfn.gflownet.losses import (  # noqa: E402
    HalfSquaredLoss,
    LinexLoss,
    ShiftedCoshLoss,
    SquaredLoss,
)
from gfn.gym import HyperGrid  # noqa: E402
from gfn.preprocessors import KHotPreprocessor  # noqa: E402
from gfn.samplers import Sampler  # noqa: E402
from gfn.utils.modules import MLP  # noqa: E402

from gfn_fast.integrations import torchgfn as fused_classes  # noqa: E402

RTOL = 1e-6
WEIGHTINGS = ["geometric_within", "equal_within", "geometric", "equal", "TB", "DB", "ModifiedDB"]


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def setting():
    """A HyperGrid, estimators and a batch of trajectories from torchgfn's own sampler."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(7)
    env = HyperGrid(ndim=2, height=8, validate_modes=False)
    pre = KHotPreprocessor(env.height, env.ndim)
    pf = DiscretePolicyEstimator(MLP(pre.output_dim, env.n_actions, hidden_dim=32,
                                     n_hidden_layers=2), env.n_actions, preprocessor=pre)
    pb = DiscretePolicyEstimator(MLP(pre.output_dim, env.n_actions - 1, hidden_dim=32,
                                     n_hidden_layers=2), env.n_actions, preprocessor=pre,
                                 is_backward=True)
    log_flow = ScalarEstimator(MLP(pre.output_dim, 1, hidden_dim=32, n_hidden_layers=2),
                               preprocessor=pre)
    trajectories = Sampler(pf).sample_trajectories(env, n=48)
    torch.set_default_dtype(previous)
    lengths = trajectories.terminating_idx
    assert int(lengths.min()) >= 1 and int(lengths.max()) >= 8  # varied lengths
    return env, pf, pb, log_flow, trajectories


def _loss_and_grads(gflownet, env, samples, **kwargs):
    gflownet.zero_grad()
    value = gflownet.loss(env, samples, **kwargs)
    upstream = torch.linspace(0.5, 1.5, value.numel()).reshape(value.shape)
    (value * upstream).sum().backward()
    grads = {name: p.grad.clone() for name, p in gflownet.named_parameters()
             if p.grad is not None}
    return value.detach(), grads


def _assert_same(ours, theirs):
    value, grads = ours
    ref_value, ref_grads = theirs
    torch.testing.assert_close(value, ref_value, rtol=RTOL, atol=1e-12)
    assert grads.keys() == ref_grads.keys()
    assert len(grads) > 0
    for name in grads:
        scale = float(ref_grads[name].abs().max())
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=RTOL,
                                   atol=RTOL * max(scale, 1e-12), msg=name)


@pytest.mark.parametrize("forward_looking", [False, True])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_subtb_matches_torchgfn(setting, weighting, forward_looking):
    env, pf, pb, log_flow, trajectories = setting
    kwargs = dict(weighting=weighting, lamda=0.9, forward_looking=forward_looking,
                  log_reward_clip_min=-1.5)
    ours = fused_classes.SubTBGFlowNet(pf, pb, log_flow, **kwargs)
    theirs = reference_classes.SubTBGFlowNet(pf, pb, log_flow, **kwargs)
    _assert_same(_loss_and_grads(ours, env, trajectories),
                 _loss_and_grads(theirs, env, trajectories))


@pytest.mark.parametrize("weighting,lamda,fused", [
    ("equal", 1.5, True), ("equal_within", 0.0, True),  # lamda unused: the fused kernel runs
    ("geometric_within", 1.5, False), ("geometric_within", 0.0, False), ("geometric", 2.0, False)])
def test_subtb_lamda_outside_the_unit_interval(setting, weighting, lamda, fused, monkeypatch):
    """torchgfn takes any lamda; gfn_fast's SubTB takes (0, 1] and the drop-in raised there.
    Weightings that ignore lamda run fused whatever it is; geometric ones outside (0, 1] are
    handed back to torchgfn's own loss (docs/torchgfn.md)."""
    env, pf, pb, log_flow, trajectories = setting
    calls = []
    kernel = fused_classes.gfn_fast.subtrajectory_balance
    monkeypatch.setattr(fused_classes.gfn_fast, "subtrajectory_balance",
                        lambda *a, **k: calls.append(1) or kernel(*a, **k))
    kwargs = dict(weighting=weighting, lamda=lamda)
    _assert_same(
        _loss_and_grads(fused_classes.SubTBGFlowNet(pf, pb, log_flow, **kwargs), env,
                        trajectories),
        _loss_and_grads(reference_classes.SubTBGFlowNet(pf, pb, log_flow, **kwargs), env,
                        trajectories))
    assert bool(calls) == fused


@pytest.mark.parametrize("loss_fn", [HalfSquaredLoss(), ShiftedCoshLoss(), LinexLoss(0.5)],
                         ids=["half_squared", "shifted_cosh", "linex"])
@pytest.mark.parametrize("weighting", ["geometric_within", "geometric", "DB"])
def test_subtb_regression_losses(setting, weighting, loss_fn):
    env, pf, pb, log_flow, trajectories = setting
    kwargs = dict(weighting=weighting, lamda=0.8, loss_fn=loss_fn)
    _assert_same(
        _loss_and_grads(fused_classes.SubTBGFlowNet(pf, pb, log_flow, **kwargs), env,
                        trajectories),
        _loss_and_grads(reference_classes.SubTBGFlowNet(pf, pb, log_flow, **kwargs), env,
                        trajectories))


@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("weighting", ["TB", "DB", "equal"])
def test_subtb_reductions(setting, weighting, reduction):
    env, pf, pb, log_flow, trajectories = setting
    kwargs = dict(weighting=weighting, forward_looking=True)
    _assert_same(
        _loss_and_grads(fused_classes.SubTBGFlowNet(pf, pb, log_flow, **kwargs), env,
                        trajectories, reduction=reduction),
        _loss_and_grads(reference_classes.SubTBGFlowNet(pf, pb, log_flow, **kwargs), env,
                        trajectories, reduction=reduction))


@pytest.mark.parametrize("forward_looking", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_db_matches_torchgfn(setting, forward_looking, reduction):
    env, pf, pb, log_flow, trajectories = setting
    transitions = trajectories.to_transitions()
    kwargs = dict(forward_looking=forward_looking, log_reward_clip_min=-1.5)
    _assert_same(
        _loss_and_grads(fused_classes.DBGFlowNet(pf, pb, log_flow, **kwargs), env,
                        transitions, reduction=reduction),
        _loss_and_grads(reference_classes.DBGFlowNet(pf, pb, log_flow, **kwargs), env,
                        transitions, reduction=reduction))


@pytest.mark.parametrize("loss_fn", [SquaredLoss(), LinexLoss(0.5)], ids=["squared", "linex"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_tb_and_vargrad_match_torchgfn(setting, reduction, loss_fn):
    env, pf, pb, _, trajectories = setting
    ours = fused_classes.TBGFlowNet(pf, pb, init_logZ=0.3, loss_fn=loss_fn,
                                    log_reward_clip_min=-1.5)
    theirs = reference_classes.TBGFlowNet(pf, pb, init_logZ=0.3, loss_fn=loss_fn,
                                          log_reward_clip_min=-1.5)
    _assert_same(_loss_and_grads(ours, env, trajectories, reduction=reduction),
                 _loss_and_grads(theirs, env, trajectories, reduction=reduction))
    ours = fused_classes.LogPartitionVarianceGFlowNet(pf, pb, loss_fn=loss_fn)
    theirs = reference_classes.LogPartitionVarianceGFlowNet(pf, pb, loss_fn=loss_fn)
    _assert_same(_loss_and_grads(ours, env, trajectories, reduction=reduction),
                 _loss_and_grads(theirs, env, trajectories, reduction=reduction))


def test_is_a_drop_in(setting):
    """Same base classes, constructor and state_dict keys: switching is an import change."""
    env, pf, pb, log_flow, _ = setting
    for name in ("TBGFlowNet", "LogPartitionVarianceGFlowNet", "DBGFlowNet", "SubTBGFlowNet"):
        assert issubclass(getattr(fused_classes, name), getattr(reference_classes, name))
    ours = fused_classes.SubTBGFlowNet(pf, pb, log_flow)
    theirs = reference_classes.SubTBGFlowNet(pf, pb, log_flow)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
