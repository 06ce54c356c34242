"""A causal-lm student behind an OpenAI-compatible server (here a second simulator process
standing in for vLLM with the adapter): the gateway's default stages route to it, take its
confidence from its token log-probabilities and fall back to the teacher below the
threshold."""

from __future__ import annotations

from pathlib import Path

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
        config = local_config(teacher.url)
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
                "confidenceThreshold": 0.8,
                "evaluationSampleRate": 0.0,
                "endpoint": f"{student.url}/v1",
                "servedModel": "intent-lm-v0001",
                "version": "v0001",
                "labels": LABELS,
                "costPerHour": 2.0,
            }
        ]
        app = create_app(parse_config(config))  # the default stages include distill
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
