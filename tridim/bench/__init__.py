"""Benchmarks: plain-data results for the command line and the notebooks."""
