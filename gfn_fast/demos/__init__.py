"""End-to-end demos run by `python -m gfn_fast demo ...`."""
