"""Thrifty distill."""
