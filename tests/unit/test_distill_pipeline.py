"""Distill pieces: export with a held-out split, evaluation figures, costs, the gated pipeline."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from thrifty_core.api.distilledmodel import DistilledModel
from thrifty_core.embedding.local import LocalEmbedder
from thrifty_core.student.artifact import list_versions, resolve_version
from thrifty_core.student.capture import TokenLogprob, TopLogprob, build_record, label_index
from thrifty_core.student.store import FileDatasetStore
from thrifty_distill import pipeline
from thrifty_distill.costs import cost_structure
from thrifty_distill.dataset import (
    HELD_OUT,
    TRAIN,
    Snapshot,
    export_snapshot,
    held_out,
    read_examples,
    soft_label,
)
from thrifty_distill.evaluate import evaluate_predictions, trade_off

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "banking77"


def banking_rows(limit_labels: int, per_label: int) -> list[tuple[str, str]]:
    import os

    root = Path(os.environ.get("THRIFTY_DATA_DIR", DATA.parent)) / "banking77"
    with (root / "train.csv").open(encoding="utf-8", newline="") as fh:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(fh)]
    labels = sorted({c for _, c in rows})[:limit_labels]
    out: list[tuple[str, str]] = []
    for label in labels:
        out.extend([r for r in rows if r[1] == label][:per_label])
    return out


def write_captures(
    store: FileDatasetStore, rows: list[tuple[str, str]], route: str, tenant: str = "team-a"
) -> None:
    lines = []
    for i, (text, label) in enumerate(rows):
        record = build_record(
            request_id=f"r{i}",
            ts=1_700_000_000 + i * 10.0,
            route=route,
            student="intent",
            tenant=tenant,
            model="gpt-4o",
            messages=[{"role": "user", "content": text}],
            completion={"choices": [{"message": {"content": label.replace("_", " ").title()}}]},
            prompt_tokens=400,
            completion_tokens=4,
            cost_usd=0.00104,
        )
        assert record is not None
        lines.append(record.model_dump_json().encode())
    store.append(lines)


def test_trade_off_counts_the_fallback_as_agreement() -> None:
    predicted = ["a", "b", "a", "b"]
    teacher = ["a", "a", "a", "b"]
    confidence = [0.9, 0.4, 0.95, 0.8]
    point = trade_off(predicted, confidence, teacher, 0.5)
    assert point.coverage == 0.75
    assert point.accuracy_covered == 1.0
    assert point.agreement_with_fallback == 1.0
    everything = trade_off(predicted, confidence, teacher, 0.0)
    assert everything.agreement_with_fallback == 0.75
    report = evaluate_predictions(
        predicted,
        confidence,
        teacher,
        ["a", "b"],
        threshold=0.5,
        min_agreement=0.9,
        min_coverage=0.8,
    )
    assert report["gate"]["passed"] is False  # coverage 0.75 < 0.8
    assert report["per_class"]["a"]["recall"] == pytest.approx(2 / 3, abs=1e-3)
    assert 0 <= report["ece"] <= 1


def test_cost_structure_break_even() -> None:
    costs = cost_structure(
        teacher_cost_per_request=0.001,
        coverage=0.8,
        requests_per_day=100_000,
        training_seconds=3600,
        node_price_per_hour=4.0,
        serving_cost_per_hour=1.0,
    )
    # replaces 80 USD/day of teacher spend for 24 USD/day of serving: 56 USD/day net
    assert costs["net_saving_per_day_usd"] == pytest.approx(56.0)
    assert costs["break_even_days"] == pytest.approx(4 / 56, abs=1e-4)
    assert costs["break_even_requests"] == round(4 / (56 / 100_000))
    losing = cost_structure(
        teacher_cost_per_request=0.001,
        coverage=0.8,
        requests_per_day=100,
        training_seconds=60,
        node_price_per_hour=1.0,
        serving_cost_per_hour=1.0,
    )
    assert losing["pays_off"] is False and losing["break_even_days"] is None


def test_soft_label_spreads_first_token_mass() -> None:
    index = label_index(["card_arrival", "card_linking", "exchange_rate"])
    logprobs = [
        TokenLogprob(
            token="card",
            logprob=-0.1,
            top=[TopLogprob(token="card", logprob=-0.2), TopLogprob(token="exchange", logprob=-2)],
        )
    ]
    soft = soft_label(logprobs, "card_arrival", index)
    assert soft is not None
    assert soft["card_arrival"] > soft["exchange_rate"] > 0
    assert sum(soft.values()) == pytest.approx(1.0, abs=1e-3)


def test_export_dedupes_discovers_labels_and_holds_out(tmp_path: Path) -> None:
    rows = banking_rows(limit_labels=4, per_label=30)
    store = FileDatasetStore(tmp_path / "capture", writer="gw")
    write_captures(store, rows + rows[:10], route="intent")  # repeats keep one example
    write_captures(store, [("unrelated", "other")], route="chat")  # another route
    snap = export_snapshot(store, tmp_path / "snap", route="intent", held_out_fraction=0.25)
    assert snap.train + snap.held_out == len(rows)
    # answers were spelled "Card Arrival"; labels are discovered after normalisation
    assert len(snap.labels) == 4 and all(" " in label for label in snap.labels)
    assert 10 <= snap.held_out <= 50
    again = Snapshot.load(tmp_path / "snap")
    assert again.requests == len(rows) + 10 and again.requests_per_day > 0
    assert held_out("same text", 0.25) == held_out("same text", 0.25)
    # every example keeps the tenant its teacher answer was captured for
    examples = read_examples(tmp_path / "snap" / TRAIN) + read_examples(
        tmp_path / "snap" / HELD_OUT
    )
    assert examples and {e.tenant for e in examples} == {"team-a"}


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder(threads=2)


def resource(min_agreement: float, threshold: float = 0.5) -> DistilledModel:
    return DistilledModel.model_validate(
        {
            "metadata": {"name": "intent"},
            "spec": {
                "teacher": {"gatewayRef": {"name": "gw"}, "route": "intent"},
                "student": {"kind": "classifier"},
                "training": {"minExamples": 50, "nodePricePerHour": 1.0},
                "evaluation": {"minAgreement": min_agreement, "minCoverage": 0.5},
                "routing": {"confidenceThreshold": threshold},
                "serving": {"costPerHour": 0.05},
            },
        }
    )


def test_pipeline_promotes_only_when_the_gate_passes(
    tmp_path: Path, embedder: LocalEmbedder
) -> None:
    rows = banking_rows(limit_labels=6, per_label=40)
    random.Random(0).shuffle(rows)
    store = FileDatasetStore(tmp_path / "capture", writer="gw")
    write_captures(store, rows, route="intent")
    job = pipeline.Job.from_resource(
        resource(min_agreement=0.9), tmp_path / "capture", tmp_path / "snap", tmp_path / "art"
    )
    pipeline.export(job)
    first = pipeline.train(job, embedder)
    report = pipeline.evaluate(job, embedder=embedder)
    assert report["quality"]["gate"]["passed"] is True
    assert report["promoted"] is True
    assert report["costs"]["training_cost_usd"] > 0
    assert json.loads((tmp_path / "art" / first.version / "report.json").read_text())
    assert (tmp_path / "art" / first.version / "report.png").read_bytes()[:4] == b"\x89PNG"
    active = resolve_version(tmp_path / "art")
    assert active is not None and active.version == first.version

    # a student of an inconsistent teacher (random answers) fails the gate: trained,
    # evaluated, never promoted; the route keeps the promoted version
    labels = sorted({label for _, label in rows})
    rng = random.Random(1)
    noisy = [(text, rng.choice(labels)) for text, _ in rows]
    write_captures(FileDatasetStore(tmp_path / "noisy", writer="gw"), noisy, route="intent")
    bad = pipeline.Job.from_resource(
        resource(min_agreement=0.9), tmp_path / "noisy", tmp_path / "snap2", tmp_path / "art"
    )
    pipeline.export(bad)
    second = pipeline.train(bad, embedder)
    failed = pipeline.evaluate(bad, embedder=embedder)
    assert failed["quality"]["gate"]["passed"] is False and failed["promoted"] is False
    versions = {m.version: m for m in list_versions(tmp_path / "art")}
    assert versions[second.version].evaluated and not versions[second.version].promoted
    still = resolve_version(tmp_path / "art")
    assert still is not None and still.version == first.version


def test_train_refuses_too_few_examples(tmp_path: Path, embedder: LocalEmbedder) -> None:
    store = FileDatasetStore(tmp_path / "capture", writer="gw")
    write_captures(store, banking_rows(limit_labels=2, per_label=10), route="intent")
    job = pipeline.Job.from_resource(
        resource(0.9), tmp_path / "capture", tmp_path / "snap", tmp_path / "art"
    )
    pipeline.export(job)
    with pytest.raises(pipeline.NotEnoughExamplesError):
        pipeline.train(job, embedder)
    assert list_versions(tmp_path / "art") == []


def test_each_run_trains_and_evaluates_its_own_version(
    tmp_path: Path, embedder: LocalEmbedder
) -> None:
    """Two runs of one model (a spec edited during training) share the artifacts volume: each
    trains the version it names and evaluates that one, never the other's (run B once
    evaluated and promoted run A's newer version). The same run does not train twice."""
    rows = banking_rows(limit_labels=4, per_label=30)
    write_captures(FileDatasetStore(tmp_path / "capture", writer="gw"), rows, route="intent")
    art = tmp_path / "art"
    run_b = pipeline.Job.from_resource(resource(0.5), tmp_path / "capture", tmp_path / "b", art)
    run_a = pipeline.Job.from_resource(resource(0.5), tmp_path / "capture", tmp_path / "a", art)
    pipeline.export(run_b)
    pipeline.export(run_a)
    b = pipeline.train(run_b, embedder, version="vbbbbbbbb")
    a = pipeline.train(run_a, embedder, version="vaaaaaaaa")  # the newer one
    assert (a.version, b.version) == ("vaaaaaaaa", "vbbbbbbbb")
    again = pipeline.train(run_b, embedder, version="vbbbbbbbb")
    assert again.created == b.created  # kept as it was
    report = pipeline.evaluate(run_b, "vbbbbbbbb", embedder=embedder)
    assert report["version"] == "vbbbbbbbb"
    snapshot = Snapshot.load(tmp_path / "b")
    # the run's examples (training plus held-out), what the operator shows as status.examples
    assert report["examples"] == snapshot.train + snapshot.held_out
    assert report["held_out_examples"] == snapshot.held_out
    with pytest.raises(LookupError):
        pipeline.evaluate(run_b, "v0009", embedder=embedder)
    with pytest.raises(ValueError):
        pipeline.train(run_b, embedder, version="../elsewhere")


