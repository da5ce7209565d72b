"""Tiny, randomly initialised models built from configs, for tests, examples and benchmarks.

Nothing here downloads anything: each builder makes an architecture-identical (but small) model.
"""
