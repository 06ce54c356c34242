"""The gateway process across the life of its pod: a provider key rotated in its Secret is used
without a restart, and a batch queue whose Redis is down at start fails deferrals (a retryable
503), not the gateway's start."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.integration.procs import Simulator, local_config, start_gateway, start_simulator
from tests.integration.waiting import wait_until
from tests.services import free_port, start_redis

pytestmark = pytest.mark.integration

TENANT_KEY = "sk-local-a"


def simulator_on(port: int, api_key: str, workdir: Path) -> Simulator:
    """The provider simulator on `port`, accepting only `api_key` (as a real provider does)."""
    return start_simulator(workdir / f"simulator-{api_key}", "--api-key", api_key, port=port)


def mount_secret(volume: Path, value: str) -> Path:
    """Write `value` the way the kubelet updates a Secret volume: a new timestamped directory,
    then the `..data` link swapped to it in one rename. Returns the key file's path."""
    volume.mkdir(parents=True, exist_ok=True)
    version = volume / f"..{uuid.uuid4().hex}"
    version.mkdir()
    (version / "api-key").write_text(value + "\n")
    link = volume / "..data_tmp"
    link.symlink_to(version.name)
    os.replace(link, volume / "..data")
    key = volume / "api-key"
    if not key.is_symlink():
        key.symlink_to("..data/api-key")
    return key


def chat(url: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]},
        headers={"authorization": f"Bearer {TENANT_KEY}"},
        timeout=30,
    )


def test_a_rotated_provider_key_is_used_without_a_restart(tmp_path: Path) -> None:
    port = free_port()
    key_file = mount_secret(tmp_path / "secret", "sk-old")
    sim = simulator_on(port, "sk-old", tmp_path)
    config = local_config(f"http://127.0.0.1:{port}")
    config["providers"][0]["apiKey"] = {"file": str(key_file)}
    gateway = start_gateway(tmp_path, config)
    try:
        assert chat(gateway.url, "before the rotation").status_code == 200

        # The Secret gets the new key and the provider revokes the old one: the provider's
        # first 401 makes the gateway read the file again, and the request goes through.
        mount_secret(tmp_path / "secret", "sk-new")
        sim.stop()
        sim = simulator_on(port, "sk-new", tmp_path)
        reply = chat(gateway.url, "right after the rotation")
        assert reply.status_code == 200, reply.text

        # Without any request meanwhile, the key files are read again on a timer (10 s).
        mount_secret(tmp_path / "secret", "sk-newer")
        sim.stop()
        sim = simulator_on(port, "sk-newer", tmp_path)
        wait_until(
            lambda: gateway.log().count("provider keys reloaded") >= 2,
            "the gateway re-read the key file on its own",
            timeout=20,
            interval=0.2,
        )
        assert chat(gateway.url, "after the second rotation").status_code == 200
        assert "sk-new" not in gateway.log()  # keys are never logged
    finally:
        gateway.stop()
        sim.stop()


def test_the_gateway_starts_and_serves_while_the_batch_queue_redis_is_down(
    tmp_path: Path, simulator: Simulator
) -> None:
    redis_port = free_port()  # nothing listens there yet
    config = local_config(simulator.url)
    config["batch"] = {
        "name": f"down-{time.time_ns()}",
        "redisUrl": f"redis://127.0.0.1:{redis_port}/0",
        "filesDir": str(tmp_path / "files"),
    }
    gateway = start_gateway(tmp_path, config)  # ready (readyz 200) with its queue down
    try:
        assert chat(gateway.url, "chat needs no batch queue").status_code == 200
        defer = {"authorization": f"Bearer {TENANT_KEY}", "x-thrifty-defer": "true"}
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "later, please"}]}
        started = time.monotonic()
        refused = httpx.post(
            f"{gateway.url}/v1/chat/completions", json=body, headers=defer, timeout=30
        )
        assert refused.status_code == 503, refused.text
        assert time.monotonic() - started < 10
        assert refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["code"] == "batch_queue_unavailable"
        poll = httpx.get(
            f"{gateway.url}/v1/thrifty/deferred/batch_x",
            headers={"authorization": f"Bearer {TENANT_KEY}"},
        )
        assert poll.status_code == 503 and poll.headers["retry-after"] == "5"

        redis = start_redis(tmp_path / "redis", port=redis_port)  # the queue's Redis is back
        try:
            queued = httpx.post(
                f"{gateway.url}/v1/chat/completions", json=body, headers=defer, timeout=30
            )
            assert queued.status_code == 202, queued.text
            assert queued.json()["object"] == "thrifty.deferred"
        finally:
            redis.stop()
    finally:
        gateway.stop()
