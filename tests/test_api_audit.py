"""One error style for the whole public API.

Walks every callable exported by gfn_fast, gfn_fast.bfn and gfn_fast.nn and tries the bad inputs
that ../shared/spec lists for it. Each must raise ValueError or TypeError reading
``gfn_fast.<op>: `<argument>` <what was expected>...`` (nn modules: ``gfn_fast.nn.<Class>:``, or
the functional op they call), naming the argument at fault. A new export without audit cases fails
`test_every_public_callable_is_audited`.
"""

import inspect
import math
import re

import pytest
import torch

import gfn_fast
from gfn_fast import bfn
from gfn_fast import nn as gnn

STYLE = re.compile(r"^gfn_fast\.(?:nn\.)?(?P<op>\w+): `(?P<arg>\w+)` (?P<rest>\S.*)$", re.S)


def _public_callables() -> set[str]:
    names = set()
    for module, prefix in ((gfn_fast, ""), (bfn, "bfn."), (gnn, "nn.")):
        exported = getattr(module, "__all__", None) or [
            n for n in dir(module) if n[0].isupper() and inspect.isclass(getattr(module, n))
            and getattr(module, n).__module__ == module.__name__]
        for name in exported:
            value = getattr(module, name)
            if callable(value) and not inspect.ismodule(value):
                names.add(prefix + name)
    return names


# ---- valid inputs, from which each case changes one thing ----
B, T, N, A, D, K = 4, 3, 4, 6, 3, 5


def _balance_args():
    return dict(log_pf=torch.randn(B, T), log_pb=torch.randn(B, T), log_reward=torch.randn(B),
                log_z=torch.tensor(0.0), lengths=torch.tensor([1, 2, 3, 3]))


def tb(**change):
    args = {**_balance_args(), **change}
    gfn_fast.trajectory_balance(args.pop("log_pf"), args.pop("log_pb"), args.pop("log_reward"),
                                args.pop("log_z"), **args)


def vargrad(**change):
    args = {**_balance_args(), **change}
    args.pop("log_z")
    gfn_fast.log_partition_variance(args.pop("log_pf"), args.pop("log_pb"),
                                    args.pop("log_reward"), **args)


def _flow_args():
    return dict(log_pf=torch.randn(B, T), log_pb=torch.randn(B, T), log_flow=torch.randn(B, T),
                log_reward=torch.randn(B), lengths=torch.tensor([1, 2, 3, 3]))


def db(**change):
    args = {**_flow_args(), **change}
    gfn_fast.detailed_balance(args.pop("log_pf"), args.pop("log_pb"), args.pop("log_flow"),
                              args.pop("log_reward"), **args)


def subtb(**change):
    args = {**_flow_args(), **change}
    gfn_fast.subtrajectory_balance(args.pop("log_pf"), args.pop("log_pb"), args.pop("log_flow"),
                                   args.pop("log_reward"), **args)


def sample(**change):
    args = {"logits": torch.randn(N, A), "mask": None, **change}
    gfn_fast.sample_actions(args.pop("logits"), args.pop("mask"), **args)


def log_prob(**change):
    args = {"logits": torch.randn(N, A), "actions": torch.tensor([0, 1, 2, 5]), "mask": None,
            **change}
    gfn_fast.action_log_prob(args.pop("logits"), args.pop("actions"), args.pop("mask"), **args)


def _masked(row=None, col=None):
    mask = torch.ones(N, A, dtype=torch.bool)
    if row is not None:
        mask[row] = False
    if col is not None:
        mask[:, col] = False
    return mask


def _cont(**change):
    return {"x": torch.randn(B, D), "mu": torch.randn(B, D), "eps_hat": torch.randn(B, D),
            "t": torch.rand(B) * 0.9 + 0.05, "sigma_1": 0.1, **change}


def c_output(**change):
    a = _cont(**change)
    bfn.continuous_output(a.pop("mu"), a.pop("eps_hat"), a.pop("t"), a.pop("sigma_1"),
                          **{k: v for k, v in a.items() if k != "x"})


