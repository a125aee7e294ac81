"""Helpers for tests and benchmarks: running agents, clocks, fake networks."""
