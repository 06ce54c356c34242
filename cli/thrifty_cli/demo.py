"""`make demo`: the simulator and the gateway on embedded defaults, a realistic workload
replayed through the official `openai` client, and a savings report.

The demo is a list of stages (`default_stages()`); each replays traffic or exercises one lever
and returns a line for the report. Later components append their stage (cache replay, batch
submission, distilled student) without touching the others. The final report reads the
gateway's own ledger (`/v1/thrifty/usage`), so it shows exactly what Thrifty accounted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from thrifty_cli.demo_support import stop, wait_ready
from thrifty_cli.sharegpt import sharegpt_available, sharegpt_conversations
from thrifty_core.config import read_config_data

log = logging.getLogger("thrifty.demo")
ROOT = Path(__file__).resolve().parents[2]
TENANT_KEYS = {"team-a": "sk-local-a", "team-b": "sk-local-b"}
ADMIN_KEY = "sk-local-admin"
REQUESTS = int(os.environ.get("THRIFTY_DEMO_REQUESTS", "240"))
CONCURRENCY = 8


@dataclass(frozen=True)
class Call:
    """One request of the workload."""

    tenant: str
    endpoint: str  # "chat" | "embeddings"
    model: str
    prompt: str
    stream: bool = False


@dataclass
class Demo:
    """What stages share: endpoints, the workload, the console and the report lines."""

    gateway_url: str
    simulator_url: str
    workload: list[Call]
    console: Console
    notes: list[tuple[str, str]] = field(default_factory=list)
    # Usage of the gateways stages run on their own (the report sums them with this one's).
    ledgers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class DemoStage(Protocol):
    name: str

    async def run(self, demo: Demo) -> None: ...


# -- workload --------------------------------------------------------------------------------


def sharegpt_prompts(limit: int) -> list[str]:
    """First human turns of the ShareGPT trace. Falls back to built-in prompts when the package
    is absent."""
    if not sharegpt_available():
        return [f"Question {i}: how do I reset the password of account {i}?" for i in range(limit)]
    prompts: list[str] = []
    for turns in sharegpt_conversations():
        if turns and turns[0].get("from") == "human":
            text = str(turns[0].get("value", "")).strip()
            if 10 <= len(text) <= 2000:
                prompts.append(text)
        if len(prompts) >= limit:
            break
    return prompts


def build_workload(n: int, seed: int = 7) -> list[Call]:
    """Chat and embeddings calls of two tenants over real prompts; popular prompts repeat
    (Zipf-like), as they do in production traffic."""
    rng = random.Random(seed)
    prompts = sharegpt_prompts(max(40, n // 2))
    weights = [1 / (rank + 1) ** 0.9 for rank in range(len(prompts))]
    calls: list[Call] = []
    for _ in range(n):
        prompt = rng.choices(prompts, weights)[0]
        tenant = "team-a" if rng.random() < 0.7 else "team-b"
        roll = rng.random()
        if roll < 0.15:
            calls.append(Call(tenant, "embeddings", "text-embedding-3-small", prompt))
        elif roll < 0.40:
            calls.append(Call(tenant, "chat", "gpt-4o", prompt, stream=rng.random() < 0.3))
        else:
            calls.append(Call(tenant, "chat", "gpt-4o-mini", prompt, stream=rng.random() < 0.3))
    return calls


# -- stages ----------------------------------------------------------------------------------


async def replay(demo: Demo, calls: Sequence[Call], label: str) -> dict[str, int]:
    """Send `calls` through the gateway with the openai client, CONCURRENCY at a time."""
    from openai import APIError, AsyncOpenAI

    clients = {
        t: AsyncOpenAI(base_url=f"{demo.gateway_url}/v1", api_key=k, max_retries=2)
        for t, k in TENANT_KEYS.items()
    }
    sem = asyncio.Semaphore(CONCURRENCY)
    counts = {"ok": 0, "failed": 0}
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=demo.console,
    ) as progress:
        task = progress.add_task(label, total=len(calls))

        async def one(call: Call) -> None:
            client = clients[call.tenant]
            async with sem:
                try:
                    if call.endpoint == "embeddings":
                        await client.embeddings.create(model=call.model, input=call.prompt)
                    elif call.stream:
                        stream = await client.chat.completions.create(
                            model=call.model,
                            messages=[{"role": "user", "content": call.prompt}],
                            stream=True,
                        )
                        async for _ in stream:
                            pass
                    else:
                        await client.chat.completions.create(
                            model=call.model, messages=[{"role": "user", "content": call.prompt}]
                        )
                    counts["ok"] += 1
                except APIError:
                    counts["failed"] += 1
                progress.advance(task)

        await asyncio.gather(*(one(c) for c in calls))
    for client in clients.values():
        await client.close()
    return counts


@dataclass
class ProxyStage:
    """Replay the workload through the gateway (every request reaches the provider)."""

    name: str = "proxy"

    async def run(self, demo: Demo) -> None:
        started = time.perf_counter()
        counts = await replay(demo, demo.workload, "replaying workload")
        elapsed = time.perf_counter() - started
        demo.notes.append(
            (
                self.name,
                f"{counts['ok']} requests answered, {counts['failed']} failed, "
                f"{elapsed:.1f}s at concurrency {CONCURRENCY}",
            )
        )


def default_stages() -> list[DemoStage]:
    """The demo's stages, in order. Components append theirs here."""
    from .demo_batch import BatchDemoStage
    from .demo_cache import CacheDemoStage
    from .demo_cost import CostDemoStage
    from .demo_distill import DistillDemoStage

    return [ProxyStage(), CacheDemoStage(), BatchDemoStage(), DistillDemoStage(), CostDemoStage()]


