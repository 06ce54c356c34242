"""Distillation end to end on Banking77: live traffic through the gateway (official openai
client) with the simulator playing the teacher, capture, export/train/evaluate, promotion,
student routing with confidence fallback, the ledger's distill saving, a failing gate that
never promotes, shadow mode, and demotion when the teacher stops agreeing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from tests.integration.procs import Simulator, local_config, start_simulator
from thrifty_core.api.distilledmodel import DistilledModel
from thrifty_core.config import parse_config
from thrifty_core.embedding.local import LocalEmbedder
from thrifty_core.student.artifact import list_versions, resolve_version
from thrifty_core.student.store import FileDatasetStore
from thrifty_distill import banking77, pipeline
from thrifty_gateway.app import create_app
from thrifty_gateway.services.distill import DistillStage, distill_stage_factory
from thrifty_gateway.services.distill.stage import EVAL_TENANT

pytestmark = pytest.mark.integration

LABELS = sorted(banking77.load_labels())[:10]
ROWS = banking77.subset(banking77.load_rows(), LABELS, per_label=90)
TRAIN_ROWS = ROWS[:600]  # captured from live traffic
NEW_ROWS = ROWS[600:]  # traffic after promotion (messages the student never saw)
THRESHOLD = 0.6


@dataclass
class Gw:
    client: openai.OpenAI
    http: TestClient
    stage: DistillStage

    def ask(self, text: str, **headers: str) -> tuple[str, dict[str, str]]:
        raw = self.client.chat.completions.with_raw_response.create(
            model="intent",
            messages=banking77.messages(text, LABELS),  # type: ignore[arg-type]
            extra_headers=headers or None,
        )
        return raw.parse().choices[0].message.content or "", dict(raw.headers)

    def usage(self) -> dict[str, Any]:
        resp = self.http.get("/v1/thrifty/usage", headers={"authorization": "Bearer sk-local-a"})
        totals: dict[str, Any] = resp.json()["totals"]
        return totals


def wait_for(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cond()


def student_config(tmp: Path, art: Path, **routing: Any) -> dict[str, Any]:
    return {
        "route": "intent",
        "name": "intent",
        "kind": "classifier",
        "mode": "active",
        "confidenceThreshold": THRESHOLD,
        "evaluationSampleRate": 0.0,
        "artifactPath": str(art),
        "captureDir": str(tmp / "capture"),
        "capture": {"logprobs": True, "maxExamples": 100_000},
        "costPerHour": 0.5,
        **routing,
    }


@pytest.fixture
def gateway_for() -> Iterator[Callable[..., Gw]]:
    """An in-process gateway with the distill stage, pointed at a given simulator."""
    opened: list[TestClient] = []

    def start(sim: Simulator, student: dict[str, Any]) -> Gw:
        config = local_config(sim.url)
        config["routes"].append(
            {"name": "intent", "targets": [{"provider": "simulator", "model": "gpt-4o"}]}
        )
        config["students"] = [student]
        app = create_app(
            parse_config(config), stage_factories=[distill_stage_factory(reload_seconds=0.2)]
        )
        http = TestClient(app)
        http.__enter__()
        opened.append(http)
        stage = next(s for s in app.state.gateway.stages if s.name == "distill")
        client = openai.OpenAI(
            base_url="http://testserver/v1", api_key="sk-local-a", http_client=http, max_retries=0
        )
        return Gw(client, http, stage)

    yield start
    for http in opened:
        http.__exit__(None, None, None)


def oracle_simulator(
    workdir: Path, error_rate: float, monkeypatch: pytest.MonkeyPatch
) -> Simulator:
    monkeypatch.setenv("THRIFTY_ORACLE_ERROR_RATE", str(error_rate))
    return start_simulator(workdir, "--oracle", "banking77")


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder(threads=2)


def job(tmp: Path, art: Path, min_agreement: float = 0.9) -> pipeline.Job:
    resource = DistilledModel.model_validate(
        {
            "metadata": {"name": "intent"},
            "spec": {
                "teacher": {"gatewayRef": {"name": "gw"}, "route": "intent"},
                "student": {"kind": "classifier"},
                "training": {"minExamples": 200, "nodePricePerHour": 0.4},
                "evaluation": {"minAgreement": min_agreement, "minCoverage": 0.6},
                "routing": {"confidenceThreshold": THRESHOLD},
                "serving": {"costPerHour": 0.5},
            },
        }
    )
    return pipeline.Job.from_resource(resource, tmp / "capture", tmp / "snapshot", art)


def test_capture_train_promote_route(
    gateway_for: Callable[..., Gw],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    embedder: LocalEmbedder,
) -> None:
    sim = oracle_simulator(tmp_path / "sim", 0.03, monkeypatch)
    try:
        art = tmp_path / "artifacts"
        gw = gateway_for(sim, student_config(tmp_path, art))
        # 1. no student yet: the teacher answers everything and is captured
        right = 0
        for text, label in TRAIN_ROWS:
            answer, headers = gw.ask(text)
            assert headers["x-thrifty-served-by"] == "teacher"
            right += answer == label
        assert right >= 0.9 * len(TRAIN_ROWS)  # the simulated teacher errs ~3% of the time
        gw.ask("my email is jane@example.com, where is my card?", **{"x-thrifty-no-capture": "1"})
        store = FileDatasetStore(tmp_path / "capture", writer="reader")

        def captured() -> int:
            return FileDatasetStore(tmp_path / "capture", writer="reader").count()

        wait_for(lambda: captured() == len(TRAIN_ROWS))
        lines = [json.loads(line) for s in store.shards() for line in store.read(s)]
        assert all("jane@example.com" not in json.dumps(r) for r in lines)  # opted out
        assert lines[0]["logprobs"], "the teacher was asked for logprobs"

        # 2. the pipeline: export with a held-out split, train, evaluate, promote
        j = job(tmp_path, art)
        snapshot = pipeline.export(j)
        assert snapshot.train + snapshot.held_out == len(TRAIN_ROWS)
        assert sorted(snapshot.labels) == LABELS
        pipeline.train(j, embedder)
        report = pipeline.evaluate(j, embedder=embedder)
        assert report["quality"]["gate"]["passed"] and report["promoted"]
        version = report["version"]
        wait_for(lambda: gw.stage.status()[0]["version"] == version)

        # 3. new traffic: most answered by the student, unsure ones by the teacher
        served: dict[str, int] = {"student": 0, "teacher": 0}
        agree = 0
        before = captured()
        for text, label in NEW_ROWS:
            answer, headers = gw.ask(text)
            who = headers["x-thrifty-served-by"]
            served[who] += 1
            agree += answer == label
            if who == "student":
                assert float(headers["x-thrifty-student-confidence"]) >= THRESHOLD
                assert headers["x-thrifty-student-version"] == version
        assert served["student"] >= 0.7 * len(NEW_ROWS), served
        assert served["teacher"] > 0, "low-confidence requests fall through to the teacher"
        assert agree >= 0.9 * len(NEW_ROWS)
        # the teacher's answers (the fallbacks) are captured for the next training run
        wait_for(lambda: captured() == before + served["teacher"])

        # 4. the ledger prices student answers at the serving cost and books the saving
        wait_for(lambda: gw.usage()["served_by_lever"]["distill"] == served["student"])
        totals = gw.usage()
        assert totals["saved_by_lever_usd"]["distill"] > 0
        assert totals["cost_usd"] < totals["baseline_cost_usd"]
        # streamed requests get the student's answer as chunks
        asked = ((t, *gw.ask(t)) for t, _ in NEW_ROWS)
        text, answer = next((t, a) for t, a, h in asked if h["x-thrifty-served-by"] == "student")
        with gw.client.chat.completions.with_streaming_response.create(
            model="intent",
            messages=banking77.messages(text, LABELS),  # type: ignore[arg-type]
            stream=True,
        ) as stream:
            assert stream.headers["x-thrifty-served-by"] == "student"
            chunks: list[Any] = list(stream.parse())
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer

        # 5. the student answers only under the instructions it was trained under, and only
        # what the teacher could have answered whole: other instructions (another task,
        # another label list, none), a token limit below its answer or a stop sequence in it
        # go to the teacher (they got the student's label, confidently)
        def served_by(messages: list[dict[str, Any]], **fields: Any) -> str:
            raw = gw.client.chat.completions.with_raw_response.create(
                model="intent",
                messages=messages,  # type: ignore[arg-type]
                **fields,
            )
            return raw.headers["x-thrifty-served-by"]

        user = {"role": "user", "content": text}
        assert served_by(banking77.messages(text, LABELS)) == "student"
        translate = {"role": "system", "content": "Translate the user's message into French."}
        assert served_by([translate, user]) == "teacher"
        assert served_by(banking77.messages(text, LABELS[:3])) == "teacher"
        assert served_by([user]) == "teacher"
        assert served_by(banking77.messages(text, LABELS), max_tokens=1) == "teacher"
        assert served_by(banking77.messages(text, LABELS), stop=[answer[1:3]]) == "teacher"
        assert served_by(banking77.messages(text, LABELS), max_tokens=50, stop=["\n"]) == (
            "student"
        )
        counts = gw.stage.status()[0]["served"]
        assert counts["unfamiliar_instructions"] == 3 and counts["answer_limits"] == 2
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def promoted(tmp_path_factory: pytest.TempPathFactory, embedder: LocalEmbedder) -> Path:
    """A promoted classifier version trained on correct teacher answers (written directly)."""
    from thrifty_core.student.capture import build_record

    tmp = tmp_path_factory.mktemp("promoted")
    store = FileDatasetStore(tmp / "capture", writer="seed")
    lines = []
    for i, (text, label) in enumerate(TRAIN_ROWS):
        record = build_record(
            request_id=str(i),
            ts=1_700_000_000 + i,
            route="intent",
            student="intent",
            model="gpt-4o",
            messages=banking77.messages(text, LABELS),
            completion={"choices": [{"message": {"content": label}}]},
            prompt_tokens=120,
            completion_tokens=3,
            cost_usd=0.00033,
        )
        assert record is not None
        lines.append(record.model_dump_json().encode())
    store.append(lines)
    j = job(tmp, tmp / "artifacts")
    pipeline.export(j)
    pipeline.train(j, embedder)
    assert pipeline.evaluate(j, embedder=embedder)["promoted"]
    return tmp / "artifacts"


def test_failed_gate_never_promotes_and_the_route_keeps_the_teacher(
    gateway_for: Callable[..., Gw],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    embedder: LocalEmbedder,
) -> None:
    sim = oracle_simulator(tmp_path / "sim", 0.6, monkeypatch)  # an inconsistent teacher
    try:
        art = tmp_path / "artifacts"
        gw = gateway_for(sim, student_config(tmp_path, art))
        for text, _ in TRAIN_ROWS[:400]:
            gw.ask(text)
        j = job(tmp_path, art)
        wait_for(lambda: FileDatasetStore(tmp_path / "capture", writer="r").count() == 400)
        pipeline.export(j)
        pipeline.train(j, embedder)
        report = pipeline.evaluate(j, embedder=embedder)
        assert report["quality"]["gate"]["passed"] is False
        assert report["promoted"] is False
        (manifest,) = list_versions(art)
        assert manifest.evaluated and not manifest.promoted
        assert resolve_version(art) is None
        time.sleep(0.5)  # several reload periods: nothing to load
        for text, _ in NEW_ROWS[:20]:
            _, headers = gw.ask(text)
            assert headers["x-thrifty-served-by"] == "teacher"
        status = gw.stage.status()[0]
        assert status["version"] == "" and status["served"]["no_student"] == 420
        assert gw.usage()["served_by_lever"]["distill"] == 0
    finally:
        sim.stop()


def test_shadow_mode_measures_agreement_without_serving(
    gateway_for: Callable[..., Gw],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    promoted: Path,
) -> None:
    sim = oracle_simulator(tmp_path / "sim", 0.03, monkeypatch)
    try:
        gw = gateway_for(sim, student_config(tmp_path, promoted, mode="shadow"))
        for text, _ in NEW_ROWS[:150]:
            _, headers = gw.ask(text)
            assert headers["x-thrifty-served-by"] == "teacher"
        wait_for(lambda: gw.stage.status()[0]["comparisons"] >= 100)
        status = gw.stage.status()[0]
        assert status["agreement"] >= 0.85
        assert status["served"] == {"shadow": 150}
        assert not status["demoted"]
        # The student ran on every request (after the response) and answered none: its
        # inference (costPerHour) is a cost of the distill lever, booked like evaluation calls
        # (on the gateway's own evaluation account, not as the tenant's requests).
        totals = gw.usage()
        assert totals["served_by_lever"]["distill"] == 0 and totals["requests"] == 150
        admin = {"authorization": "Bearer sk-local-admin"}
        usage = gw.http.get("/v1/thrifty/usage", headers=admin).json()
        (evaluation,) = [t for t in usage["by_tenant"] if t["tenant"] == EVAL_TENANT]
        assert evaluation["saved_by_lever_usd"]["distill"] < 0
        assert usage["totals"]["saved_by_lever_usd"]["distill"] < 0
    finally:
        sim.stop()


def test_student_is_demoted_when_the_teacher_stops_agreeing(
    gateway_for: Callable[..., Gw],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    promoted: Path,
) -> None:
    sim = oracle_simulator(tmp_path / "sim", 0.5, monkeypatch)  # the teacher drifted
    try:
        gw = gateway_for(sim, student_config(tmp_path, promoted, evaluationSampleRate=1.0))
        served = []
        for text, _ in NEW_ROWS[:60]:
            served.append(gw.ask(text)[1]["x-thrifty-served-by"])
            if gw.stage.status()[0]["demoted"]:
                break
        wait_for(lambda: gw.stage.status()[0]["demoted"])
        assert "student" in served
        for text, _ in NEW_ROWS[100:110]:
            assert gw.ask(text)[1]["x-thrifty-served-by"] == "teacher"
        status = gw.stage.status()[0]
        assert status["served"]["demoted"] >= 10
        assert status["agreement"] < 0.9
        metrics = gw.http.get("/metrics").text
        assert 'thrifty_distill_demoted{student="intent"} 1.0' in metrics
        # operators and the operator read the demotion on the admin endpoint
        admin = {"authorization": "Bearer sk-local-admin"}
        (row,) = gw.http.get("/v1/thrifty/students", headers=admin).json()["data"]
        assert row["demoted"] and "agreement" in row["demoted_reason"]
        assert row["version"] == status["version"] and row["mode"] == "active"
        assert row["comparisons"] >= status["comparisons"] >= 20
        # evaluation answers from the teacher are captured for the next training run
        records = FileDatasetStore(tmp_path / "capture", writer="r")
        sources = {json.loads(line)["source"] for s in records.shards() for line in records.read(s)}
        assert "evaluation" in sources
    finally:
        sim.stop()


def test_canary_sends_a_stable_share_to_the_student(
    gateway_for: Callable[..., Gw],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    promoted: Path,
) -> None:
    sim = oracle_simulator(tmp_path / "sim", 0.03, monkeypatch)
    try:
        gw = gateway_for(sim, student_config(tmp_path, promoted, mode="canary", canaryPercent=30))
        served = {"student": 0, "teacher": 0}
        for text, _ in NEW_ROWS[:150]:
            served[gw.ask(text)[1]["x-thrifty-served-by"]] += 1
        status = gw.stage.status()[0]
        assert 0.15 * 150 <= served["student"] <= 0.40 * 150, served
        assert status["served"]["canary"] >= 0.55 * 150  # outside the canary: the teacher
        assert status["served"]["confident"] == served["student"]
    finally:
        sim.stop()
