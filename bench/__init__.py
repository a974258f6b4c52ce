"""Benchmarks: each prints what it measured and writes it as JSON under bench/results/."""
