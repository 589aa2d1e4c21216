"""Deployment: export a trained run to a serving bundle, top-K retrieval, and the HTTP service."""
