"""A causal-lm student behind an OpenAI-compatible server (here a second simulator process
standing in for vLLM with the adapter): the gateway's default stages route to it, take its
confidence from its token log-probabilities and fall back to the teacher below the
threshold."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from tests.integration.procs import local_config, start_simulator
from thrifty_core.config import parse_config
from thrifty_distill import banking77
from thrifty_gateway.app import create_app

pytestmark = pytest.mark.integration

LABELS = sorted(banking77.load_labels())[:10]


def test_causal_lm_student_with_confidence_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THRIFTY_ORACLE_ERROR_RATE", "0.0")
    teacher = start_simulator(tmp_path / "teacher", "--oracle", "banking77")
    student = start_simulator(tmp_path / "student", "--oracle", "banking77")
    try:
        # the default stages include distill
        app = lm_app(teacher.url, f"{student.url}/v1", confidenceThreshold=0.8, costPerHour=2.0)
        rows = banking77.subset(banking77.load_rows(), LABELS, per_label=6)
        served = {"student": 0, "teacher": 0}
        with TestClient(app) as http:
            client = openai.OpenAI(
                base_url="http://testserver/v1",
                api_key="sk-local-a",
                http_client=http,
                max_retries=0,
            )
            for text, label in rows:
                raw = client.chat.completions.with_raw_response.create(
                    model="intent",
                    messages=banking77.messages(text, LABELS),  # type: ignore[arg-type]
                )
                who = raw.headers["x-thrifty-served-by"]
                served[who] += 1
                assert raw.parse().choices[0].message.content == label
                if who == "student":
                    assert float(raw.headers["x-thrifty-student-confidence"]) >= 0.8
                    assert raw.headers["x-thrifty-student-version"] == "v0001"
        assert served["student"] > 0 and served["teacher"] > 0, served
        # every request asked the student; only the unsure ones reached the teacher
        assert student.stats()["requests"].get("intent-lm-v0001", 0) == len(rows)
        assert sum(teacher.stats()["requests"].values()) == served["teacher"]
    finally:
        teacher.stop()
        student.stop()


class BrokenStudent:
    """A student server that answers 200 with an HTML page (a proxy's error page) or hangs:
    an HTTP server in a thread, counting the calls it got."""

    def __init__(self, mode: str, delay: float = 0.0) -> None:
        outer = self
        self.calls = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.calls += 1
                self.rfile.read(int(self.headers.get("content-length") or 0))
                if delay:
                    time.sleep(delay)
                body = b"<html>502 upstream</html>" if mode == "html" else b'{"choices": []}'
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # noqa: ARG002 (quiet server)
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def lm_app(teacher_url: str, student_url: str, **routing: Any) -> Any:
    config = local_config(teacher_url)
    config.pop("defaultCachePolicy", None)
    for route in config["routes"]:
        route.pop("cachePolicy", None)
    config["routes"].append(
        {"name": "intent", "targets": [{"provider": "simulator", "model": "gpt-4o"}]}
    )
    config["students"] = [
        {
            "route": "intent",
            "name": "intent-lm",
            "kind": "causal-lm",
            "mode": "active",
            "evaluationSampleRate": 0.0,
            "endpoint": student_url,
            "servedModel": "intent-lm-v0001",
            "version": "v0001",
            "labels": LABELS,
            **routing,
        }
    ]
    return create_app(parse_config(config))


def ask_intent(http: TestClient) -> Any:
    return http.post(
        "/v1/chat/completions",
        headers={"authorization": "Bearer sk-local-a"},
        json={"model": "intent", "messages": banking77.messages("where is my card?", LABELS)},
    )


def test_a_student_answering_garbage_or_hanging_falls_back_to_the_teacher(
    tmp_path: Path,
) -> None:
    """Whatever the student server does (an HTML 200, no answer within the timeout), the
    client gets the teacher's answer; after 5 failures in a row the gateway stops asking it."""
    teacher = start_simulator(tmp_path / "teacher", "--oracle", "banking77")
    html, hung = BrokenStudent("html"), BrokenStudent("json", delay=3.0)
    try:
        with TestClient(lm_app(teacher.url, html.url)) as http:
            for _ in range(7):
                resp = ask_intent(http)
                assert resp.status_code == 200, resp.text
                assert resp.headers["x-thrifty-served-by"] == "teacher"
            assert html.calls == 5  # the breaker opened after five failures in a row
            metrics = http.get("/metrics").text
            assert 'thrifty_distill_requests_total{reason="student_error"' in metrics
            assert 'reason="student_unavailable"' in metrics
        with TestClient(lm_app(teacher.url, hung.url, timeoutSeconds=0.3)) as http:
            started = time.perf_counter()
            resp = ask_intent(http)
            assert resp.status_code == 200 and resp.headers["x-thrifty-served-by"] == "teacher"
            assert time.perf_counter() - started < 2.5  # not the student's 3 s
    finally:
        teacher.stop()
        html.close()
        hung.close()


def test_a_shadow_student_never_delays_the_teacher_answer(tmp_path: Path) -> None:
    teacher = start_simulator(tmp_path / "teacher", "--oracle", "banking77")
    slow = BrokenStudent("json", delay=2.0)
    try:
        with TestClient(lm_app(teacher.url, slow.url, mode="shadow", timeoutSeconds=5)) as http:
            started = time.perf_counter()
            resp = ask_intent(http)
            took = time.perf_counter() - started
            assert resp.status_code == 200 and resp.headers["x-thrifty-served-by"] == "teacher"
            assert took < 1.5, took  # the student's 2 s are spent after the response
            deadline = time.monotonic() + 5
            while slow.calls == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert slow.calls == 1  # and the shadow prediction still ran
    finally:
        teacher.stop()
        slow.close()
