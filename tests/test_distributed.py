"""torch.distributed: 2 CPU processes (gloo) against one process on the concatenated batch.

One spawn runs every scenario in each worker (process start-up dominates the cost):
- DDP training step with VarGrad (process_group=WORLD) + TB on equal halves of the batch: the
  averaged loss and DDP's averaged gradients equal one process on the whole batch;
- op level, unequal halves, reduction="sum": sum of the ranks' losses = the whole-batch loss and
  each rank's input gradients are the rows of the whole-batch gradient (the backward all-reduce);
- per-rank sampling streams from one seed (gfn_fast.rank_seed).
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import available_backends
from torch.nn.parallel import DistributedDataParallel

import gfn_fast

WORLD = 2
BATCH, STEPS, FEATURES = 12, 6, 5
BACKENDS = ["reference"] + available_backends("cpu")


class Policy(torch.nn.Module):
    """Per-step log-probs from features, and a learned log Z."""

    def __init__(self):
        super().__init__()
        self.forward_head = torch.nn.Linear(FEATURES, 1, dtype=torch.float64)
        self.backward_head = torch.nn.Linear(FEATURES, 1, dtype=torch.float64)
        self.log_z = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, features):
        log_pf = torch.nn.functional.logsigmoid(self.forward_head(features)).squeeze(-1)
        log_pb = torch.nn.functional.logsigmoid(self.backward_head(features)).squeeze(-1)
        return log_pf, log_pb, self.log_z


def _data():
    generator = torch.Generator().manual_seed(42)
    features = torch.randn(BATCH, STEPS, FEATURES, generator=generator, dtype=torch.float64)
    lengths = torch.randint(1, STEPS + 1, (BATCH,), generator=generator)
    log_reward = torch.randn(BATCH, generator=generator, dtype=torch.float64) * 2
    return features, lengths, log_reward


def _model():
    torch.manual_seed(0)
    return Policy()


def _training_loss(model, features, lengths, log_reward, backend, group):
    log_pf, log_pb, log_z = model(features)
    variance = gfn_fast.log_partition_variance(log_pf, log_pb, log_reward, lengths=lengths,
                                               backend=backend, process_group=group)
    balance = gfn_fast.trajectory_balance(log_pf, log_pb, log_reward, log_z, lengths=lengths,
                                          loss="huber(0.5)", backend=backend)
    return variance + balance


def _op_level(log_pf, log_reward, lengths, backend, group):
    """VarGrad with reduction='sum' and its gradient w.r.t. the (leaf) log_pf and log_reward."""
    log_pf = log_pf.detach().clone().requires_grad_(True)
    log_reward = log_reward.detach().clone().requires_grad_(True)
    loss = gfn_fast.log_partition_variance(log_pf, None, log_reward, lengths=lengths,
                                           reduction="sum", loss="linex(0.4)", backend=backend,
                                           process_group=group)
    grads = torch.autograd.grad(loss, [log_pf, log_reward])
    return loss.detach(), grads


SPLIT = 5  # unequal halves for the op-level check: rows [0, 5) and [5, 12)


def _logits():
    return torch.randn(300, 17, generator=torch.Generator().manual_seed(3))


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    group = dist.group.WORLD
    features, lengths, log_reward = _data()
    half = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    mine = slice(0, SPLIT) if rank == 0 else slice(SPLIT, BATCH)
    results = {}
    for backend in BACKENDS:
        model = DistributedDataParallel(_model())
        loss = _training_loss(model, features[half], lengths[half], log_reward[half], backend,
                              group)
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        results[backend, "ddp"] = (mean_loss / WORLD,
                                   [p.grad.clone() for p in model.module.parameters()])
        log_pf = torch.randn(BATCH, STEPS, generator=torch.Generator().manual_seed(9),
                             dtype=torch.float64)
        loss, grads = _op_level(log_pf[mine], log_reward[mine], lengths[mine], backend, group)
        total = loss.clone()
        dist.all_reduce(total)
        results[backend, "op"] = (total, grads)
        results[backend, "sample"] = gfn_fast.sample_actions(
            _logits(), seed=gfn_fast.rank_seed(7), offset=2, backend=backend)[0]
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(out_dir / "init"), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddp_step_matches_one_process(worker_results, backend):
    features, lengths, log_reward = _data()
    model = _model()
    loss = _training_loss(model, features, lengths, log_reward, backend, None)
    loss.backward()
    for rank in range(WORLD):
        rank_loss, rank_grads = worker_results[rank][backend, "ddp"]
        torch.testing.assert_close(rank_loss, loss.detach(), rtol=1e-12, atol=1e-12)
        for got, want in zip(rank_grads, model.parameters(), strict=True):
            torch.testing.assert_close(got, want.grad, rtol=1e-10, atol=1e-12)
    # without the group, the halves would be centred on their own means: a different gradient
    half = slice(0, BATCH // WORLD)
    alone = _model()
    _training_loss(alone, features[half], lengths[half], log_reward[half], backend,
                   None).backward()
    grouped = worker_results[0][backend, "ddp"][1]
    assert not torch.allclose(alone.forward_head.weight.grad, grouped[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_unequal_batches_give_whole_batch_gradients(worker_results, backend):
    _, lengths, log_reward = _data()
    log_pf = torch.randn(BATCH, STEPS, generator=torch.Generator().manual_seed(9),
                         dtype=torch.float64)
    loss, (grad_pf, grad_reward) = _op_level(log_pf, log_reward, lengths, backend, None)
    for rank, rows in enumerate((slice(0, SPLIT), slice(SPLIT, BATCH))):
        total, (rank_pf, rank_reward) = worker_results[rank][backend, "op"]
        torch.testing.assert_close(total, loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rank_pf, grad_pf[rows], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(rank_reward, grad_reward[rows], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_draw_distinct_reproducible_streams(worker_results, backend):
    first, second = (worker_results[r][backend, "sample"] for r in range(WORLD))
    assert (first != second).float().mean() > 0.5  # 17 actions: equal draws ~ 1/17 of rows
    for rank, drawn in enumerate((first, second)):
        again = gfn_fast.sample_actions(_logits(), seed=gfn_fast.rank_seed(7, rank=rank),
                                        offset=2, backend=backend)[0]
        assert torch.equal(drawn, again)
    # the CPU backends draw the same stream as the reference for the same seed
    assert torch.equal(first, worker_results[0]["reference", "sample"])


def test_rank_seed_is_distinct_and_checked():
    seeds = {gfn_fast.rank_seed(123, rank=r) for r in range(4096)}
    assert len(seeds) == 4096 and all(0 <= s < 2**64 for s in seeds)
    assert gfn_fast.rank_seed(123) == gfn_fast.rank_seed(123, rank=0)  # not initialized: rank 0
    assert gfn_fast.rank_seed(2**64 + 5, rank=1) == gfn_fast.rank_seed(5, rank=1)
    with pytest.raises(ValueError, match="gfn_fast.rank_seed: `rank`"):
        gfn_fast.rank_seed(1, rank=-1)
    with pytest.raises(TypeError, match="gfn_fast.rank_seed: `seed`"):
        gfn_fast.rank_seed(1.5)


def test_process_group_argument_is_checked():
    with pytest.raises(TypeError, match="gfn_fast.log_partition_variance: `process_group`"):
        gfn_fast.log_partition_variance(torch.randn(3, 2), None, torch.randn(3),
                                        process_group="world")
