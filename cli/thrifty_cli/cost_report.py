"""`thrifty report`: the dashboard's summary from a gateway's ledger, as rich tables, Markdown
or HTML (plots as PNG files next to the document).

Everything is built from two admin API calls (`/v1/thrifty/usage` with time buckets and
`/v1/thrifty/budgets`) into plain `Table`s, which each writer renders the same way.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

LEVERS = ("cache", "batch", "distill", "tier")
COLORS = {"spend": "#6b7280", "cache": "#2563eb", "batch": "#d97706", "distill": "#7c3aed",
          "tier": "#059669"}  # fmt: skip
Period = Literal["day", "week", "month"]
PERIODS: dict[str, tuple[float, Literal["hour", "day"]]] = {
    "day": (86400.0, "hour"),
    "week": (7 * 86400.0, "hour"),
    "month": (30 * 86400.0, "day"),
}


@dataclass(frozen=True, slots=True)
class Table:
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True)
class ReportData:
    gateway: str
    period: str
    since: float
    usage: dict[str, Any]
    budgets: list[dict[str, Any]]


def fetch(
    gateway: str, key: str, period: Period, *, now: float | None = None, timeout: float = 30
) -> ReportData:
    """Read the ledger and budgets of `gateway` with the admin key."""
    import httpx

    seconds, bucket = PERIODS[period]
    since = (now if now is not None else time.time()) - seconds
    headers = {"authorization": f"Bearer {key}"}
    base = gateway.rstrip("/")
    with httpx.Client(base_url=base, headers=headers, timeout=timeout) as client:
        usage = client.get("/v1/thrifty/usage", params={"bucket": bucket, "since": since})
        usage.raise_for_status()
        budgets = client.get("/v1/thrifty/budgets")
        budgets.raise_for_status()
    return ReportData(base, period, since, usage.json(), budgets.json().get("data", []))


def usd(value: float) -> str:
    magnitude = abs(value)
    digits = 0 if magnitude >= 100 else 2 if magnitude >= 1 else 4 if magnitude >= 0.01 else 6
    return f"{'-' if value < 0 else ''}${magnitude:,.{digits}f}"


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def tier_served(totals: dict[str, Any]) -> int:
    """Requests a cheaper tier served (every tier but the route's own targets)."""
    tiers: dict[str, int] = totals.get("served_by_tier") or {}
    return sum(n for name, n in tiers.items() if name != "route")


def served(totals: dict[str, Any], lever: str) -> int:
    return tier_served(totals) if lever == "tier" else int(totals["served_by_lever"][lever])


def tables(data: ReportData, top: int = 10) -> list[Table]:
    """The summary: totals, levers (gross/running/net, hit rate), top routes/tenants/models,
    student coverage and budgets."""
    u = data.usage
    t = u["totals"]
    net = u.get("net_savings")
    summary = [
        ("Requests", str(t["requests"])),
        ("Spend", usd(t["cost_usd"])),
        ("Without Thrifty", usd(t["baseline_cost_usd"])),
        ("Saved (gross)", f"{usd(t['saved_usd'])} ({pct(t['saved_usd'], t['baseline_cost_usd'])})"),
    ]
    if net:
        summary.append(("Saved (net of Thrifty's running cost)", usd(net["net_saved_usd"])))
    out = [Table("Summary", ("figure", "value"), tuple(summary))]

    lever_rows = []
    for lever in LEVERS:
        gross = t["saved_by_lever_usd"][lever]
        running = net["running_cost_usd"][lever] if net else None
        lever_rows.append(
            (
                lever,
                pct(served(t, lever), t["requests"]),
                usd(gross),
                usd(running) if running is not None else "-",
                usd(net["net_by_lever_usd"][lever]) if net else usd(gross),
            )
        )
    if net:
        shared = net["running_cost_usd"]["gateway"]
        lever_rows.append(("gateway (shared)", "-", "-", usd(shared), usd(-shared)))
    out.append(
        Table(
            "Savings by lever",
            ("lever", "hit rate", "gross saved", "running cost", "net"),
            tuple(lever_rows),
        )
    )
    groups = (("route", "Top routes"), ("tenant", "Top tenants"), ("model", "Top models"))
    for field, heading in groups:
        rows = sorted(u[f"by_{field}"], key=lambda r: r["cost_usd"], reverse=True)[:top]
        out.append(
            Table(
                f"{heading} by cost",
                (field, "requests", "cost", "saved"),
                tuple(
                    (r[field], str(r["requests"]), usd(r["cost_usd"]), usd(r["saved_usd"]))
                    for r in rows
                ),
            )
        )
    coverage = [
        (r["route"], pct(r["served_by_lever"]["distill"], r["requests"]))
        for r in u["by_route"]
        if r["served_by_lever"]["distill"]
    ]
    out.append(Table("Student coverage", ("route", "answered by the student"), tuple(coverage)))
    out.append(
        Table(
            "Budgets",
            ("scope", "owner", "period", "spent", "soft", "hard", "state"),
            tuple(
                (
                    b["scope"],
                    b["owner"],
                    f"{b['period']} from {b['period_start'][:10]}",
                    usd(b["spent_usd"]),
                    usd(b["soft_limit_usd"]) if b["soft_limit_usd"] is not None else "-",
                    usd(b["hard_limit_usd"]) if b["hard_limit_usd"] is not None else "-",
                    b["state"],
                )
                for b in data.budgets
            ),
        )
    )
    return out


def title(data: ReportData) -> str:
    since = datetime.fromtimestamp(data.since, UTC).strftime("%Y-%m-%d %H:%M")
    return f"Thrifty cost report - {data.gateway} - last {data.period} (since {since} UTC)"


def print_report(console: Any, data: ReportData) -> None:
    """Rich tables on `console`."""
    from rich.table import Table as RichTable

    console.print(f"[bold]{title(data)}[/bold]")
    for table in tables(data):
        rich = RichTable(title=table.title, title_justify="left")
        for i, header in enumerate(table.headers):
            rich.add_column(header, justify="left" if i == 0 else "right")
        for row in table.rows:
            rich.add_row(*row)
        if not table.rows:
            rich.add_row("(none)", *([""] * (len(table.headers) - 1)))
        console.print(rich)


# -- plots ---------------------------------------------------------------------------------


def series(data: ReportData) -> tuple[list[datetime], dict[str, list[float]]]:
    """Spend and savings per lever per time bucket (summed over tenants/routes/models)."""
    slots: dict[str, dict[str, float]] = {}
    for b in data.usage.get("buckets") or ():
        acc = slots.setdefault(b["start"], dict.fromkeys(("spend", *LEVERS), 0.0))
        acc["spend"] += b["cost_usd"]
        for lever in LEVERS:
            acc[lever] += b["saved_by_lever_usd"][lever]
    starts = sorted(slots)
    times = [datetime.fromisoformat(s.replace("Z", "+00:00")) for s in starts]
    return times, {name: [slots[s][name] for s in starts] for name in ("spend", *LEVERS)}


def write_plots(directory: Path, stem: str, data: ReportData) -> list[Path]:
    """PNG plots: spend and savings over time by lever; net savings by lever."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    times, values = series(data)
    xs_time = [t.timestamp() / 86400 for t in times]  # matplotlib dates: days since 1970
    fig, ax = plt.subplots(figsize=(10, 4))
    width = (1 / 24 if PERIODS[data.period][1] == "hour" else 1) * 0.8
    bottom = [0.0] * len(times)
    for name in ("spend", *LEVERS):
        heights = [max(v, 0.0) for v in values[name]]
        label = name if name == "spend" else f"saved: {name}"
        ax.bar(xs_time, heights, width, bottom=bottom, color=COLORS[name], label=label)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_title("Spend and savings over time (bar = cost without Thrifty)")
    ax.set_ylabel("USD")
    ax.legend(loc="upper left", fontsize=8)
    ax.xaxis_date()
    fig.autofmt_xdate()
    fig.tight_layout()
    over_time = directory / f"{stem}-over-time.png"
    fig.savefig(over_time, dpi=100)
    plt.close(fig)
    paths.append(over_time)

    totals = data.usage["totals"]
    net = data.usage.get("net_savings")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    gross = [totals["saved_by_lever_usd"][lever] for lever in LEVERS]
    xs = list(range(len(LEVERS)))
    ax.bar([x - 0.2 for x in xs], gross, 0.4, color=[COLORS[lv] for lv in LEVERS], label="gross")
    if net:
        nets = [net["net_by_lever_usd"][lever] for lever in LEVERS]
        ax.bar([x + 0.2 for x in xs], nets, 0.4, color="#9ca3af", label="net of running cost")
    ax.axhline(0, color="#374151", linewidth=0.8)
    ax.set_xticks(xs, list(LEVERS))
    ax.set_ylabel("USD")
    ax.set_title("Savings by lever")
    ax.legend(fontsize=8)
    fig.tight_layout()
    levers = directory / f"{stem}-levers.png"
    fig.savefig(levers, dpi=100)
    plt.close(fig)
    paths.append(levers)
    return paths


# -- documents -----------------------------------------------------------------------------


def markdown(data: ReportData, plots: Sequence[Path] = ()) -> str:
    lines = [f"# {title(data)}", ""]
    for plot in plots:
        lines += [f"![{plot.stem}]({plot.name})", ""]
    for table in tables(data):
        lines += [f"## {table.title}", ""]
        if not table.rows:
            lines += ["(none)", ""]
            continue
        lines.append("| " + " | ".join(table.headers) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(table.headers) - 1)) + "|")
        for row in table.rows:
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        lines.append("")
    return "\n".join(lines)


def html_document(data: ReportData, plots: Sequence[Path] = ()) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title(data))}</title>",
        "<style>body{font:14px system-ui,sans-serif;margin:2rem;color:#1f2937}"
        "table{border-collapse:collapse;margin-bottom:1.5rem}"
        "th,td{padding:.25rem .6rem;border-bottom:1px solid #e5e7eb;text-align:right}"
        "th:first-child,td:first-child{text-align:left}img{max-width:100%}</style>",
        f"</head><body><h1>{esc(title(data))}</h1>",
    ]
    parts += [f"<img src='{esc(p.name)}' alt='{esc(p.stem)}'>" for p in plots]
    for table in tables(data):
        parts.append(f"<h2>{esc(table.title)}</h2>")
        if not table.rows:
            parts.append("<p>(none)</p>")
            continue
        head = "".join(f"<th>{esc(h)}</th>" for h in table.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in table.rows
        )
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)
