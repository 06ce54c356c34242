"""The savings dashboard in headless Chromium (Debian's `chromium`, driven by Playwright).

A gateway and the provider simulator run as separate processes; a ShareGPT workload is
replayed through the official openai client (cache hits, a tiered route, two tenants, a
budget); then the page must load with no console errors, fetch nothing outside the gateway,
and draw every chart from the ledger. The screenshot is saved under artifacts/.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright

from tests.integration.procs import Gateway, local_config, start_gateway, start_simulator
from thrifty_cli.demo import build_workload

# Local processes and a local browser, no control plane: marked like the integration tests.
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEYS = {"team-a": "sk-local-a", "team-b": "sk-local-b"}
ADMIN = "sk-local-admin"


def dashboard_config(simulator_url: str) -> dict[str, Any]:
    config = local_config(simulator_url, cache=True)
    config["routes"].append(
        {
            "name": "smart",
            "targets": [{"provider": "simulator", "model": "gpt-4o"}],
            "tiering": {
                "tiers": [
                    {
                        "name": "cheap",
                        "targets": [{"provider": "simulator", "model": "gpt-4o-mini"}],
                        "rules": [{"maxPromptTokens": 60}],
                    }
                ]
            },
            "budget": {"period": "month", "softLimitUsd": 5, "hardLimitUsd": 20},
        }
    )
    config["tenants"][0]["budget"] = {"period": "day", "softLimitUsd": 0.002, "hardLimitUsd": 1}
    config["netSavings"] = {
        "components": [
            {"name": "gateway", "lever": "gateway", "replicas": 2, "cpu": 0.5, "memoryGib": 1},
            {"name": "redis", "lever": "cache", "replicas": 1, "cpu": 0.1, "memoryGib": 0.5},
        ]
    }
    return config


def replay(gw: Gateway, n: int) -> int:
    """Replay a ShareGPT workload (popular prompts repeat, so the cache hits)."""
    clients = {tenant: gw.openai(key) for tenant, key in KEYS.items()}
    sent = 0
    for call in build_workload(n, seed=11):
        client = clients[call.tenant]
        if call.endpoint == "embeddings":
            client.embeddings.create(model=call.model, input=call.prompt)
        else:
            model = "smart" if call.model == "gpt-4o" else call.model
            messages: Any = [{"role": "user", "content": call.prompt}]
            client.chat.completions.create(model=model, messages=messages, max_tokens=200)
        sent += 1
    return sent


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("dashboard")
    sim = start_simulator(workdir)
    try:
        gw = start_gateway(workdir, dashboard_config(sim.url))
        try:
            sent = replay(gw, 60)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                usage = httpx.get(
                    f"{gw.base_url()}/thrifty/usage",
                    headers={"authorization": f"Bearer {ADMIN}"},
                ).json()
                if usage["totals"]["requests"] >= sent:
                    break
                time.sleep(0.1)
            yield gw
        finally:
            gw.stop()
    finally:
        sim.stop()


def open_dashboard(page: Page, gw: Gateway, key: str) -> None:
    page.goto(f"{gw.url}/dashboard")
    page.fill("#key", key)
    page.click("#login-form button[type=submit]")


def test_page_is_static_with_a_strict_policy(replayed: Gateway) -> None:
    page = httpx.get(f"{replayed.url}/dashboard")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace(replayed.url, "").split("<body>")[0]
    assert httpx.get(f"{replayed.url}/dashboard/app.js").status_code == 200
    assert httpx.get(f"{replayed.url}/dashboard/../app.py").status_code == 404


def test_dashboard_renders_the_replayed_workload_in_chromium(replayed: Gateway) -> None:
    errors: list[str] = []
    foreign: list[str] = []
    gateway_host = urlparse(replayed.url).netloc

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            errors.append(f"{msg.type}: {msg.text}")

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", on_console)
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.on(
                "request",
                lambda req: (
                    foreign.append(req.url)
                    if urlparse(req.url).netloc not in (gateway_host, "")
                    and not req.url.startswith("data:")
                    else None
                ),
            )
            open_dashboard(page, replayed, ADMIN)
            page.wait_for_selector("body[data-loaded=true]", timeout=15_000)

            # spend and savings over time: stacked bars with the cache lever among them
            assert page.locator("#chart-over-time .bar-group").count() == 24  # hourly, 24 h
            assert page.locator("#chart-over-time rect.bar").count() >= 2
            assert page.locator('#chart-over-time rect[data-series="saved: cache"]').count() >= 1
            assert page.locator('#chart-over-time rect[data-series="saved: tier"]').count() >= 1
            # hit rates, top routes / tenants / models
            assert page.locator("#chart-hit-rates rect.bar").count() >= 2
            routes = page.eval_on_selector_all(
                "#chart-routes text", "nodes => nodes.map((n) => n.textContent)"
            )
            assert "smart" in routes and "gpt-4o-mini" in routes
            assert page.locator("#chart-tenants rect.bar").count() == 2
            assert page.locator("#chart-models rect.bar").count() >= 2
            # net savings table (running cost configured) and KPIs
            net = page.locator("#net-table").inner_text()
            assert "gateway (shared)" in net and "cache" in net
            kpis = page.locator("#kpis").inner_text()
            assert "Saved (net of Thrifty)" in kpis and "$" in kpis
            # budget burn-down: one chart per budget with its limit lines
            assert page.locator("#budgets .budget").count() == 2
            assert page.locator("#budgets path.series").count() >= 2
            # team-a passed its soft limit: the chart is scaled to show it, the heading says so
            team_a = page.locator("#budgets .budget").first
            assert team_a.locator("line.limit").count() >= 1
            assert "soft limit reached" in team_a.locator("h3").inner_text()
            # no student in this workload: the coverage card says so instead of drawing
            assert (
                "No route is answered by a student yet."
                in page.locator("#chart-coverage").inner_text()
            )

            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

            # the period switch redraws from the ledger (30 daily bars)
            page.select_option("#period", "month")
            expect(page.locator("#chart-over-time .bar-group")).to_have_count(30)
        finally:
            browser.close()

    assert errors == []
    assert foreign == []
    shot = ARTIFACTS / "dashboard.png"
    assert shot.stat().st_size > 20_000


def test_a_tenant_key_is_sent_back_to_the_login_form(replayed: Gateway) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            open_dashboard(page, replayed, "sk-local-a")
            page.wait_for_selector("#error:not([hidden])", timeout=10_000)
            assert "admin key" in page.locator("#error").inner_text()
            assert page.locator("#login").is_visible()
            assert page.evaluate("sessionStorage.getItem('thrifty-admin-key')") is None
        finally:
            browser.close()
