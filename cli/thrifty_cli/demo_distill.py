"""The distillation demo stage: Banking77 intents, the simulator playing the teacher.

1. a provider simulator with the `banking77` oracle (the dataset label, ~3% wrong) and a
   gateway with a `classifier` student on route `intent` (active, no version yet);
2. live traffic through the gateway with the openai client: the teacher answers, the gateway
   captures (request, answer, usage, logprobs) pairs;
3. export (held-out split), train, evaluate against the teacher, promote if the gate passes;
4. new traffic: the gateway picks up the promoted version; confident answers come from the
   student, unsure ones fall through to the teacher;
5. coverage, agreement and the ledger's `distill` saving.

`python -m thrifty_cli.demo_distill` runs it alone; `make demo` runs it as a stage. The gateway
runs in this process (uvicorn on the demo's event loop) so the stage can watch its student.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thrifty_cli.demo_support import free_port
from thrifty_core.config import read_config_data

if TYPE_CHECKING:
    from rich.console import Console

ROOT = Path(__file__).resolve().parents[2]
CAPTURE = int(os.environ.get("THRIFTY_DEMO_DISTILL_CAPTURE", "2000"))
NEW = int(os.environ.get("THRIFTY_DEMO_DISTILL_NEW", "500"))
LABELS = int(os.environ.get("THRIFTY_DEMO_DISTILL_LABELS", "20"))
THRESHOLD = 0.7
CONCURRENCY = 8
ADMIN_KEY = "sk-local-admin"
KEY = "sk-local-a"


def _config(sim_port: int, work: Path) -> dict[str, Any]:
    config: dict[str, Any] = read_config_data(ROOT / "examples" / "local.yaml")
    config["providers"][0]["baseUrl"] = f"http://127.0.0.1:{sim_port}/v1"
    config["routes"].append(
        {"name": "intent", "targets": [{"provider": "simulator", "model": "gpt-4o"}]}
    )
    for tenant in config["tenants"]:
        tenant.pop("requestsPerMinute", None)
    config["server"] = {"logLevel": "WARNING", "logFormat": "text"}
    config["students"] = [
        {
            "route": "intent",
            "name": "intent",
            "kind": "classifier",
            "mode": "active",
            "confidenceThreshold": THRESHOLD,
            "evaluationSampleRate": 0.02,
            "artifactPath": str(work / "artifacts"),
            "captureDir": str(work / "capture"),
            "capture": {"logprobs": True},
            "costPerHour": 0.10,
        }
    ]
    return config


def _resource() -> Any:
    from thrifty_core.api.distilledmodel import DistilledModel

    return DistilledModel.model_validate(
        {
            "metadata": {"name": "intent"},
            "spec": {
                "teacher": {"gatewayRef": {"name": "demo"}, "route": "intent"},
                "student": {"kind": "classifier"},
                "training": {"minExamples": 500, "nodePricePerHour": 0.20},
                "evaluation": {"minAgreement": 0.9, "minCoverage": 0.6},
                "routing": {"confidenceThreshold": THRESHOLD},
                "serving": {"costPerHour": 0.10},
            },
        }
    )


async def _replay(
    base_url: str, texts: Sequence[str], labels: Sequence[str], console: Console, title: str
) -> list[tuple[str, str, float]]:
    """(answer, served_by, confidence) per text, sent CONCURRENCY at a time."""
    from openai import AsyncOpenAI
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from thrifty_distill import banking77

    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=2)
    sem = asyncio.Semaphore(CONCURRENCY)
    out: list[tuple[str, str, float]] = [("", "", 0.0)] * len(texts)
    with Progress(
        TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(), console=console
    ) as progress:
        task = progress.add_task(title, total=len(texts))

        async def one(i: int) -> None:
            async with sem:
                raw = await client.chat.completions.with_raw_response.create(
                    model="intent",
                    messages=banking77.messages(texts[i], labels),  # type: ignore[arg-type]
                )
                answer = raw.parse().choices[0].message.content or ""
                who = raw.headers.get("x-thrifty-served-by", "")
                conf = float(raw.headers.get("x-thrifty-student-confidence", "0"))
                out[i] = (answer, who, conf)
                progress.advance(task)

        await asyncio.gather(*(one(i) for i in range(len(texts))))
    await client.close()
    return out


async def _usage(base_url: str) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(
            f"{base_url}/v1/thrifty/usage", headers={"authorization": f"Bearer {ADMIN_KEY}"}
        )
    data: dict[str, Any] = resp.json()
    route: dict[str, Any] = next(
        (r for r in data["by_route"] if r["route"] == "intent"), data["totals"]
    )
    return route


async def run_distill_demo(
    console: Console, work: Path, ledgers: list[tuple[str, Any]] | None = None
) -> list[tuple[str, str]]:
    """Run the whole loop; returns report lines (name, text). `ledgers`: where the gateway's
    usage goes at the end (teacher traffic included), for the demo's report."""
    import subprocess

    import uvicorn

    from thrifty_core.config import parse_config
    from thrifty_distill import banking77, pipeline
    from thrifty_gateway.app import create_app
    from thrifty_gateway.services.distill import DistillStage, distill_stage_factory

    labels = sorted(banking77.load_labels())[:LABELS]
    per_label = (CAPTURE + NEW) // len(labels) + 1
    rows = banking77.subset(banking77.load_rows(), labels, per_label)
    captured_rows, new_rows = rows[:CAPTURE], rows[CAPTURE : CAPTURE + NEW]

    sim_port, gw_port = free_port(), free_port()
    sim_log = (work / "simulator-distill.log").open("wb")
    sim = subprocess.Popen(
        [sys.executable, "-m", "thrifty_cli", "simulator", "--port", str(sim_port)]
        + ["--oracle", "banking77"],
        stdout=sim_log,
        stderr=subprocess.STDOUT,
    )
    app = create_app(
        parse_config(_config(sim_port, work)),
        stage_factories=[distill_stage_factory(reload_seconds=0.5)],
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=gw_port, log_config=None, access_log=False)
    )
    serving = asyncio.create_task(server.serve())
    base = f"http://127.0.0.1:{gw_port}"
    try:
        await _wait_ready(f"http://127.0.0.1:{sim_port}/healthz", base + "/readyz")
        stage: DistillStage = next(s for s in app.state.gateway.stages if s.name == "distill")

        first = await _replay(
            base, [t for t, _ in captured_rows], labels, console, "distill: teacher traffic"
        )
        teacher_cost = (await _usage(base))["cost_usd"]
        job = pipeline.Job.from_resource(
            _resource(), work / "capture", work / "snapshot", work / "artifacts"
        )
        with console.status("distill: export, train, evaluate"):
            started = time.perf_counter()
            snapshot = await asyncio.to_thread(pipeline.export, job)
            await asyncio.to_thread(pipeline.train, job)
            report = await asyncio.to_thread(pipeline.evaluate, job)
            pipeline_seconds = time.perf_counter() - started
        lines = [
            (
                "distill",
                "own gateway + teacher simulator: "
                f"captured {len(first)} teacher answers on route intent ({len(labels)} "
                f"Banking77 intents); {snapshot.train} train / {snapshot.held_out} held out; "
                f"pipeline {pipeline_seconds:.1f}s",
            )
        ]
        at = report["quality"]["at_threshold"]
        verdict = "promoted" if report["promoted"] else "NOT promoted (gate failed)"
        lines.append(
            (
                "distill",
                f"{report['version']} {verdict}: held-out agreement "
                f"{at['agreement_with_fallback']:.1%} with fallback, "
                f"coverage {at['coverage']:.1%} at confidence {THRESHOLD}, "
                f"ECE {report['quality']['ece']:.3f}; report "
                f"{work / 'artifacts' / report['version'] / 'report.png'}",
            )
        )
        if not report["promoted"]:
            await _add_ledger(base, ledgers)
            return lines
        deadline = time.monotonic() + 30
        while stage.status()[0]["version"] != report["version"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        second = await _replay(
            base, [t for t, _ in new_rows], labels, console, "distill: routed traffic"
        )
        student = sum(1 for _, who, _ in second if who == "student")
        agree = sum(1 for (a, _, _), (_, label) in zip(second, new_rows, strict=True) if a == label)
        usage = await _usage(base)
        saved = usage["saved_by_lever_usd"]["distill"]
        direct = usage["baseline_cost_usd"] - teacher_cost
        lines.append(
            (
                "distill",
                f"{len(second)} new requests: student answered {student / len(second):.1%}, "
                f"teacher {1 - student / len(second):.1%} (low confidence); answers match the "
                f"dataset label {agree / len(second):.1%}; saved ${saved:.4f} of "
                f"${direct:.4f} ({saved / direct:.0%}) on this traffic"
                if direct
                else "no traffic",
            )
        )
        await _add_ledger(base, ledgers)
        return lines
    finally:
        server.should_exit = True
        await serving
        sim.terminate()
        sim.wait(timeout=10)
        sim_log.close()


async def _add_ledger(base_url: str, ledgers: list[tuple[str, Any]] | None) -> None:
    from thrifty_cli.demo_support import usage_of

    if ledgers is not None:
        ledgers.append(("distill", await usage_of(base_url)))


async def _wait_ready(*urls: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1) as http:
        for url in urls:
            while True:
                try:
                    if (await http.get(url)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(url)
                await asyncio.sleep(0.1)


@dataclass
class DistillDemoStage:
    """`make demo` stage (see thrifty_cli.demo.DemoStage)."""

    name: str = "distill"

    async def run(self, demo: Any) -> None:
        work = Path(tempfile.mkdtemp(prefix="thrifty-demo-distill-"))
        demo.notes.extend(await run_distill_demo(demo.console, work, demo.ledgers))


def main() -> int:
    import logging

    from rich.console import Console

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="thrifty-demo-distill-"))
    for name, line in asyncio.run(run_distill_demo(console, work)):
        console.print(f"[dim]{name}:[/dim] {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
