"""Thrifty operator."""
