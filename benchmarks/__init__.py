"""Benchmarks: one module per question, each writing results.json, results.md and a PNG."""
