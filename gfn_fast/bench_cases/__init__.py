"""Benchmark cases of each op family for gfn_fast.benchmark (python -m gfn_fast bench)."""