def c_loss(**change):
    a = _cont(**change)
    bfn.continuous_loss(a.pop("x"), a.pop("mu"), a.pop("eps_hat"), a.pop("t"), a.pop("sigma_1"),
                        **a)


def c_update(**change):
    a = {"mu": torch.randn(B, D), "rho": torch.ones(B), "y": torch.randn(B, D), "alpha": 0.5,
         **change}
    bfn.continuous_update(a.pop("mu"), a.pop("rho"), a.pop("y"), a.pop("alpha"), **a)


def c_flow(**change):
    a = {"x": torch.randn(B, D), "t": torch.rand(B), "sigma_1": 0.1, "seed": 1, **change}
    bfn.continuous_flow(a.pop("x"), a.pop("t"), a.pop("sigma_1"), **a)


def _disc(**change):
    return {"x_index": torch.randint(0, K, (B, D)), "logits_out": torch.randn(B, D, K),
            "t": torch.rand(B), "beta_1": 0.5, **change}


def d_loss(**change):
    a = _disc(**change)
    bfn.discrete_loss(a.pop("x_index"), a.pop("logits_out"), a.pop("t"), a.pop("beta_1"), **a)


def d_flow(**change):
    a = {"x_index": torch.randint(0, K, (B, D)), "t": torch.rand(B), "beta_1": 0.5,
         "n_classes": K, "seed": 1, **change}
    bfn.discrete_flow(a.pop("x_index"), a.pop("t"), a.pop("beta_1"), a.pop("n_classes"), **a)


def d_update(**change):
    a = {"log_theta": torch.log_softmax(torch.randn(B, D, K), -1), "y": torch.randn(B, D, K),
         **change}
    bfn.discrete_update(a.pop("log_theta"), a.pop("y"), **a)


def ds_loss(**change):
    a = {"x": torch.rand(B, D) * 2 - 1, "mu_x": torch.randn(B, D),
         "log_sigma_x": torch.randn(B, D), "t": torch.rand(B), "sigma_1": 0.1, "n_bins": 16,
         **change}
    bfn.discretised_loss(a.pop("x"), a.pop("mu_x"), a.pop("log_sigma_x"), a.pop("t"),
                         a.pop("sigma_1"), a.pop("n_bins"), **a)


def ds_probs(**change):
    a = {"mu_x": torch.randn(B, D), "log_sigma_x": torch.randn(B, D), "n_bins": 16, **change}
    bfn.discretised_probs(a.pop("mu_x"), a.pop("log_sigma_x"), a.pop("n_bins"), **a)


def c_step(**change):
    a = {"mu": torch.randn(B, D), "rho": torch.ones(B), "eps_hat": torch.randn(B, D), "t": 0.5,
         "alpha": 0.5, "sigma_1": 0.1, "seed": 1, **change}
    bfn.continuous_step(a.pop("mu"), a.pop("rho"), a.pop("eps_hat"), a.pop("t"), a.pop("alpha"),
                        a.pop("sigma_1"), **a)


def d_step(**change):
    a = {"log_theta": None, "logits": torch.randn(B, D, K), "alpha": 0.5, "seed": 1, **change}
    bfn.discrete_step(a.pop("log_theta"), a.pop("logits"), a.pop("alpha"), **a)


def ds_step(**change):
    a = {"mu": None, "rho": None, "mu_x": torch.randn(B, D), "log_sigma_x": torch.randn(B, D),
         "alpha": 0.5, "n_bins": 16, "seed": 1, **change}
    bfn.discretised_step(a.pop("mu"), a.pop("rho"), a.pop("mu_x"), a.pop("log_sigma_x"),
                         a.pop("alpha"), a.pop("n_bins"), **a)


def generate(**change):
    a = {"model": lambda theta, t: torch.zeros_like(theta), "shape": (2, 3), "n_steps": 2,
         "seed": 1, **change}
    bfn.generate(a.pop("model"), a.pop("shape"), a.pop("n_steps"), **a)


