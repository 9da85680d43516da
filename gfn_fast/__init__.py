"""gfn_fast: fused kernels for GFlowNet losses and sampling, and Bayesian Flow Networks."""

from gfn_fast import nn
from gfn_fast._backends import backends
from gfn_fast._checks import validation
from gfn_fast.balance import log_partition_variance, trajectory_balance

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "backends",
    "log_partition_variance",
    "nn",
    "trajectory_balance",
    "validation",
]

# ---- Detailed balance / sub-trajectory balance ----
from gfn_fast.subtb import detailed_balance, subtrajectory_balance  # noqa: E402

__all__ += ["detailed_balance", "subtrajectory_balance"]
