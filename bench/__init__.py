"""Benchmarks: run from the checkout as modules (``.venv/bin/python -m bench.api``), as `make bench` does."""
