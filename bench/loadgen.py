"""HTTP load generation: wrk when installed (C, does not steal the gateway's CPU), else a
small keep-alive asyncio client run in a separate process. Both report the same fields."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not match:
        raise ValueError(f"unparsable latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _lua(body: bytes, headers: dict[str, str]) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body.decode())}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n"


def wrk(
    url: str,
    body: bytes,
    headers: dict[str, str],
    connections: int,
    seconds: float,
    threads: int = 1,
) -> dict[str, Any]:
    """Run wrk; p50/p90/p99 in ms, requests/s, requests, errors (non-2xx + socket errors)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_lua(body, headers))
        script = f.name
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            script,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    Path(script).unlink()
    pct = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(\d+)%\s+(\S+)$", out, re.M)}
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(g) for g in sock.groups()) if sock else 0
    )
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {
        "tool": "wrk",
        "connections": connections,
        "requests": total,
        "errors": errors,
        "rps": round(rps, 1),
        "p50_ms": pct.get("50"),
        "p90_ms": pct.get("90"),
        "p99_ms": pct.get("99"),
    }


async def _worker(
    host: str, port: int, request: bytes, deadline: float, lat: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            lat.append((time.perf_counter() - start) * 1000)
            if status >= 300:
                errors[0] += 1
    finally:
        writer.close()


async def _pyload(
    url: str, body: bytes, headers: dict[str, str], connections: int, seconds: float
) -> dict[str, Any]:
    parts = urlsplit(url)
    head = (
        f"POST {parts.path} HTTP/1.1\r\nhost: {parts.hostname}\r\ncontent-length: {len(body)}\r\n"
    )
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = head.encode() + b"\r\n" + body
    lat: list[float] = []
    errors = [0]
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(
        *(
            _worker(parts.hostname or "127.0.0.1", parts.port or 80, request, deadline, lat, errors)
            for _ in range(connections)
        )
    )
    elapsed = time.perf_counter() - start
    lat.sort()

    def q(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3)

    return {
        "tool": "python",
        "connections": connections,
        "requests": len(lat),
        "errors": errors[0],
        "rps": round(len(lat) / elapsed, 1),
        "p50_ms": q(0.5),
        "p90_ms": q(0.9),
        "p99_ms": q(0.99),
    }


def load(
    url: str, body: bytes, headers: dict[str, str], connections: int, seconds: float
) -> dict[str, Any]:
    """wrk if installed, else the asyncio client in a child process."""
    if shutil.which("wrk"):
        return wrk(url, body, headers, connections, seconds)
    args = json.dumps(
        {
            "url": url,
            "body": body.decode(),
            "headers": headers,
            "connections": connections,
            "seconds": seconds,
        }
    )
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", args], capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(
        json.dumps(
            asyncio.run(
                _pyload(
                    spec["url"],
                    spec["body"].encode(),
                    spec["headers"],
                    spec["connections"],
                    spec["seconds"],
                )
            )
        )
    )
