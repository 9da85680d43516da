"""Numba kernels: the CPU backend. Kernels take NumPy views of torch's memory (no copies for
float32/float64; float16/bfloat16 inputs are widened to float32 first, since NumPy has no
bfloat16)."""

from gfn_fast.cpu._common import OUTPUTS, REUSE


def set_output_reuse(enabled: bool) -> bool:
    """Turn on or off the reuse of memory for large CPU outputs (gradients and the like, from
    1 MiB); returns the previous setting. On by default (GFN_FAST_REUSE_OUTPUTS=0 turns it off
    at import). A buffer is reused only when no tensor or view refers to it any more, so results
    never change; what changes is that a fresh allocation's page faults are not paid again.
    Turning it off also releases the buffers held."""
    previous = OUTPUTS.enabled
    OUTPUTS.enabled = bool(enabled) and OUTPUTS.available
    if not OUTPUTS.enabled:
        OUTPUTS.clear()
    return previous


def output_reuse(enabled: bool):
    """Context manager: output reuse on or off inside the block, for the calling thread only
    (threads whose blocks overlap cannot leave each other's setting behind). Turning it off
    releases the buffers held, as set_output_reuse(False) does."""
    if not enabled:
        OUTPUTS.clear()
    return REUSE.scoped(bool(enabled))
