"""`thrifty operator`: run the kopf operator; the collection Job entry points."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

operator_app = typer.Typer(
    help="Kubernetes operator for Thrifty's custom resources.", invoke_without_command=True
)


@operator_app.callback()
def run(
    ctx: typer.Context,
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Watch only this namespace (repeatable)."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace (default).")
    ] = False,
    standalone: Annotated[
        bool,
        typer.Option(
            "--standalone/--peering",
            help="Run without kopf peering (the chart runs one replica, Recreate strategy).",
        ),
    ] = True,
    liveness: Annotated[
        str | None,
        typer.Option(
            help="Liveness endpoint, e.g. http://0.0.0.0:8081/healthz (default: "
            "from THRIFTY_OPERATOR_HEALTH_PORT; 'none' disables it)."
        ),
    ] = None,
) -> None:
    """Run the operator (kopf) until SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    from thrifty_operator.main import run_operator
    from thrifty_operator.settings import OperatorSettings

    if namespace and all_namespaces:
        raise typer.BadParameter("use either --namespace or --all-namespaces")
    settings = OperatorSettings()
    if liveness is None and settings.health_port:
        liveness = f"http://0.0.0.0:{settings.health_port}/healthz"
    run_operator(
        settings,
        namespaces=list(namespace or []),
        standalone=standalone,
        liveness=None if liveness == "none" else liveness,
    )


def _read_key(path: Path | None) -> str | None:
    return path.read_text(encoding="utf-8").strip() if path else None


@operator_app.command("ensure-collection")
def ensure_collection(
    url: Annotated[str, typer.Option(help="Qdrant base URL.")],
    collection: Annotated[str, typer.Option(help="Collection name.")],
    size: Annotated[int, typer.Option(help="Vector size.", min=1)],
    tenant_field: Annotated[str, typer.Option(help="Payload field holding the tenant.")] = (
        "tenant"
    ),
    api_key_file: Annotated[Path | None, typer.Option(help="File with the API key.")] = None,
    recreate: Annotated[
        bool,
        typer.Option(
            help="Recreate a cache collection of another vector size (the policy's own "
            "collection; never one the user named, which other policies may share)."
        ),
    ] = False,
    policy: Annotated[
        str | None,
        typer.Option(
            help="The policy (namespace/name) it is for: a collection holding other policies' "
            "entries is never recreated."
        ),
    ] = None,
) -> None:
    """Create the semantic collection and its tenant index (idempotent)."""
    from thrifty_operator.collection import ensure_collection as ensure

    key = _read_key(api_key_file)
    asyncio.run(ensure(url, collection, size, tenant_field, key, recreate=recreate, policy=policy))


@operator_app.command("delete-collection")
def delete_collection(
    url: Annotated[str, typer.Option(help="Qdrant base URL.")],
    collection: Annotated[str, typer.Option(help="Collection name.")],
    api_key_file: Annotated[Path | None, typer.Option(help="File with the API key.")] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            help="The policy going (namespace/name): only its entries are deleted while other "
            "policies' entries remain in the collection."
        ),
    ] = None,
) -> None:
    """Drop a CachePolicy's semantic data (deletionPolicy Delete): the collection, or only the
    policy's entries in a collection other policies share."""
    from thrifty_operator.collection import delete_collection as drop

    asyncio.run(drop(url, collection, _read_key(api_key_file), policy=policy))


@operator_app.command(
    "publish-report", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def publish_report(
    ctx: typer.Context,
    configmap: Annotated[str, typer.Option(help="Report ConfigMap to patch.")],
) -> None:
    """Run the evaluate command after `--` and publish its summary (evaluate Job entry point)."""
    import logging

    from thrifty_operator.report import ApiTarget, run_and_publish

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = list(ctx.args)
    if not command:
        raise typer.BadParameter("give the evaluate command after --")
    raise typer.Exit(run_and_publish(command, configmap, ApiTarget.in_cluster()))


def register(app: typer.Typer) -> None:
    """Attach `thrifty operator` and its subcommands."""
    app.add_typer(operator_app, name="operator")
