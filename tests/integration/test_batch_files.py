"""`/v1/files` uploads are limited by the batch queue's file limit (`limits.maxFileBytes`), not
by the chat body limit (`server.maxRequestBytes`, 4 MiB by default): a 5 MB batch file is
accepted; one over the file limit is refused with 413 and nothing is stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.procs import Gateway

pytestmark = pytest.mark.integration
KEY = "sk-local-a"
MiB = 1024 * 1024
FILE_LIMIT = 6 * MiB


def batch_file(size: int) -> bytes:
    """A valid JSONL batch input of about `size` bytes."""
    lines: list[bytes] = []
    total = 0
    i = 0
    while total < size:
        line = orjson.dumps(
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"item {i} " + "x" * 8000}],
                },
            }
        )
        lines.append(line)
        total += len(line) + 1
        i += 1
    return b"\n".join(lines) + b"\n"


@pytest.fixture
def files_gateway(gateway_factory: GatewayFactory, tmp_path: Path) -> Iterator[Gateway]:
    files_dir = tmp_path / "files"
    yield gateway_factory(
        batch={
            "name": "files",
            "filesDir": str(files_dir),
            "spec": {"limits": {"maxFileBytes": FILE_LIMIT}},
        }
    )


def stored(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "files").iterdir())


def test_file_over_the_chat_limit_but_under_the_file_limit_is_accepted(
    files_gateway: Gateway, tmp_path: Path
) -> None:
    client = files_gateway.openai(KEY)
    data = batch_file(5 * MiB)
    assert 4 * MiB < len(data) < FILE_LIMIT
    uploaded = client.files.create(file=("big.jsonl", data), purpose="batch")
    assert uploaded.bytes == len(data) and uploaded.purpose == "batch"
    assert client.files.content(uploaded.id).content == data
    assert stored(tmp_path) == sorted([f"{uploaded.id}.data", f"{uploaded.id}.json"])
    # the chat body limit still applies to chat requests
    big_chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "y" * 5 * MiB}]}
    resp = httpx.post(
        f"{files_gateway.base_url()}/chat/completions",
        json=big_chat,
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert resp.status_code == 413


def test_file_over_the_file_limit_is_refused_and_nothing_stored(
    files_gateway: Gateway, tmp_path: Path
) -> None:
    client = files_gateway.openai(KEY)
    data = batch_file(FILE_LIMIT + MiB)
    with pytest.raises(openai.APIStatusError) as info:
        client.files.create(file=("huge.jsonl", data), purpose="batch")
    assert info.value.status_code == 413
    assert info.value.code == "request_too_large"
    assert client.files.list().data == []
    assert stored(tmp_path) == []


def test_chunked_upload_over_the_file_limit_is_refused_while_it_arrives(
    files_gateway: Gateway, tmp_path: Path
) -> None:
    boundary = "thriftyboundary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="huge.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:  # no Content-Length: the route counts what arrives
        yield head
        for _ in range((FILE_LIMIT + 2 * MiB) // MiB):
            yield b"z" * MiB
        yield f"\r\n--{boundary}--\r\n".encode()

    headers: dict[str, Any] = {
        "authorization": f"Bearer {KEY}",
        "content-type": f"multipart/form-data; boundary={boundary}",
    }
    try:
        resp = httpx.post(f"{files_gateway.base_url()}/files", content=body(), headers=headers)
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "request_too_large"
    except httpx.WriteError:
        pass  # the gateway answered and closed while the client was still sending
    listed = httpx.get(
        f"{files_gateway.base_url()}/files", headers={"authorization": f"Bearer {KEY}"}
    )
    assert listed.json()["data"] == []
    assert stored(tmp_path) == []


def test_a_line_longer_than_a_request_may_be_is_refused_unparsed(
    files_gateway: Gateway, tmp_path: Path
) -> None:
    """A batch line is one request: a line over `server.maxRequestBytes` (4 MiB) is refused
    without being parsed (5 MB of nested empty arrays parse into ~150 MB of Python lists; a
    200 MB one exhausted the pod), and nothing is stored."""
    client = files_gateway.openai(KEY)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "x": "@"}
    line = orjson.dumps(
        {"custom_id": "big", "method": "POST", "url": "/v1/chat/completions", "body": body}
    )
    nested = b"[" + b"[]," * (5 * MiB // 3) + b"[]]"
    bomb = line.replace(b'"@"', nested)
    ok = orjson.dumps(
        {
            "custom_id": "ok",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        }
    )
    data = ok + b"\n" + bomb + b"\n"
    assert 4 * MiB < len(bomb) < FILE_LIMIT
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("bomb.jsonl", data), purpose="batch")
    assert info.value.code == "invalid_batch_input"
    assert "line 2" in info.value.message and "exceeds 4194304 bytes" in info.value.message
    assert stored(tmp_path) == []
