"""What the gateway and the distill component share about students.

* `redact` — the default redaction hook for captured text (emails, phone and card numbers).
* `capture` — the capture record schema, the student's input text, label normalisation.
* `artifact` — versioned student artifacts: manifest, version resolution (pin or latest
  promoted), the classifier head.
* `classifier` — in-process classifier inference (shared embedder + calibrated softmax head).
* `serving` — the vLLM container arguments for a causal-lm adapter (used by the operator).

numpy is imported where used (the `embed` extra); nothing here imports torch.
"""
