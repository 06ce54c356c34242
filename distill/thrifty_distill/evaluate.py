"""Evaluation of a student against the teacher on the held-out split (pure functions).

Agreement is measured against the teacher's own answers (the student's target), not against
ground truth. "With fallback" counts every request: those under the confidence threshold are
answered by the teacher, so they agree by definition; the gate is applied to that number and
to the coverage (the share the student answers on its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20)) + (0.97, 0.99)
CALIBRATION_BINS = 10


@dataclass(frozen=True, slots=True)
class TradeOff:
    threshold: float
    coverage: float
    accuracy_covered: float
    agreement_with_fallback: float

    def as_dict(self) -> dict[str, float]:
        return {
            "threshold": self.threshold,
            "coverage": round(self.coverage, 5),
            "accuracy_covered": round(self.accuracy_covered, 5),
            "agreement_with_fallback": round(self.agreement_with_fallback, 5),
        }


def trade_off(
    predicted: Sequence[str], confidence: Sequence[float], teacher: Sequence[str], threshold: float
) -> TradeOff:
    n = len(teacher)
    if n == 0:
        return TradeOff(threshold, 0.0, 0.0, 1.0)
    covered = [i for i in range(n) if confidence[i] >= threshold]
    right = sum(1 for i in covered if predicted[i] == teacher[i])
    return TradeOff(
        threshold=threshold,
        coverage=len(covered) / n,
        accuracy_covered=right / len(covered) if covered else 0.0,
        agreement_with_fallback=(right + n - len(covered)) / n,
    )


def calibration(
    predicted: Sequence[str],
    confidence: Sequence[float],
    teacher: Sequence[str],
    bins: int = CALIBRATION_BINS,
) -> tuple[list[dict[str, float]], float]:
    """Reliability curve (equal-width confidence bins) and expected calibration error."""
    n = len(teacher)
    rows: list[dict[str, float]] = []
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [
            i
            for i in range(n)
            if lo <= confidence[i] < hi or (b == bins - 1 and confidence[i] >= hi)
        ]
        if not idx:
            continue
        conf = sum(confidence[i] for i in idx) / len(idx)
        acc = sum(1 for i in idx if predicted[i] == teacher[i]) / len(idx)
        ece += len(idx) / n * abs(conf - acc)
        rows.append(
            {
                "lo": lo,
                "hi": hi,
                "count": len(idx),
                "confidence": round(conf, 5),
                "accuracy": round(acc, 5),
            }
        )
    return rows, ece


def per_class(
    predicted: Sequence[str], teacher: Sequence[str], labels: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per label (the teacher's answers as the target)."""
    tp = dict.fromkeys(labels, 0)
    fp = dict.fromkeys(labels, 0)
    fn = dict.fromkeys(labels, 0)
    for p, t in zip(predicted, teacher, strict=True):
        if p == t:
            tp[t] = tp.get(t, 0) + 1
        else:
            fp[p] = fp.get(p, 0) + 1
            fn[t] = fn.get(t, 0) + 1
    out: dict[str, dict[str, float]] = {}
    for label in labels:
        precision = tp[label] / (tp[label] + fp[label]) if tp[label] + fp[label] else 0.0
        recall = tp[label] / (tp[label] + fn[label]) if tp[label] + fn[label] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": tp[label] + fn[label],
        }
    return out


def evaluate_predictions(
    predicted: Sequence[str],
    confidence: Sequence[float],
    teacher: Sequence[str],
    labels: Sequence[str],
    *,
    threshold: float,
    min_agreement: float,
    min_coverage: float,
) -> dict[str, Any]:
    """Every quality figure of the report, and whether the gate passes at `threshold`."""
    if not (len(predicted) == len(confidence) == len(teacher)):
        raise ValueError("predicted, confidence and teacher must have the same length")
    n = len(teacher)
    curve, ece = calibration(predicted, confidence, teacher)
    chosen = trade_off(predicted, confidence, teacher, threshold)
    classes = per_class(predicted, teacher, labels)
    f1s = [c["f1"] for c in classes.values() if c["support"]]
    passed = (
        n > 0
        and chosen.agreement_with_fallback >= min_agreement
        and chosen.coverage >= min_coverage
    )
    return {
        "examples": n,
        "agreement": sum(1 for p, t in zip(predicted, teacher, strict=True) if p == t) / n
        if n
        else 0.0,
        "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
        "ece": round(ece, 5),
        "calibration_curve": curve,
        "per_class": classes,
        "trade_off": [trade_off(predicted, confidence, teacher, t).as_dict() for t in THRESHOLDS],
        "at_threshold": chosen.as_dict(),
        "gate": {
            "confidence_threshold": threshold,
            "min_agreement": min_agreement,
            "min_coverage": min_coverage,
            "passed": passed,
        },
    }
