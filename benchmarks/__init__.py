"""Benchmarks of tomofield's fast path against a naive reference (``python -m benchmarks``).

See docs/benchmarks.md for the commands and the figures they gave.
"""
