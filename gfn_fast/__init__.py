"""gfn_fast: fused kernels for GFlowNet losses and sampling, and Bayesian Flow Networks."""

from gfn_fast import nn
from gfn_fast._backends import backends
from gfn_fast._checks import set_validation, validation
from gfn_fast.balance import log_partition_variance, trajectory_balance

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "backends",
    "log_partition_variance",
    "nn",
    "set_validation",
    "trajectory_balance",
    "validation",
]

# ---- action sampling (ISSUE 4) ----
from gfn_fast.sampling import action_log_prob, pack_mask, sample_actions  # noqa: E402

__all__ += ["action_log_prob", "pack_mask", "sample_actions"]
# Bayesian Flow Networks: the public API lives in the module gfn_fast.bfn.
from gfn_fast import bfn  # noqa: E402

__all__ += ["bfn"]

# ---- reliability (ISSUE 7): per-rank sampling streams ----
from gfn_fast._rng import rank_seed  # noqa: E402

__all__ += ["rank_seed"]


# ---- Detailed balance / sub-trajectory balance ----
from gfn_fast.subtb import detailed_balance, subtrajectory_balance  # noqa: E402

__all__ += ["detailed_balance", "subtrajectory_balance"]
