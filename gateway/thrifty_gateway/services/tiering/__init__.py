"""Tiered model routing: rules on request features pick a cheaper tier, an optional cascade
checks the cheap answer and escalates (see stage.py)."""
