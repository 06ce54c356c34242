"""`thrifty distill export|train|evaluate|serve|versions`: the distillation pipeline.

Each command is also the entrypoint of the operator's Job (export, train, evaluate) or
Deployment (serve). Inputs come from options or the environment the operator sets:
THRIFTY_DISTILL_RESOURCE (the DistilledModel manifest, YAML or JSON), THRIFTY_CAPTURE_DIR,
THRIFTY_SNAPSHOT_DIR, THRIFTY_ARTIFACTS_DIR.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from thrifty_distill.pipeline import Job

distill_app = typer.Typer(help="Distillation: export captures, train, evaluate, serve students.")

Resource = Annotated[
    Path,
    typer.Option(
        "--resource",
        "-f",
        envvar="THRIFTY_DISTILL_RESOURCE",
        exists=True,
        dir_okay=False,
        help="DistilledModel manifest (YAML or JSON).",
    ),
]
CaptureDir = Annotated[
    Path,
    typer.Option(envvar="THRIFTY_CAPTURE_DIR", help="Dataset store (capture shards)."),
]
SnapshotDir = Annotated[
    Path,
    typer.Option(envvar="THRIFTY_SNAPSHOT_DIR", help="Exported snapshot (train/held-out)."),
]
ArtifactsDir = Annotated[
    Path,
    typer.Option(envvar="THRIFTY_ARTIFACTS_DIR", help="Versioned student artifacts."),
]


def register(app: typer.Typer) -> None:
    """Attach `thrifty distill ...`."""
    app.add_typer(distill_app, name="distill")


def _job(resource: Path, capture: Path, snapshot: Path, artifacts: Path) -> Job:
    import yaml

    from thrifty_core.api.distilledmodel import DistilledModel
    from thrifty_core.logging import setup_logging
    from thrifty_distill.pipeline import Job

    setup_logging("INFO", "text")
    data = yaml.safe_load(resource.read_text(encoding="utf-8"))
    model = DistilledModel.model_validate(data)
    return Job.from_resource(model, capture, snapshot, artifacts)


def _echo(data: dict[str, Any]) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@distill_app.command("export")
def export(
    resource: Resource,
    capture_dir: CaptureDir = Path("capture"),
    snapshot_dir: SnapshotDir = Path("snapshot"),
) -> None:
    """Export captured teacher answers to a snapshot with a held-out split."""
    from thrifty_distill.pipeline import export as run

    snapshot = run(_job(resource, capture_dir, snapshot_dir, Path()))
    _echo(snapshot.as_dict())


@distill_app.command("train")
def train(
    resource: Resource,
    snapshot_dir: SnapshotDir = Path("snapshot"),
    artifacts_dir: ArtifactsDir = Path("artifacts"),
    version: Annotated[
        str | None,
        typer.Option(
            help="Version to train (the operator's run; an already trained one is kept). "
            "Default: the next free number."
        ),
    ] = None,
) -> None:
    """Train a new student version from the snapshot (not promoted until evaluated).

    Exits 3 when the snapshot has fewer training examples than spec.training.minExamples."""
    from thrifty_core.student.artifact import is_version
    from thrifty_distill.pipeline import NotEnoughExamplesError
    from thrifty_distill.pipeline import train as run

    if version is not None and not is_version(version):
        raise typer.BadParameter("v0001, or v and 8 hex digits", param_hint="--version")
    try:
        manifest = run(_job(resource, Path(), snapshot_dir, artifacts_dir), version=version)
    except NotEnoughExamplesError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(3) from exc
    _echo(manifest.model_dump(mode="json"))


@distill_app.command("evaluate")
def evaluate(
    resource: Resource,
    snapshot_dir: SnapshotDir = Path("snapshot"),
    artifacts_dir: ArtifactsDir = Path("artifacts"),
    version: Annotated[str | None, typer.Option(help="Version (default: newest).")] = None,
    promote: Annotated[bool, typer.Option(help="Promote when the gate passes.")] = True,
) -> None:
    """Evaluate against the teacher on the held-out split, write the report, gate, promote.

    Exits 0 when the gate passed, 2 when it failed (the version is kept, not promoted)."""
    from thrifty_distill.pipeline import evaluate as run

    report = run(_job(resource, Path(), snapshot_dir, artifacts_dir), version, promote=promote)
    summary = {
        "version": report["version"],
        "promoted": report["promoted"],
        # The run's examples (training plus held-out): what the operator reports as
        # status.examples.
        "examples": report["examples"],
        "held_out_examples": report["held_out_examples"],
        "gate": report["quality"]["gate"],
        "at_threshold": report["quality"]["at_threshold"],
        "ece": report["quality"]["ece"],
        "costs": report["costs"],
        "report": str(artifacts_dir / report["version"] / "report.json"),
    }
    _echo(summary)
    if not report["quality"]["gate"]["passed"]:
        raise typer.Exit(2)


@distill_app.command("versions")
def versions(artifacts_dir: ArtifactsDir = Path("artifacts")) -> None:
    """List trained versions; `*` marks the newest promoted one (the one that serves unless
    spec.serving.version pins another)."""
    from thrifty_core.student.artifact import list_versions, resolve_version

    active = resolve_version(artifacts_dir)
    for m in list_versions(artifacts_dir):
        mark = "*" if active is not None and m.version == active.version else " "
        typer.echo(
            f"{mark} {m.version}  {m.kind:<10} created={m.created} evaluated={m.evaluated} "
            f"gate_passed={m.gate_passed} promoted={m.promoted} "
            f"coverage={m.metrics.get('coverage')} "
            f"agreement={m.metrics.get('agreement_with_fallback')}"
        )


@distill_app.command("serve")
def serve(
    resource: Resource,
    artifacts_dir: ArtifactsDir = Path("artifacts"),
    port: Annotated[int, typer.Option(help="Serving port (causal-lm).")] = 8000,
    dry_run: Annotated[bool, typer.Option(help="Print the command instead of running it.")] = (
        False
    ),
) -> None:
    """Serve the student: causal-lm runs vLLM with the version's LoRA adapter; a classifier
    runs inside the gateway, so this only checks that a servable version exists."""
    import os

    from thrifty_core.student.artifact import ADAPTER, resolve_version
    from thrifty_core.student.serving import vllm_args

    job = _job(resource, Path(), Path(), artifacts_dir)
    manifest = resolve_version(artifacts_dir, job.spec.serving.version)
    if manifest is None:
        typer.echo("no promoted student version to serve", err=True)
        raise typer.Exit(3)
    if manifest.kind == "classifier":
        typer.echo(f"classifier {manifest.version} is served in-process by the gateway")
        return
    args = vllm_args(
        manifest.base_model,
        str(artifacts_dir / manifest.version / ADAPTER),
        f"{job.name}-{manifest.version}",
        port=port,
        tensor_parallel_size=max(1, job.spec.serving.gpu.count),
    )
    if dry_run:
        typer.echo(" ".join(["vllm", *args]))
        return
    os.execvp("vllm", ["vllm", *args])
