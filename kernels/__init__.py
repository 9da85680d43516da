"""Triton kernels, installed as gfn_fast.kernels: one module per op family."""
