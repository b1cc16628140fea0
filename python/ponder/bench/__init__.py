"""Benchmarks runnable from an installed wheel as ``ponder bench NAME``."""

BENCHMARKS = ("paged_attention", "decode", "generate", "search", "prm")
