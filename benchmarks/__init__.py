"""Benchmarks: real broker, real publishers and client processes on loopback.

Run ``python -m benchmarks SCENARIO`` (see benchmarks/README.md).
"""
