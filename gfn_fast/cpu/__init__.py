"""Numba kernels: the CPU backend. Kernels take NumPy views of torch's memory (no copies for
float32/float64; float16/bfloat16 inputs are widened to float32 first, since NumPy has no
bfloat16)."""
