"""Benchmarks: run on demand, results recorded in docs/benchmarks/."""
