"""Start the provider simulator and gateways as SEPARATE processes on free ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from tests.services import free_port, wait_for_port
from thrifty_core.config import read_config_data


@dataclass
class Proc:
    """A child process listening on a loopback port, with its log file."""

    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class Simulator(Proc):
    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.url}/sim/stats").json()
        return data

    def reset(self) -> None:
        httpx.post(f"{self.url}/sim/reset")


@dataclass
class Gateway(Proc):
    config: dict[str, Any] = field(default_factory=dict)
    clients: list[openai.OpenAI] = field(default_factory=list)

    def base_url(self) -> str:
        return f"{self.url}/v1"

    def openai(self, key: str, **kwargs: Any) -> openai.OpenAI:
        """An official client for this gateway (no client-side retries), closed on stop()."""
        client = openai.OpenAI(
            base_url=self.base_url(), api_key=key, **{"max_retries": 0, "timeout": 20, **kwargs}
        )
        self.clients.append(client)
        return client

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()
        super().stop()


def _spawn(
    args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Any]:
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    return proc, log_file


def start_simulator(
    workdir: Path, *extra: str, env: dict[str, str] | None = None, port: int | None = None
) -> Simulator:
    """The simulator on `port` (a free one by default: a fixed one restarts a provider in
    place), logging to `workdir`."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"simulator-{port}.log"
    proc, log_file = _spawn(
        ["-m", "thrifty_cli", "simulator", "--port", str(port), *extra], log_path, env
    )
    log_file.close()
    try:
        wait_for_port(port, timeout=30, proc=proc)
    except Exception:
        proc.kill()
        raise
    return Simulator(port=port, proc=proc, log_path=log_path)


def local_config(simulator_url: str, *, cache: bool = False, **overrides: Any) -> dict[str, Any]:
    """examples/local.yaml pointed at `simulator_url`, with `overrides` merged on top. The
    cache section is dropped unless `cache` (these tests exercise the proxy path)."""
    root = Path(__file__).resolve().parents[2]
    config: dict[str, Any] = read_config_data(root / "examples" / "local.yaml")
    config["providers"][0]["baseUrl"] = f"{simulator_url}/v1"
    if not cache:
        config.pop("cachePolicies", None)
        config.pop("defaultCachePolicy", None)
    for key, value in overrides.items():
        config[key] = value
    return config


def start_gateway(
    workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None
) -> Gateway:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        **config,
        "server": {
            **config.get("server", {}),
            "port": port,
            "host": "127.0.0.1",
            "logFormat": "json",
            "logLevel": "DEBUG",
        },
    }
    path = workdir / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = workdir / f"gateway-{port}.log"
    proc, log_file = _spawn(["-m", "thrifty_gateway", "--config", str(path)], log_path, env)
    log_file.close()
    try:
        wait_for_port(port, timeout=30, proc=proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                break
            time.sleep(0.05)
    except Exception:
        proc.kill()
        raise
    return Gateway(port=port, proc=proc, log_path=log_path, config=config)


@contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop()
