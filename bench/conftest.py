"""pytest-benchmark suites over the cases of gfn_fast.benchmark (run with
`python -m pytest bench --benchmark-enable`)."""

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
