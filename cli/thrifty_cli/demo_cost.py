"""Cost control at work (a `make demo` stage): tiered routing with a cascade, a tenant budget
that downgrades and then refuses, and savings net of Thrifty's own running cost.

Its own gateway (in-process) on the demo's simulator: route `smart` is gpt-4o with a cheap
gpt-4o-mini tier for short prompts without tools, checked by a cascade (mean log-probability
floor, refusal patterns); team-b has a small daily budget. The ShareGPT prompts are replayed
through the official client; the notes count the tier decisions, escalations, downgrades and
refusals and read the tier lever's savings (gross and net) from the ledger.

`python -m thrifty_cli.demo_cost` runs it alone against its own simulator.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.console import Console

TENANT_KEYS = {"team-a": "sk-local-a", "team-b": "sk-local-b"}
ADMIN_KEY = "sk-local-admin"
REQUESTS = 150
CONCURRENCY = 8
# As a chat app caps its answers: each request holds its prompt plus this many tokens at
# gpt-4o's price on team-b's budget while it runs (512 without a cap: more than the budget).
MAX_TOKENS = 200


def cost_config(simulator_url: str, port: int) -> dict[str, Any]:
    from thrifty_cli.demo import demo_config

    config = demo_config(0, port)
    for provider in config["providers"]:
        provider["baseUrl"] = f"{simulator_url}/v1"
    config.pop("cachePolicies", None)
    config.pop("defaultCachePolicy", None)
    config["routes"].append(
        {
            "name": "smart",
            "targets": [{"provider": "simulator", "model": "gpt-4o"}],
            "tiering": {
                "tiers": [
                    {
                        "name": "mini",
                        "targets": [{"provider": "simulator", "model": "gpt-4o-mini"}],
                        "rules": [{"maxPromptTokens": 150, "hasTools": False}],
                    }
                ],
                "cascade": {"enabled": True, "minMeanLogprob": -0.4},
            },
            "hygiene": {"defaultStop": ["\n\nUser:"]},
        }
    )
    for tenant in config["tenants"]:
        tenant.pop("requestsPerMinute", None)
        if tenant["name"] == "team-b":
            tenant["budget"] = {"period": "day", "softLimitUsd": 0.002, "hardLimitUsd": 0.005}
    config["netSavings"] = {
        "components": [
            {"name": "gateway", "lever": "gateway", "replicas": 2, "cpu": 0.5, "memoryGib": 0.5}
        ]
    }
    return config


async def run_cost_demo(gateway_url: str, console: Console) -> list[tuple[str, str]]:
    """Replay ShareGPT prompts on the tiered route and summarise what cost control did."""
    import httpx
    from openai import AsyncOpenAI, RateLimitError

    from thrifty_cli.demo import sharegpt_prompts

    rng = random.Random(5)
    prompts = sharegpt_prompts(REQUESTS)
    calls = [("team-a" if rng.random() < 0.6 else "team-b", p) for p in prompts]
    clients = {
        t: AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=k, max_retries=0)
        for t, k in TENANT_KEYS.items()
    }
    sem = asyncio.Semaphore(CONCURRENCY)
    tiers: Counter[str] = Counter()
    escalated: Counter[str] = Counter()
    budget: Counter[str] = Counter()

    async def one(tenant: str, prompt: str) -> None:
        async with sem:
            try:
                raw = await clients[tenant].chat.completions.with_raw_response.create(
                    model="smart",
                    messages=[{"role": "user", "content": prompt}],
                    max_completion_tokens=MAX_TOKENS,
                )
            except RateLimitError as exc:
                # budget_exceeded: spent until the period ends; budget_held: what is left is
                # held by requests in flight (retry in 2 s; the SDK would, max_retries > 0)
                budget["held" if exc.code == "budget_held" else "refused"] += 1
                return
            tiers[raw.headers.get("x-thrifty-tier", "none")] += 1
            for step in filter(None, raw.headers.get("x-thrifty-tier-escalated", "").split(",")):
                escalated[step.split(":", 1)[1]] += 1
            if raw.headers.get("x-thrifty-budget"):
                budget["downgraded"] += 1

    with console.status("cost control: replaying ShareGPT prompts on the tiered route"):
        # waves, so that spend recorded after each answer reaches the budget check
        for start in range(0, len(calls), 20):
            await asyncio.gather(*(one(*c) for c in calls[start : start + 20]))
            await asyncio.sleep(0.2)
    for client in clients.values():
        await client.close()
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        usage = (await http.get("/v1/thrifty/usage", headers=admin)).json()
    totals = usage["totals"]
    answered = sum(tiers.values())
    checks = ", ".join(f"{n} {check}" for check, n in escalated.most_common()) or "none"
    net = usage.get("net_savings") or {}
    saved, baseline = totals["saved_by_lever_usd"]["tier"], totals["baseline_cost_usd"]
    return [
        (
            "tier",
            f"{answered} answered: {tiers['mini']} by the cheap tier (gpt-4o-mini), "
            f"{tiers['route']} by gpt-4o; cascade escalations: {checks}",
        ),
        (
            "tier",
            f"saved ${saved:.4f} of ${baseline:.4f} ({saved / max(baseline, 1e-12):.0%}), "
            f"failed cheap attempts included; net of the gateway's running cost: "
            f"${net.get('net_saved_usd', 0.0):.4f}",
        ),
        (
            "budget",
            f"team-b (soft $0.002, hard $0.005 a day): {budget['downgraded']} requests "
            f"downgraded to the cheap tier, {budget['refused']} refused with 429 "
            f"(budget spent), {budget['held']} asked to retry (the rest held by requests in "
            "flight)",
        ),
    ]


@dataclass
class CostDemoStage:
    """`make demo` stage (see thrifty_cli.demo.DemoStage): its own gateway with tiering and
    budgets, in-process, against the demo's simulator."""

    name: str = "cost"

    async def run(self, demo: Any) -> None:
        demo.notes.extend(await serve_and_run(demo.simulator_url, demo.console, demo.ledgers))


async def serve_and_run(
    simulator_url: str, console: Console, ledgers: list[tuple[str, Any]] | None = None
) -> list[tuple[str, str]]:
    from thrifty_cli import demo_support

    # budget refusals are expected here: keep their warnings out of the demo's output
    gateway_log = logging.getLogger("thrifty_gateway")
    level = gateway_log.level
    gateway_log.setLevel(logging.ERROR)
    try:
        return await demo_support.serve_and_run(
            cost_config,
            run_cost_demo,
            simulator_url,
            console,
            None if ledgers is None else (ledgers, "tier"),
        )
    finally:
        gateway_log.setLevel(level)


def main() -> int:
    from thrifty_cli.demo_support import run_alone

    return run_alone("cost", serve_and_run)


if __name__ == "__main__":
    raise SystemExit(main())
