"""Harness cases for detailed balance (DB) and sub-trajectory balance (SubTB), and the torchgfn
driver that bench/bench_subtb.py shares.

Two kinds of case, each forward+backward in float32:
* synthetic: random lengths in [1, T], random log-probs and flows; DB and SubTB(0.9,
  geometric_within) through each gfn_fast backend of the device, the plain-PyTorch reference in
  eager mode and under torch.compile. The SubTB reference materialises [B, T+1, T+1] residuals
  (several such temporaries), which bounds the sizes: B=2048, T=64 on CPU (~35 MB each).
* torchgfn (when installed): HyperGrid(ndim=2) trajectories sampled by torchgfn's own sampler
  with a low exit logit, so most run to the far corner (T = max length + 1); torchgfn's
  `SubTBGFlowNet.loss` driven with its estimator outputs precomputed and cached as leaf tensors
  requiring grad (`cached_subtb`), against gfn_fast and the reference on those same tensors
  (time-major, read in place through `.T`). DB is torchgfn's SubTBGFlowNet with
  weighting="DB" (the mean of the length-1 residuals, which is DB; torchgfn's DBGFlowNet
  evaluates log F inside its loss and cannot be fed cached outputs).
"""

import importlib.util

import torch

import gfn_fast
from gfn_fast.benchmark import Case, compiled, timed_backends
from gfn_fast.reference import subtb as reference
from gfn_fast.reference.losses import SQUARED

LAMDA = 0.9


