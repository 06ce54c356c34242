"""`thrifty report`: a gateway's cost and savings summary (tables, Markdown, HTML + PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer


def register(app: typer.Typer) -> None:
    """Attach `thrifty report`."""
    app.command("report")(report)


def report(
    gateway: Annotated[str, typer.Option("--gateway", help="Gateway base URL.")],
    key: Annotated[str, typer.Option("--key", envvar="THRIFTY_ADMIN_KEY", help="Admin API key.")],
    period: Annotated[
        Literal["day", "week", "month"], typer.Option(help="Window: last day, week or month.")
    ] = "day",
    markdown: Annotated[
        Path | None, typer.Option("--markdown", help="Also write Markdown (plots as PNG).")
    ] = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write HTML (plots as PNG).")
    ] = None,
) -> None:
    """Print spend, savings by lever (gross and net), hit rates, top routes/tenants/models,
    student coverage and budgets, as the dashboard shows them."""
    import httpx
    from rich.console import Console

    from thrifty_cli import cost_report

    try:
        data = cost_report.fetch(gateway, key, period)
    except httpx.HTTPStatusError as exc:
        typer.echo(f"the gateway answered {exc.response.status_code}", err=True)
        raise typer.Exit(1) from exc
    except httpx.HTTPError as exc:
        typer.echo(f"cannot reach the gateway: {exc}", err=True)
        raise typer.Exit(1) from exc
    cost_report.print_report(Console(), data)
    for path, render in ((markdown, cost_report.markdown), (html, cost_report.html_document)):
        if path is None:
            continue
        plots = cost_report.write_plots(path.parent, path.stem, data)
        path.write_text(render(data, plots), encoding="utf-8")
        typer.echo(f"wrote {path} and {len(plots)} plots")
