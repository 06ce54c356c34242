"""The evaluation report: `report.json` and `report.png` in the version directory.

The plot has two panels: the coverage/agreement trade-off over confidence thresholds (with
the spec's threshold and gate marked) and the reliability diagram (calibration curve).
matplotlib runs headless (Agg backend, chosen per figure, no global state).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPORT_JSON = "report.json"
REPORT_PNG = "report.png"


def write_report(directory: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / REPORT_JSON
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True), "utf-8")
    png_path = directory / REPORT_PNG
    plot_report(report, png_path)
    return json_path, png_path


def plot_report(report: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    quality = report["quality"]
    gate = quality["gate"]
    curve = quality["trade_off"]
    fig = Figure(figsize=(11, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)

    xs = [p["threshold"] for p in curve]
    left.plot(xs, [p["coverage"] for p in curve], label="student coverage", marker=".")
    left.plot(
        xs,
        [p["agreement_with_fallback"] for p in curve],
        label="agreement (fallback counted)",
        marker=".",
    )
    left.plot(xs, [p["accuracy_covered"] for p in curve], label="agreement (student only)", ls="--")
    left.axvline(gate["confidence_threshold"], color="grey", ls=":", label="threshold")
    left.axhline(gate["min_agreement"], color="tab:orange", ls=":", lw=0.8)
    left.axhline(gate["min_coverage"], color="tab:blue", ls=":", lw=0.8)
    left.set_xlabel("confidence threshold")
    left.set_ylim(0, 1.02)
    verdict = "passed" if gate["passed"] else "failed"
    left.set_title(f"{report.get('version', '')} trade-off: gate {verdict}")
    left.legend(loc="lower left", fontsize=8)

    bins = quality["calibration_curve"]
    right.plot([0, 1], [0, 1], color="grey", ls=":", label="perfect")
    right.plot(
        [b["confidence"] for b in bins],
        [b["accuracy"] for b in bins],
        marker="o",
        label=f"student (ECE {quality['ece']:.3f})",
    )
    right.set_xlabel("confidence")
    right.set_ylabel("agreement with teacher")
    right.set_xlim(0, 1)
    right.set_ylim(0, 1.02)
    right.set_title("calibration")
    right.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))
