"""Benchmarks: each measures its contenders side by side in one run and returns a flat dict of figures."""
