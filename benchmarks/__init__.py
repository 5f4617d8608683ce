"""Benchmarks: scripts that print measurements and ratios (never timed unit tests)."""
