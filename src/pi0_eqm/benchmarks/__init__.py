"""Benchmark runners on top of the library: the embedded Meta-World benchmark and the toy task."""
