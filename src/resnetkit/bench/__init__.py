"""Benchmarks: resnetkit's fast path against the standard PyTorch code a user would write, in one process."""