V, TE = ValueError, TypeError
CASES = {
    "trajectory_balance": [
        (lambda: tb(log_pb=torch.randn(B, T - 1)), V, "log_pb"),
        (lambda: tb(lengths=torch.tensor([0, 1, 2, 3])), V, "lengths"),
        (lambda: tb(lengths=torch.tensor([1, 2, 3, 4])), V, "lengths"),
        (lambda: tb(lengths=torch.tensor([1.0, 2.0, 3.0, 3.0])), TE, "lengths"),
        (lambda: tb(log_pf=torch.ones(B, T, dtype=torch.int64)), TE, "log_pf"),
        (lambda: tb(log_z=torch.tensor(1)), TE, "log_z"),
        (lambda: tb(log_z=torch.zeros(3)), V, "log_z"),
        (lambda: tb(log_reward=torch.randn(B).to("meta")), V, "log_reward"),
        (lambda: tb(lengths=None, cu_seqlens=torch.tensor([0, 2, 2, 5])), V, "log_pf"),
        (lambda: tb(log_pf=torch.randn(5), log_pb=None, lengths=None,
                    cu_seqlens=torch.tensor([0, 2, 2, 5]), log_reward=torch.randn(3)), V,
         "cu_seqlens"),
        (lambda: tb(log_pf=torch.randn(5), log_pb=None, lengths=None,
                    cu_seqlens=torch.tensor([0, 2, 3, 4]), log_reward=torch.randn(3)), V,
         "cu_seqlens"),
        (lambda: tb(loss="cubic"), V, "loss"),
        (lambda: tb(loss="huber(-1)"), V, "loss"),
        (lambda: tb(reduction="max"), V, "reduction"),
        (lambda: tb(backend="opencl"), V, "backend"),
        (lambda: tb(log_reward_clip_min=math.nan), V, "log_reward_clip_min"),
        (lambda: tb(beta=torch.ones(2, 2)), V, "beta"),
        (lambda: tb(lengths=None, mask=torch.tensor([[True, False, True]] * B)), V, "mask"),
        (lambda: tb(log_pf=torch.tensor([[math.nan] * T] * B), check_finite=True), V, "log_pf"),
    ],
    "log_partition_variance": [
        (lambda: vargrad(log_pb=torch.randn(B, T).double()), TE, "log_pb"),
        (lambda: vargrad(lengths=torch.tensor([1, 2, 9, 3])), V, "lengths"),
        (lambda: vargrad(log_reward=torch.randn(B + 1)), V, "log_reward"),
        (lambda: vargrad(loss="linex(0)"), V, "loss"),
        (lambda: vargrad(reduction=None), V, "reduction"),
        (lambda: vargrad(process_group="world"), TE, "process_group"),
        (lambda: vargrad(log_pf=[[0.0] * T] * B), TE, "log_pf"),
    ],
    "sample_actions": [
        (lambda: sample(logits=torch.ones(N, A, dtype=torch.int64)), TE, "logits"),
        (lambda: sample(logits=torch.randn(N * A)), V, "logits"),
        (lambda: sample(mask=_masked(row=2)), V, "mask"),
        (lambda: sample(mask=torch.ones(N, A - 1, dtype=torch.bool)), V, "mask"),
        (lambda: sample(mask=torch.ones(N, A)), TE, "mask"),
        (lambda: sample(scale=torch.ones(N - 1)), V, "scale"),
        (lambda: sample(temperature=0.0), V, "temperature"),
        (lambda: sample(temperature=-torch.ones(N)), V, "temperature"),
        (lambda: sample(epsilon=1.5), V, "epsilon"),
        (lambda: sample(clip=(2.0, 1.0)), V, "clip"),
        (lambda: sample(clip=3.0), TE, "clip"),
        (lambda: sample(seed=1.0), TE, "seed"),
        (lambda: sample(seed=1, offset=-1), V, "offset"),
        (lambda: sample(seed=1, generator=torch.Generator()), V, "generator"),
        (lambda: sample(backend="nope"), V, "backend"),
        (lambda: sample(mask=torch.ones(N, A, dtype=torch.bool).to("meta")), V, "mask"),
    ],
    "action_log_prob": [
        (lambda: log_prob(actions=torch.tensor([0, 1, 2, A])), V, "actions"),
        (lambda: log_prob(actions=torch.tensor([0, 1, 2, 5]), mask=_masked(col=5)), V,
         "actions"),
        (lambda: log_prob(actions=torch.tensor([0.0, 1.0, 2.0, 3.0])), TE, "actions"),
        (lambda: log_prob(actions=torch.tensor([0, 1])), V, "actions"),
        (lambda: log_prob(logits=torch.randn(N, A).bool()), TE, "logits"),
        (lambda: log_prob(temperature=torch.ones(2, 2)), V, "temperature"),
    ],
    "pack_mask": [(lambda: gfn_fast.pack_mask(torch.ones(3, 3)), TE, "mask"),
                  (lambda: gfn_fast.pack_mask([[True]]), TE, "mask")],
    "rank_seed": [(lambda: gfn_fast.rank_seed(1.5), TE, "seed"),
                  (lambda: gfn_fast.rank_seed(1, rank=-2), V, "rank")],
    "validation": [(lambda: gfn_fast.validation("off"), TE, "enabled")],
    "set_validation": [(lambda: gfn_fast.set_validation(0), TE, "enabled")],
    "backends": [],  # takes no argument
    "bfn.gamma": [(lambda: bfn.gamma(0.5, 1.5), V, "sigma_1"),
                  (lambda: bfn.gamma(1.5, 0.1), V, "t"),
                  (lambda: bfn.gamma(torch.tensor([-0.1, 0.5]), 0.1), V, "t")],
    "bfn.beta": [(lambda: bfn.beta(0.5, 0.0), V, "beta_1"),
                 (lambda: bfn.beta(-0.5, 1.0), V, "t")],
    "bfn.continuous_alpha": [(lambda: bfn.continuous_alpha(0, 10, 0.1), V, "i"),
                             (lambda: bfn.continuous_alpha(1, 0, 0.1), V, "n_steps"),
                             (lambda: bfn.continuous_alpha(1, 10, 0.0), V, "sigma_1")],
    "bfn.discrete_alpha": [(lambda: bfn.discrete_alpha(11, 10, 0.5), V, "i"),
                           (lambda: bfn.discrete_alpha(1, 10, -0.5), V, "beta_1"),
                           (lambda: bfn.discrete_alpha(1, 2.5, 0.5), TE, "n_steps")],
    "bfn.continuous_output": [
        (lambda: c_output(t=1.5), V, "t"),
        (lambda: c_output(sigma_1=1.0), V, "sigma_1"),
        (lambda: c_output(eps_hat=torch.randn(B, D - 1)), V, "eps_hat"),
        (lambda: c_output(mu=torch.ones(B, D, dtype=torch.int64)), TE, "mu"),
        (lambda: c_output(backend="opencl"), V, "backend"),
    ],
    "bfn.continuous_loss": [
        (lambda: c_loss(t=torch.rand(B) + 2), V, "t"),
        (lambda: c_loss(t=torch.rand(B - 1)), V, "t"),
        (lambda: c_loss(n_steps=0), V, "n_steps"),
        (lambda: c_loss(x=torch.randn(B, D).to("meta")), V, "mu"),
        (lambda: c_loss(sigma_1=-0.1), V, "sigma_1"),
    ],
    "bfn.continuous_update": [
        (lambda: c_update(alpha=-1.0), V, "alpha"),
        (lambda: c_update(rho=-torch.ones(B)), V, "rho"),
        (lambda: c_update(y=torch.randn(B, D + 1)), V, "y"),
    ],
    "bfn.continuous_flow": [(lambda: c_flow(sigma_1=2.0), V, "sigma_1"),
                            (lambda: c_flow(t=torch.rand(B) - 1.5), V, "t")],
    "bfn.discrete_loss": [
        (lambda: d_loss(x_index=torch.randint(0, K, (B, D)) + K), V, "x_index"),
        (lambda: d_loss(beta_1=-0.5), V, "beta_1"),
        (lambda: d_loss(logits_out=torch.randn(B, D - 1, K)), V, "logits_out"),
        (lambda: d_loss(x_index=torch.rand(B, D)), TE, "x_index"),
        (lambda: d_loss(t=torch.rand(B) + 1.5), V, "t"),
    ],
    "bfn.discrete_flow": [
        (lambda: d_flow(x_index=torch.randint(0, K, (B, D)) + K), V, "x_index"),
        (lambda: d_flow(beta_1=0.0), V, "beta_1"),
        (lambda: d_flow(dtype=torch.float16), TE, "dtype"),
    ],
    "bfn.discrete_update": [(lambda: d_update(y=torch.randn(B, D, K - 2)), V, "y")],
    "bfn.discretised_loss": [(lambda: ds_loss(n_bins=0), V, "n_bins"),
                             (lambda: ds_loss(sigma_1=1.0), V, "sigma_1"),
                             (lambda: ds_loss(log_sigma_x=torch.randn(B, D + 1)), V,
                              "log_sigma_x")],
    "bfn.discretised_probs": [(lambda: ds_probs(n_bins=1), V, "n_bins")],
    "bfn.continuous_step": [(lambda: c_step(t=1.5), V, "t"),
                            (lambda: c_step(alpha=0.0), V, "alpha"),
                            (lambda: c_step(sigma_1=1.5), V, "sigma_1")],
    "bfn.discrete_step": [(lambda: d_step(alpha=-1.0), V, "alpha"),
                          (lambda: d_step(logits=torch.randn(B, D, 1)), V, "logits"),
                          (lambda: d_step(logits=torch.randn(0, D, K)), V, "logits")],
    "bfn.discretised_step": [(lambda: ds_step(n_bins=1), V, "n_bins"),
                             (lambda: ds_step(alpha=-0.5), V, "alpha")],
    "bfn.generate": [(lambda: generate(kind="bad"), V, "kind"),
                     (lambda: generate(shape=(0, 3)), V, "shape"),
                     (lambda: generate(kind="discrete"), TE, "n_classes"),
                     (lambda: generate(n_steps=0), V, "n_steps")],
    "nn.TrajectoryBalance": [
        (lambda: gnn.TrajectoryBalance(log_z="zero"), TE, "log_z"),
        (lambda: gnn.TrajectoryBalance(torch.nn.Linear(1, 1))(
            torch.randn(B, T), None, torch.randn(B)), V, "conditioning"),
    ],
    "nn.LogPartitionVariance": [
        (lambda: gnn.LogPartitionVariance(loss="cubic")(torch.randn(B, T), None,
                                                        torch.randn(B)), V, "loss",
         "log_partition_variance"),
    ],
    "detailed_balance": [
        (lambda: db(log_flow=torch.randn(B, T + 1)), V, "log_flow"),
        (lambda: db(log_state_reward=torch.randn(B, T - 1)), V, "log_state_reward"),
        (lambda: db(log_flow=torch.ones(B, T, dtype=torch.int64)), TE, "log_flow"),
        (lambda: db(lengths=torch.tensor([1, 2, 3, 4])), V, "lengths"),
        (lambda: db(log_pf=torch.randn(5), log_pb=None, log_flow=torch.randn(5), lengths=None,
                    cu_seqlens=torch.tensor([0, 3, 2, 5]), log_reward=torch.randn(3)), V,
         "cu_seqlens"),
        (lambda: db(loss="quartic"), V, "loss"),
        (lambda: db(reduction="median"), V, "reduction"),
        (lambda: db(log_reward=torch.randn(B).to("meta")), V, "log_reward"),
        (lambda: db(log_flow=torch.randn(B, T).to("meta")), V, "log_flow"),
        (lambda: db(log_pb=torch.randn(B, T - 1)), V, "log_pb"),
        (lambda: db(log_pf=torch.ones(B, T, dtype=torch.int32)), TE, "log_pf"),
        (lambda: db(log_pb=torch.randn(B, T).half()), TE, "log_pb"),
        (lambda: db(lengths=torch.tensor([1, 0, 2, 3])), V, "lengths"),
        (lambda: db(lengths=torch.tensor([1.0, 2.0, 3.0, 3.0])), TE, "lengths"),
        (lambda: db(lengths=torch.tensor([1, 2, 3])), V, "lengths"),
        (lambda: db(lengths=None, mask=torch.tensor([[True, False, True]] * B)), V, "mask"),
        (lambda: db(log_pf=torch.randn(5), log_pb=None, log_flow=torch.randn(5), lengths=None,
                    cu_seqlens=torch.tensor([0, 2, 3, 4]), log_reward=torch.randn(3)), V,
         "cu_seqlens"),
        (lambda: db(log_pf=torch.randn(5), log_pb=None, log_flow=torch.randn(5), lengths=None,
                    cu_seqlens=torch.tensor([1, 2, 3, 5]), log_reward=torch.randn(3)), V,
         "cu_seqlens"),
        (lambda: db(log_reward=torch.zeros(B, dtype=torch.int64)), TE, "log_reward"),
        (lambda: db(log_reward=torch.randn(B + 1)), V, "log_reward"),
        (lambda: db(beta=torch.ones(B - 1)), V, "beta"),
        (lambda: db(loss="huber(-1)"), V, "loss"),
        (lambda: db(log_reward_clip_min=math.inf), V, "log_reward_clip_min"),
        (lambda: db(backend="opencl"), V, "backend"),
        (lambda: db(log_flow=torch.tensor([[math.nan] * T] * B), check_finite=True), V,
         "log_flow"),
        (lambda: db(log_state_reward=torch.tensor([[math.inf] * T] * B), check_finite=True), V,
         "log_state_reward"),
    ],
    "subtrajectory_balance": [
        (lambda: subtb(lamda=0.0), V, "lamda"),
        (lambda: subtb(lamda=1.5), V, "lamda"),
        (lambda: subtb(weighting="uniform"), V, "weighting"),
        (lambda: subtb(log_flow=torch.randn(B, T).double()), TE, "log_flow"),
        (lambda: subtb(lengths=torch.tensor([0, 1, 2, 3])), V, "lengths"),
        (lambda: subtb(loss="huber(0)"), V, "loss"),
        (lambda: subtb(beta=torch.ones(B + 1)), V, "beta"),
        (lambda: subtb(lamda=-0.1), V, "lamda"),
        (lambda: subtb(lamda=math.nan), V, "lamda"),
        (lambda: subtb(lamda="0.9"), TE, "lamda"),
        (lambda: subtb(lamda=torch.tensor(0.9)), TE, "lamda"),
        (lambda: subtb(weighting=None), V, "weighting"),
        (lambda: subtb(log_pb=torch.randn(B, T + 1)), V, "log_pb"),
        (lambda: subtb(log_state_reward=torch.randn(B, T).to("meta")), V, "log_state_reward"),
        (lambda: subtb(log_pf=torch.ones(B, T, dtype=torch.int64)), TE, "log_pf"),
        (lambda: subtb(log_state_reward=torch.randn(B, T).double()), TE, "log_state_reward"),
        (lambda: subtb(lengths=torch.tensor([1, 2, 3, 4])), V, "lengths"),
        (lambda: subtb(lengths=None, mask=torch.tensor([[False, True, True]] * B)), V, "mask"),
        (lambda: subtb(log_pf=torch.randn(5), log_pb=None, log_flow=torch.randn(5),
                       lengths=None, cu_seqlens=torch.tensor([0, 3, 2, 5]),
                       log_reward=torch.randn(3)), V, "cu_seqlens"),
        (lambda: subtb(log_pf=torch.randn(5), log_pb=None, log_flow=torch.randn(5),
                       lengths=None, cu_seqlens=torch.tensor([0, 2, 3, 6]),
                       log_reward=torch.randn(3)), V, "cu_seqlens"),
        (lambda: subtb(log_reward=torch.zeros(B, dtype=torch.int32)), TE, "log_reward"),
        (lambda: subtb(log_reward=torch.randn(())), V, "log_reward"),
        (lambda: subtb(loss="cubic"), V, "loss"),
        (lambda: subtb(log_reward_clip_min=math.nan), V, "log_reward_clip_min"),
        (lambda: subtb(backend="opencl"), V, "backend"),
        (lambda: subtb(log_pf=torch.tensor([[math.nan] * T] * B), check_finite=True), V,
         "log_pf"),
        (lambda: subtb(beta=torch.tensor(math.inf), check_finite=True), V, "beta"),
    ],
    "nn.DetailedBalance": [
        (lambda: gnn.DetailedBalance(loss="cubic")(torch.randn(B, T), None, torch.randn(B, T),
                                                   torch.randn(B)), V, "loss",
         "detailed_balance"),
    ],
    "nn.SubTrajectoryBalance": [
        (lambda: gnn.SubTrajectoryBalance(weighting="cubic")(
            torch.randn(B, T), None, torch.randn(B, T), torch.randn(B)), V, "weighting",
         "subtrajectory_balance"),
    ],
    "nn.LogitScaler": [  # otherwise plain nn layers: torch's own errors
        # log(0) made the output bias NaN, so g(beta) was NaN for every beta
        (lambda: gnn.LogitScaler(log_beta=True, init_identity_at=0.0), V, "init_identity_at"),
        (lambda: gnn.LogitScaler(init_identity_at=math.nan), V, "init_identity_at"),
    ],
    "nn.LogitScaledPolicy": [
        (lambda: gnn.LogitScaledPolicy(clip=(1.0, -1.0)).sample(torch.randn(N, A), 1.0, seed=0),
         V, "clip", "sample_actions"),
    ],
}

