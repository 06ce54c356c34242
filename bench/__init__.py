"""Thrifty benchmarks: each `bench/bench_*.py` exposes `main() -> dict` and prints JSON."""
