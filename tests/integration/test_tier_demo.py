"""The `make demo` cost-control stage against the session simulator."""

from __future__ import annotations

import asyncio
import re

import pytest
from rich.console import Console

from tests.integration.procs import Simulator
from thrifty_cli.demo_cost import serve_and_run

pytestmark = pytest.mark.integration


def numbers(pattern: str, text: str) -> list[float]:
    found = re.search(pattern, text)
    assert found is not None, f"{pattern!r} not in {text!r}"
    return [float(g) for g in found.groups()]


def test_cost_demo_routes_escalates_downgrades_and_refuses(simulator: Simulator) -> None:
    notes = asyncio.run(serve_and_run(simulator.url, Console(quiet=True)))
    text = "\n".join(f"{name}: {line}" for name, line in notes)
    cheap, strong = numbers(r"(\d+) by the cheap tier.*?(\d+) by gpt-4o", text)
    assert cheap > strong > 0
    (escalations,) = numbers(r"escalations: (\d+) logprob", text)
    assert escalations > 0
    (saved,) = numbers(r"saved \$([\d.]+)", text)
    assert saved > 0
    downgraded, refused = numbers(r"(\d+) requests downgraded.*?(\d+) refused", text)
    assert downgraded > 0 and refused > 0
