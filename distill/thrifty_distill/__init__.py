"""Thrifty distill: export captured teacher answers, train, evaluate and gate students.

`thrifty distill export|train|evaluate|serve` (the entrypoints of the operator's Jobs and
Deployment) call `pipeline`; the classifier student's head is trained in `classifier`, the
causal-lm LoRA in `lm` (the `distill-lm` extra). Imports only `thrifty_core`.
"""
