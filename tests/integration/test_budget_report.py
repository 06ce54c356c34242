"""`thrifty report` against a running gateway: rich tables on stdout, Markdown and HTML with
PNG plots, the same figures as the ledger API."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.procs import Gateway, Simulator, local_config

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n"


def report(gw: Gateway, key: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "thrifty_cli", "report", "--gateway", gw.url, "--key", key, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture
def busy_gateway(gateway_factory: GatewayFactory, simulator: Simulator) -> Gateway:
    config = local_config(simulator.url, cache=True)
    routes: list[dict[str, Any]] = config["routes"]
    routes.append(
        {
            "name": "smart",
            "targets": [{"provider": "simulator", "model": "gpt-4o"}],
            "tiering": {
                "tiers": [
                    {
                        "name": "cheap",
                        "targets": [{"provider": "simulator", "model": "gpt-4o-mini"}],
                        "rules": [{"maxPromptTokens": 100}],
                    }
                ]
            },
        }
    )
    tenants: list[dict[str, Any]] = config["tenants"]
    tenants[0]["budget"] = {"period": "month", "softLimitUsd": 1, "hardLimitUsd": 2}
    gw = gateway_factory(
        routes=routes,
        tenants=tenants,
        cachePolicies=config["cachePolicies"],
        defaultCachePolicy="local",
        netSavings={"components": [{"name": "gw", "lever": "gateway", "cpu": 1}]},
    )
    client = gw.openai("sk-local-a")
    for i in range(4):
        messages: Any = [{"role": "user", "content": f"Question {i % 2}: where is my parcel?"}]
        client.chat.completions.create(model="smart", messages=messages)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        usage = httpx.get(
            f"{gw.base_url()}/thrifty/usage", headers={"authorization": "Bearer sk-local-admin"}
        ).json()
        if usage["totals"]["requests"] >= 4:
            break
        time.sleep(0.05)
    return gw


def test_report_prints_tables_and_writes_markdown_and_html(
    busy_gateway: Gateway, tmp_path: Path
) -> None:
    md = tmp_path / "out" / "report.md"
    page = tmp_path / "out" / "report.html"
    md.parent.mkdir()
    files = ("--markdown", str(md), "--html", str(page))
    done = report(busy_gateway, "sk-local-admin", "--period", "week", *files)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for heading in ("Summary", "Savings by lever", "Top routes by cost", "Budgets"):
        assert heading in out
    assert "smart" in out and "team-a" in out
    assert "Saved (net of Thrifty's running cost)" in out
    assert "gateway (shared)" in out

    text = md.read_text()
    assert "![report-over-time](report-over-time.png)" in text
    assert "| tier | 50.0% |" in text  # two of the four requests were cache hits
    assert "| cache | 50.0% |" in text
    assert "| tenant | team-a | month from" in text
    html = page.read_text()
    assert "<img src='report-levers.png'" in html and "<table>" in html
    for name in ("report-over-time.png", "report-levers.png"):
        data = (md.parent / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5_000


def test_report_with_a_wrong_key_fails_cleanly(busy_gateway: Gateway) -> None:
    done = report(busy_gateway, "sk-wrong")
    assert done.returncode == 1
    assert "the gateway answered 401" in done.stderr
