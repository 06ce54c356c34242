"""Exact and semantic response caching (see `stage.py` for the request flow)."""
