"""`python -m thrifty_distill.lm_check`: train the causal-lm student for a few steps and
answer with it, on whatever device is there (CUDA when available, else CPU); prints JSON.

The one-command GPU check: `uv run --frozen --all-extras python -m thrifty_distill.lm_check
--steps 50` (tiny random model, nothing downloaded). `--base-model PATH` uses a local chat
model instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from . import banking77
from .dataset import Example
from .lm import TINY, LmTrainConfig, device, predict_labels, train_lora


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--base-model", default=TINY)
    parser.add_argument("--labels", type=int, default=5)
    parser.add_argument("--per-label", type=int, default=20)
    args = parser.parse_args(argv)
    labels = sorted(banking77.load_labels())[: args.labels]
    rows = banking77.subset(banking77.load_rows(), labels, args.per_label)
    examples = [
        Example(text=t, answer=label, label=label, messages=banking77.messages(t, labels))
        for t, label in rows
    ]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        config = LmTrainConfig(
            base_model=args.base_model, epochs=1000, max_steps=args.steps, learning_rate=1e-2
        )
        started = time.perf_counter()
        info = train_lora(examples, out, config)
        answers, confidences = predict_labels(
            out, [e.text for e in examples[:10]], labels, base_model=args.base_model
        )
        result = {
            "device": device(),
            "train": info,
            "adapter_files": sorted(p.name for p in (out / "adapter").iterdir()),
            "answers": answers[:3],
            "mean_confidence": round(sum(confidences) / len(confidences), 4),
            "seconds": round(time.perf_counter() - started, 2),
        }
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
