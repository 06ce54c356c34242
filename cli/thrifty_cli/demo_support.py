"""What the demo stages share: a free port, stopping a process, an in-process gateway on a
config of their own, and running a stage alone against its own simulator."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

Notes = list[tuple[str, str]]
# (stage, its gateway's `/v1/thrifty/usage` body): stages that run a gateway of their own add it,
# so that the demo's report sums every gateway's ledger.
Ledgers = list[tuple[str, dict[str, Any]]]
ADMIN_KEY = "sk-local-admin"


async def usage_of(url: str) -> dict[str, Any]:
    """The gateway's `/v1/thrifty/usage` body (admin key: every tenant)."""
    import httpx

    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(
            f"{url}/v1/thrifty/usage", headers={"authorization": f"Bearer {ADMIN_KEY}"}
        )
        resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(
    url: str,
    proc: subprocess.Popen[bytes] | None = None,
    timeout: float = 60,
    interval: float = 0.1,
) -> None:
    """Until `url` answers 200: RuntimeError as soon as `proc` (when given) exits,
    TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(interval)
    raise TimeoutError(url)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate; kill when it has not exited after 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@asynccontextmanager
async def serving(app: Any, port: int) -> AsyncIterator[str]:
    """`app` under uvicorn on this event loop at 127.0.0.1:`port`; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def serve_and_run(
    config: Callable[[str, int], dict[str, Any]],
    run: Callable[[str, Console], Awaitable[Notes]],
    simulator_url: str,
    console: Console,
    ledgers: tuple[Ledgers, str] | None = None,
) -> Notes:
    """A gateway on `config(simulator_url, port)` in this process, `run` against it once
    `/readyz` answers (or after a minute of trying). `ledgers`: (list, stage name) to add the
    gateway's usage to once `run` is done."""
    import httpx

    from thrifty_core.config import parse_config
    from thrifty_gateway.app import create_app

    port = free_port()
    app = create_app(parse_config(config(simulator_url, port)))
    async with serving(app, port) as url:
        async with httpx.AsyncClient() as http:
            for _ in range(600):
                try:
                    if (await http.get(f"{url}/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        notes = await run(url, console)
        if ledgers is not None:
            ledgers[0].append((ledgers[1], await usage_of(url)))
        return notes


def run_alone(name: str, stage: Callable[[str, Console], Coroutine[Any, Any, Notes]]) -> int:
    """`python -m thrifty_cli.demo_<name>`: `stage` against a simulator of its own."""
    from thrifty_cli.demo import _process

    console = Console()
    work = Path(tempfile.mkdtemp(prefix=f"thrifty-demo-{name}-"))
    sim_port = free_port()
    args = ["-m", "thrifty_cli", "simulator", "--port", str(sim_port)]
    with _process(args, f"http://127.0.0.1:{sim_port}/healthz", work / "sim.log"):
        lines = asyncio.run(stage(f"http://127.0.0.1:{sim_port}", console))
    for label, line in lines:
        console.print(f"[dim]{label}:[/dim] {line}")
    return 0
