"""Thrifty gateway."""
