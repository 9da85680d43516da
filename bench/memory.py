"""Peak CPU memory of one call (kept for bench_subtb.py; the harness owns the method)."""

import torch

from gfn_fast.benchmark import peak_memory


def peak_bytes(fn) -> int:
    """Peak bytes allocated by torch during fn(), above what was live before it."""
    return peak_memory(fn, torch.device("cpu"))