def test_a_version_failing_a_later_evaluation_is_promoted_no_more(
    tmp_path: Path, embedder: LocalEmbedder
) -> None:
    """The manifest says how the version fared in its latest evaluation (a stricter gate)."""
    rows = banking_rows(limit_labels=4, per_label=30)
    write_captures(FileDatasetStore(tmp_path / "capture", writer="gw"), rows, route="intent")
    lenient = pipeline.Job.from_resource(
        resource(0.5), tmp_path / "capture", tmp_path / "snap", tmp_path / "art"
    )
    pipeline.export(lenient)
    version = pipeline.train(lenient, embedder, version="vcccccccc").version
    assert pipeline.evaluate(lenient, version, embedder=embedder)["promoted"] is True
    strict = pipeline.Job.from_resource(
        resource(1.0, threshold=0.99), tmp_path / "capture", tmp_path / "snap", tmp_path / "art"
    )
    assert pipeline.evaluate(strict, version, embedder=embedder)["promoted"] is False
    assert resolve_version(tmp_path / "art") is None


def test_the_cost_report_scales_sampled_captures_to_the_routes_traffic(
    tmp_path: Path, embedder: LocalEmbedder
) -> None:
    """With capture.sampleRate 0.25 the captures are a quarter of the route's requests: the
    report's requests per day (and so the savings and break-even) count all of them."""
    rows = banking_rows(limit_labels=6, per_label=40)
    store = FileDatasetStore(tmp_path / "capture", writer="gw")
    write_captures(store, rows, route="intent")
    full = resource(min_agreement=0.5)
    job = pipeline.Job.from_resource(
        full, tmp_path / "capture", tmp_path / "snap", tmp_path / "art"
    )
    pipeline.export(job)
    pipeline.train(job, embedder)
    every = pipeline.evaluate(job, embedder=embedder)["costs"]["requests_per_day"]
    sampled = resource(min_agreement=0.5)
    sampled.spec.capture.sample_rate = 0.25
    quarter = pipeline.Job.from_resource(
        sampled, tmp_path / "capture", tmp_path / "snap", tmp_path / "art"
    )
    scaled = pipeline.evaluate(quarter, embedder=embedder)["costs"]["requests_per_day"]
    assert scaled == pytest.approx(every * 4, rel=1e-3)


