"""Continuous evaluation: rolling agreement between student and teacher, and demotion."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from thrifty_core.student.capture import normalise_label


def same_answer(student: str, teacher: str) -> bool:
    """Answers agree when their normalised forms are equal ("Card arrival." == card_arrival)."""
    return normalise_label(student) == normalise_label(teacher)


@dataclass
class AgreementTracker:
    """The last `window` comparisons; `below_gate` once `min_samples` were seen and the rate
    is under `min_agreement`."""

    min_agreement: float
    window: int = 200
    min_samples: int = 20
    results: deque[bool] = field(default_factory=deque)
    total: int = 0
    agreed: int = 0

    def add(self, agreed: bool) -> None:
        self.results.append(agreed)
        if len(self.results) > self.window:
            self.results.popleft()
        self.total += 1
        self.agreed += agreed

    @property
    def rate(self) -> float | None:
        return sum(self.results) / len(self.results) if self.results else None

    @property
    def below_gate(self) -> bool:
        rate = self.rate
        return (
            len(self.results) >= self.min_samples
            and rate is not None
            and (rate < self.min_agreement)
        )

    def reset(self) -> None:
        self.results.clear()