# -- processes -------------------------------------------------------------------------------


def _port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _process(args: list[str], ready: str, log_path: Path) -> Iterator[None]:
    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(ready, proc)
        yield
    finally:
        stop(proc)


def demo_config(sim_port: int, gw_port: int) -> dict[str, Any]:
    """examples/local.yaml on the chosen ports, rate limits relaxed for the replay."""
    config: dict[str, Any] = read_config_data(ROOT / "examples" / "local.yaml")
    for provider in config["providers"]:
        if provider["name"] == "simulator":
            provider["baseUrl"] = f"http://127.0.0.1:{sim_port}/v1"
    config["server"] = {**config.get("server", {}), "port": gw_port, "logLevel": "WARNING"}
    return config


# -- report ----------------------------------------------------------------------------------


def _usd(value: float) -> str:
    return f"${value:,.4f}"


def merge_usage(bodies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The totals and per-route rows of several gateways' `/v1/thrifty/usage` bodies, summed."""

    def add(into: dict[str, Any], row: dict[str, Any]) -> None:
        for key, value in row.items():
            if isinstance(value, dict):
                add(into.setdefault(key, {}), value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                into[key] = into.get(key, 0) + value

    totals: dict[str, Any] = {}
    routes: dict[str, dict[str, Any]] = {}
    for body in bodies:
        add(totals, body["totals"])
        for row in body["by_route"]:
            add(routes.setdefault(row["route"], {"route": row["route"]}), row)
    return {"totals": totals, "by_route": [routes[name] for name in sorted(routes)]}


def report(
    console: Console,
    usage: dict[str, Any],
    notes: list[tuple[str, str]],
    ledgers: Sequence[tuple[str, dict[str, Any]]] = (),
) -> None:
    """The savings of every gateway the demo ran (its own and the stages'), summed, with a row
    per gateway, then the notes of the stages."""
    sources = [("workload replay", usage), *ledgers]
    combined = merge_usage([body for _, body in sources])
    totals = combined["totals"]
    table = Table(title="Thrifty savings report (every demo gateway)", show_lines=False)
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("requests", f"{totals['requests']:,}")
    table.add_row(
        "tokens (prompt / completion)",
        f"{totals['prompt_tokens']:,} / {totals['completion_tokens']:,}",
    )
    table.add_row("cost calling the provider directly", _usd(totals["baseline_cost_usd"]))
    table.add_row("cost through Thrifty", _usd(totals["cost_usd"]))
    saved = totals["saved_usd"]
    share = saved / totals["baseline_cost_usd"] * 100 if totals["baseline_cost_usd"] else 0.0
    table.add_row("[bold]saved", f"[bold]{_usd(saved)} ({share:.1f}%)")
    for lever, usd in totals["saved_by_lever_usd"].items():
        served = totals["served_by_lever"].get(lever, 0)
        table.add_row(f"  by {lever}", f"{_usd(usd)} ({served} requests)")
    console.print(table)
    stages = Table(title="by demo stage")
    for col in ("stage", "requests", "direct", "thrifty", "saved"):
        stages.add_column(col, justify="left" if col == "stage" else "right")
    for name, body in sources:
        t = body["totals"]
        stages.add_row(
            name,
            f"{t['requests']:,}",
            _usd(t["baseline_cost_usd"]),
            _usd(t["cost_usd"]),
            _usd(t["saved_usd"]),
        )
    console.print(stages)
    routes = Table(title="by route")
    for col in ("route", "requests", "tokens", "direct", "thrifty", "saved"):
        routes.add_column(col, justify="left" if col == "route" else "right")
    for row in combined["by_route"]:
        routes.add_row(
            row["route"],
            str(row["requests"]),
            f"{row['total_tokens']:,}",
            _usd(row["baseline_cost_usd"]),
            _usd(row["cost_usd"]),
            _usd(row["saved_usd"]),
        )
    console.print(routes)
    for name, note in notes:
        console.print(f"[dim]{name}:[/dim] {note}")


async def _run_stages(demo: Demo, stages: Sequence[DemoStage]) -> dict[str, Any]:
    for stage in stages:
        await stage.run(demo)
    await asyncio.sleep(0.3)  # ledger entries are written right after each response
    request = urllib.request.Request(
        f"{demo.gateway_url}/v1/thrifty/usage", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        usage: dict[str, Any] = json.loads(resp.read())
    return usage


def run(stages: Sequence[DemoStage] | None = None, requests: int = REQUESTS) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="thrifty-demo-"))
    sim_port = _port(9100)
    gw_port = _port(8080 if sim_port != 8080 else 8081)
    config_path = work / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(sim_port, gw_port)))
    console.print(
        f"[bold]Thrifty demo[/bold]: simulator :{sim_port}, gateway :{gw_port} (logs in {work})"
    )
    with ExitStack() as stack:
        stack.enter_context(
            _process(
                ["-m", "thrifty_cli", "simulator", "--port", str(sim_port)],
                f"http://127.0.0.1:{sim_port}/healthz",
                work / "simulator.log",
            )
        )
        stack.enter_context(
            _process(
                ["-m", "thrifty_gateway", "--config", str(config_path)],
                f"http://127.0.0.1:{gw_port}/readyz",
                work / "gateway.log",
            )
        )
        demo = Demo(
            gateway_url=f"http://127.0.0.1:{gw_port}",
            simulator_url=f"http://127.0.0.1:{sim_port}",
            workload=build_workload(requests),
            console=console,
        )
        usage = asyncio.run(_run_stages(demo, stages or default_stages()))
    report(console, usage, demo.notes, demo.ledgers)
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