ALL_CASES = [pytest.param(name, index, id=f"{name}-{index}")
             for name, cases in CASES.items() for index in range(len(cases))]


def test_every_public_callable_is_audited():
    assert _public_callables() == set(CASES)


@pytest.mark.parametrize("name,index", ALL_CASES)
def test_bad_input_error_style(name, index):
    call, error, arg, *delegate = CASES[name][index]
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    message = str(info.value)
    assert type(info.value) is error, f"{name}: expected {error.__name__}, got {message!r}"
    match = STYLE.match(message)
    assert match, f"{name}: message does not follow the style: {message!r}"
    # an nn module reports the functional op it calls
    assert match["op"] == (delegate[0] if delegate else name.split(".")[-1]), message
    assert match["arg"] == arg, message


def test_valid_inputs_of_the_audit_run():
    """The base inputs every case starts from are valid: each error comes from its change."""
    for call in (tb, vargrad, db, subtb, sample, log_prob, c_output, c_loss, c_update, c_flow,
                 d_loss, d_flow, d_update, ds_loss, ds_probs, c_step, d_step, ds_step, generate):
        call()



_FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
_RANGE_CASES = [(dtype, nan_at) for dtype in _FLOATS for nan_at in
                (None, "first", "middle", "last")] + [(torch.int64, None)]


def _same_range(got, want):
    return all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("numel", [1, 5, 256, 257, 5000])
@pytest.mark.parametrize("dtype,nan_at", _RANGE_CASES)
def test_value_range_of_the_value_checks(numel, dtype, nan_at):
    """The value checks' (min, max): small CPU tensors go through a Python list, larger ones
    through NumPy, half types through torch; each must give torch's min and max, and NaN for
    both wherever a NaN sits (Python's min and max alone would skip one that is not first)."""
    from gfn_fast._checks import value_range

    gen = torch.Generator().manual_seed(numel)
    values = (torch.randn(numel, generator=gen) * 100).to(dtype)
    if nan_at is not None:
        values[{"first": 0, "middle": numel // 2, "last": numel - 1}[nan_at]] = math.nan
    low, high = value_range(values)
    if nan_at is not None:
        assert math.isnan(low) and math.isnan(high)
    else:
        assert (low, high) == (values.min().item(), values.max().item())
    first = (values[0].item(),) * 2
    assert _same_range(value_range(values[0]), first)  # 0-dim
    assert _same_range(value_range(values[:1].expand(numel)), first)  # stride 0
