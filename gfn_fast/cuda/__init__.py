"""Glue between torch tensors and the CUDA extension gfn_fast._C: pointers, strides and the
current stream go in, nothing is computed here."""