def synthetic(batch: int, steps: int, seed: int = 0, device="cpu"):
    """([log_pf, log_pb, log_flow] [B, T] leaves requiring grad, log_reward [B], lengths [B])."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, steps + 1, (batch,), generator=gen)
    tensors = [torch.randn(batch, steps, generator=gen) for _ in range(3)]
    tensors[0] = -tensors[0].abs()
    tensors[1] = -tensors[1].abs()
    log_reward = torch.randn(batch, generator=gen)
    return ([t.to(device).requires_grad_() for t in tensors], log_reward.to(device),
            lengths.to(device))


# ---- torchgfn: trajectories, estimators, and its loss on cached estimator outputs


def hypergrid_batch(max_length: int, batch: int, seed: int, device="cpu"):
    """(env, preprocessor, trajectories) from torchgfn's sampler; lengths up to max_length + 1."""
    from gfn.estimators import DiscretePolicyEstimator
    from gfn.gym import HyperGrid
    from gfn.preprocessors import KHotPreprocessor
    from gfn.samplers import Sampler

    class RarelyExit(torch.nn.Module):
        """Uniform over moves, exit logit -4: trajectories mostly end at the far corner."""

        def __init__(self, n_actions: int):
            super().__init__()
            self.n_actions = n_actions

        def forward(self, states: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(states.shape[0], self.n_actions, device=states.device)
            logits[:, -1] = -4.0
            return logits

    torch.manual_seed(seed)
    env = HyperGrid(ndim=2, height=max_length // 2 + 1, validate_modes=False, device=device)
    preprocessor = KHotPreprocessor(env.height, env.ndim)
    policy = DiscretePolicyEstimator(RarelyExit(env.n_actions), env.n_actions,
                                     preprocessor=preprocessor)
    with torch.no_grad():
        trajectories = Sampler(policy).sample_trajectories(env, n=batch)
    return env, preprocessor, trajectories


def estimators(env, preprocessor, hidden: int = 64, device="cpu"):
    """torchgfn MLP estimators (P_F, P_B, log F) for `env`."""
    from gfn.estimators import DiscretePolicyEstimator, ScalarEstimator
    from gfn.utils.modules import MLP

    dim = preprocessor.output_dim
    pf = DiscretePolicyEstimator(MLP(dim, env.n_actions, hidden_dim=hidden, n_hidden_layers=2),
                                 env.n_actions, preprocessor=preprocessor)
    pb = DiscretePolicyEstimator(MLP(dim, env.n_actions - 1, hidden_dim=hidden,
                                     n_hidden_layers=2), env.n_actions,
                                 preprocessor=preprocessor, is_backward=True)
    log_flow = ScalarEstimator(MLP(dim, 1, hidden_dim=hidden, n_hidden_layers=2),
                               preprocessor=preprocessor)
    return pf.to(device), pb.to(device), log_flow.to(device)


def cached_subtb(env, trajectories, pf, pb, log_flow, weighting: str = "geometric_within"):
    """(torchgfn SubTBGFlowNet whose estimator outputs are the returned leaves, leaves): the
    leaves are time-major [T, B] log_pf, log_pb and [T, B] log state flows, detached copies of
    the estimators' outputs on `trajectories`, requiring grad."""
    from gfn.gflownet import SubTBGFlowNet

    probe = SubTBGFlowNet(pf, pb, log_flow, lamda=LAMDA)
    with torch.no_grad():
        cached_pf, cached_pb = probe.get_pfs_and_pbs(trajectories)
        cached_flow = probe.calculate_log_state_flows(env, trajectories, cached_pf)
    leaves = [t.detach().clone().requires_grad_() for t in (cached_pf, cached_pb, cached_flow)]

    class CachedSubTB(SubTBGFlowNet):
        def get_pfs_and_pbs(self, trajectories, recalculate_all_logprobs=True):
            return leaves[0], leaves[1]

        def calculate_log_state_flows(self, env, trajectories, log_pf_trajectories):
            return leaves[2]

    return CachedSubTB(pf, pb, log_flow, lamda=LAMDA, weighting=weighting), leaves


def compare_with_torchgfn(cached, env, trajectories, leaves, loss_fn) -> tuple[float, float]:
    """(relative loss difference, max relative gradient difference) of `loss_fn(leaves)` against
    torchgfn's `cached.loss`. torchgfn leaves log_pb of the exit action out of sub-trajectories
    ending at the sink (it is structurally 0 there, see docs/torchgfn.md), so its gradient there
    is 0 and those entries are not compared."""
    theirs = cached.loss(env, trajectories)
    their_grads = torch.autograd.grad(theirs, leaves, allow_unused=True)
    ours = loss_fn(leaves)
    our_grads = torch.autograd.grad(ours, leaves)
    relative = abs(float(ours.detach()) - float(theirs.detach())) / abs(float(theirs.detach()))
    lengths = trajectories.terminating_idx
    steps = torch.arange(leaves[0].shape[0], device=lengths.device)[:, None]
    exit_step = steps == (lengths - 1)[None, :]
    their_grads = [torch.zeros_like(leaf) if g is None else g
                   for leaf, g in zip(leaves, their_grads, strict=True)]
    their_grads[1] = torch.where(exit_step, our_grads[1], their_grads[1])
    grad_error = max(float((ours_g - g).abs().max() / g.abs().max().clamp(min=1e-30))
                     for ours_g, g in zip(our_grads, their_grads, strict=True))
    return relative, grad_error


# ---- harness cases


def _db_reference(s):
    return reference.detailed_balance(s["log_pf"], s["log_pb"], s["log_flow"], None,
                                      s["lengths"], False, s["log_reward"], None, -float("inf"),
                                      SQUARED, 0.0, reference.MEAN)


def _subtb_reference(s):
    return reference.subtrajectory_balance(s["log_pf"], s["log_pb"], s["log_flow"], None,
                                           s["lengths"], False, s["log_reward"], None,
                                           -float("inf"), SQUARED, 0.0, LAMDA,
                                           "geometric_within")


def _fused(loss: str, backend: str):
    if loss == "db":
        return lambda s: gfn_fast.detailed_balance(s["log_pf"], s["log_pb"], s["log_flow"],
                                                   s["log_reward"], lengths=s["lengths"],
                                                   backend=backend)
    return lambda s: gfn_fast.subtrajectory_balance(s["log_pf"], s["log_pb"], s["log_flow"],
                                                    s["log_reward"], lengths=s["lengths"],
                                                    lamda=LAMDA, weighting="geometric_within",
                                                    backend=backend)


def _fwd_bwd(forward):
    def call(state):
        return torch.autograd.grad(forward(state), state["leaves"])
    return call


def _impls(device, loss: str) -> dict:
    plain = _db_reference if loss == "db" else _subtb_reference
    impls = {"eager": _fwd_bwd(plain), "torch.compile": _fwd_bwd(compiled(plain))}
    impls.update({f"gfn_fast[{b}]": _fwd_bwd(_fused(loss, b)) for b in timed_backends(device)})
    return impls


def _bytes_moved(loss: str, batch: int, steps: int) -> int:
    """Bytes-moved model, float32, over the padded [B, T] arrays (the kernels skip the padding
    on reads, but the gradients are written in full):
    DB: the forward reads log_pf, log_pb, log_flow; the backward re-reads them (it saves nothing
        but its inputs) and writes their three gradients: 9 arrays of B*T.
    SubTB: the forward reads the three inputs and writes the potentials [B, T+1]; the backward
        reads the potentials and writes three gradients: 6 arrays of B*T and 2 of B*(T+1).
    Per-trajectory vectors (lengths, log_reward, row weights) are ignored."""
    if loss == "db":
        return 9 * 4 * batch * steps
    return 6 * 4 * batch * steps + 2 * 4 * batch * (steps + 1)


_TITLES = {"db": ("detailed_balance", "DB"),
           "subtb": ("subtrajectory_balance", f"SubTB({LAMDA}) geometric_within")}


def synthetic_cases(device, quick) -> list[Case]:
    if device.type == "cuda":
        sizes = [(4096, 64)] if quick else [(16384, 128), (4096, 256)]
    else:
        # the references' [B, T+1, T+1] temporaries bound the large end (module docstring)
        sizes = [(256, 16)] if quick else [(256, 16), (2048, 64)]
    cases = []
    for batch, steps in sizes:
        def setup(dev, batch=batch, steps=steps):
            leaves, log_reward, lengths = synthetic(batch, steps, device=dev)
            return {"log_pf": leaves[0], "log_pb": leaves[1], "log_flow": leaves[2],
                    "log_reward": log_reward, "lengths": lengths, "leaves": leaves}

        for loss in ("db", "subtb"):
            op, title = _TITLES[loss]
            cases.append(Case(op, f"{title} B={batch} T={steps} random lengths fp32 fwd+bwd",
                              {"B": batch, "T": steps, "dtype": "float32", "lamda": LAMDA,
                               "lengths": "uniform[1, T]"},
                              _bytes_moved(loss, batch, steps), setup, _impls(device, loss)))
    return cases


def torchgfn_cases(device, quick) -> list[Case]:
    """SubTB and DB on torchgfn HyperGrid trajectories, torchgfn's loss as a peer; [] without
    torchgfn. Before timing, setup checks that every implementation agrees with torchgfn."""
    if importlib.util.find_spec("gfn") is None:  # found, not imported: see hypergrid_batch
        return []
    max_length, batch = (16, 256) if quick else (64, 2048)
    cases = []
    for loss in ("db", "subtb"):
        weighting = "DB" if loss == "db" else "geometric_within"

        def setup(dev, weighting=weighting, loss=loss):
            env, preprocessor, trajectories = hypergrid_batch(max_length, batch,
                                                              seed=max_length, device=dev)
            pf, pb, log_flow = estimators(env, preprocessor, device=dev)
            cached, leaves = cached_subtb(env, trajectories, pf, pb, log_flow, weighting)
            state = {"log_pf": leaves[0].T, "log_pb": leaves[1].T, "log_flow": leaves[2].T,
                     "log_reward": trajectories.log_rewards,
                     "lengths": trajectories.terminating_idx, "leaves": leaves,
                     "torchgfn": (cached, env, trajectories)}
            # gfn_fast's reference against torchgfn (the backends against the reference are the
            # tests' business): a fused backend called here would compile its kernels outside
            # the first call the bench reports
            relative, grad_error = compare_with_torchgfn(
                cached, env, trajectories, leaves,
                lambda _leaves: _fused(loss, "reference")(state))
            if not (relative < 1e-4 and grad_error < 1e-3):
                raise AssertionError(f"gfn_fast disagrees with torchgfn: loss {relative:.2e}, "
                                     f"gradients {grad_error:.2e} (relative)")
            return state

        def torchgfn(state):
            cached, env, trajectories = state["torchgfn"]
            return torch.autograd.grad(cached.loss(env, trajectories), state["leaves"],
                                       allow_unused=True)

        op, title = _TITLES[loss]
        impls = {"torchgfn": torchgfn, **_impls(device, loss)}
        steps = max_length + 1
        cases.append(Case(op, f"{title} torchgfn HyperGrid B={batch} T={steps} fp32 fwd+bwd",
                          {"B": batch, "T": steps, "dtype": "float32", "lamda": LAMDA,
                           "lengths": "torchgfn HyperGrid(ndim=2)"},
                          _bytes_moved(loss, batch, steps), setup, impls))
    return cases


def subtb_cases(device, quick) -> list[Case]:
    return synthetic_cases(device, quick) + torchgfn_cases(device, quick)