def test_export_drops_the_snapshots_of_earlier_runs(tmp_path: Path) -> None:
    """Each run exports the whole capture into its own snapshot: a retrain a day would fill
    the volume. Earlier runs but the newest lose their training examples; what evaluating
    their version again needs (held-out examples, the snapshot's figures) stays."""
    import os
    import time

    from thrifty_distill.dataset import HELD_OUT, SNAPSHOT, TRAIN

    root = tmp_path / "snapshot"
    for i, run in enumerate(["v0000000a", "v0000000b", "v0000000c"]):
        for name in (TRAIN, HELD_OUT, SNAPSHOT):
            (root / run).mkdir(parents=True, exist_ok=True)
            (root / run / name).write_text("x")
        os.utime(root / run, (time.time() - 100 + i, time.time() - 100 + i))
    (root / "notes").mkdir()  # not a run: left alone
    (root / "notes" / TRAIN).write_text("x")
    dropped = pipeline.prune_snapshots(root / "v0000000d")
    assert sorted(dropped) == ["v0000000a", "v0000000b"]
    for run in ("v0000000a", "v0000000b"):
        assert sorted(p.name for p in (root / run).iterdir()) == sorted([HELD_OUT, SNAPSHOT])
    assert (root / "v0000000c" / TRAIN).exists() and (root / "notes" / TRAIN).exists()
    assert pipeline.prune_snapshots(tmp_path / "elsewhere" / "snap") == []


def test_students_train_on_the_vectors_the_gateway_serves_them_with() -> None:
    """The gateway serves classifier students on the float32 embedder (`services.embedders`);
    the cache's int8 default must not leak into their training and promotion gate."""
    from thrifty_gateway.services.embedders import EmbedderOnce

    trained = pipeline.default_embedder(resource(0.8).spec, threads=1)
    served = EmbedderOnce(resources=None)()
    assert isinstance(trained, LocalEmbedder) and isinstance(served, LocalEmbedder)
    assert trained.precision == served.precision == "float32"
