"""`thrifty distill export|train|evaluate|versions|serve` as the operator's Jobs run them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.unit.test_distill_pipeline import banking_rows, write_captures
from thrifty_cli.main import app
from thrifty_core.student.artifact import ArtifactManifest, write_manifest
from thrifty_core.student.store import FileDatasetStore


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """The commands configure the root logger on CliRunner's (then closed) stderr: undo it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def resource(path: Path, kind: str = "classifier", base: str | None = None) -> Path:
    student: dict[str, object] = {"kind": kind}
    if base:
        student["baseModel"] = base
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "thrifty.dev/v1alpha1",
                "kind": "DistilledModel",
                "metadata": {"name": "intent", "namespace": "shop"},
                "spec": {
                    "teacher": {"gatewayRef": {"name": "gw"}, "route": "intent"},
                    "student": student,
                    "training": {"minExamples": 50},
                    "evaluation": {"minAgreement": 0.9, "minCoverage": 0.5},
                },
            }
        )
    )
    return path


def test_pipeline_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    write_captures(
        FileDatasetStore(tmp_path / "capture", writer="gw"), banking_rows(5, 30), "intent"
    )
    env = {
        "THRIFTY_DISTILL_RESOURCE": str(resource(tmp_path / "dm.yaml")),
        "THRIFTY_CAPTURE_DIR": str(tmp_path / "capture"),
        "THRIFTY_SNAPSHOT_DIR": str(tmp_path / "snapshot"),
        "THRIFTY_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
    }
    out = runner.invoke(app, ["distill", "export"], env=env)
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["train"] > 50
    out = runner.invoke(app, ["distill", "train"], env=env)
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["version"] == "v0001"
    out = runner.invoke(app, ["distill", "evaluate"], env=env)
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert summary["promoted"] is True and summary["gate"]["passed"] is True
    assert summary["examples"] > 10 and summary["at_threshold"]["coverage"] > 0.5
    out = runner.invoke(app, ["distill", "versions"], env=env)
    assert out.stdout.startswith("* v0001")
    out = runner.invoke(app, ["distill", "serve"], env=env)
    assert out.exit_code == 0 and "in-process" in out.stdout


def test_serve_causal_lm_runs_vllm_with_the_adapter(tmp_path: Path) -> None:
    art = tmp_path / "artifacts"
    write_manifest(
        art / "v0002",
        ArtifactManifest(
            version="v0002",
            kind="causal-lm",
            base_model="Qwen/Qwen2.5-0.5B-Instruct",
            gate_passed=True,
            promoted=True,
        ),
    )
    dm = resource(tmp_path / "dm.yaml", kind="causal-lm", base="Qwen/Qwen2.5-0.5B-Instruct")
    out = CliRunner().invoke(
        app,
        ["distill", "serve", "-f", str(dm), "--artifacts-dir", str(art), "--dry-run"],
    )
    assert out.exit_code == 0, out.output
    command = out.stdout.split()
    assert command[:3] == ["vllm", "serve", "Qwen/Qwen2.5-0.5B-Instruct"]
    assert f"intent-v0002={art}/v0002/adapter" in command


def test_the_operators_jobs_name_the_version_they_train_and_evaluate(tmp_path: Path) -> None:
    runner = CliRunner()
    write_captures(
        FileDatasetStore(tmp_path / "capture", writer="gw"), banking_rows(5, 30), "intent"
    )
    env = {
        "THRIFTY_DISTILL_RESOURCE": str(resource(tmp_path / "dm.yaml")),
        "THRIFTY_CAPTURE_DIR": str(tmp_path / "capture"),
        "THRIFTY_SNAPSHOT_DIR": str(tmp_path / "snapshot" / "v1234abcd"),
        "THRIFTY_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
    }
    out = runner.invoke(app, ["distill", "export"], env=env)
    assert out.exit_code == 0, out.output
    exported = json.loads(out.stdout)
    # an older version is there (another run's): the named one is trained and evaluated
    write_manifest(
        tmp_path / "artifacts" / "v0007",
        ArtifactManifest(version="v0007", kind="classifier", labels=["a", "b"]),
    )
    out = runner.invoke(app, ["distill", "train", "--version", "v1234abcd"], env=env)
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["version"] == "v1234abcd"
    out = runner.invoke(app, ["distill", "evaluate", "--version", "v1234abcd"], env=env)
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert summary["version"] == "v1234abcd"
    # status.examples: the run's examples, not only the held-out ones
    assert summary["examples"] == exported["train"] + exported["held_out"]
    assert summary["held_out_examples"] == exported["held_out"]
    out = runner.invoke(app, ["distill", "train", "--version", "../x"], env=env)
    assert out.exit_code == 2


def test_serve_splits_a_causal_lm_over_its_gpus(tmp_path: Path) -> None:
    art = tmp_path / "artifacts"
    write_manifest(
        art / "v0002",
        ArtifactManifest(
            version="v0002",
            kind="causal-lm",
            base_model="Qwen/Qwen2.5-0.5B-Instruct",
            gate_passed=True,
            promoted=True,
        ),
    )
    dm = resource(tmp_path / "dm.yaml", kind="causal-lm", base="Qwen/Qwen2.5-0.5B-Instruct")
    data = yaml.safe_load(dm.read_text())
    data["spec"]["serving"] = {"gpu": {"count": 2}}
    dm.write_text(yaml.safe_dump(data))
    out = CliRunner().invoke(
        app, ["distill", "serve", "-f", str(dm), "--artifacts-dir", str(art), "--dry-run"]
    )
    assert out.exit_code == 0, out.output
    command = out.stdout.split()
    assert command[command.index("--tensor-parallel-size") + 1] == "2"
