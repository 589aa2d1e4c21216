"""Reproducible experiments: one folder per question, each with a README and a runner."""
