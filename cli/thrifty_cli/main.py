"""`thrifty` CLI. Component commands import their component lazily, so that an image with only
one extra installed (the operator's, say) can still run its own subcommand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from thrifty_core import __version__
from thrifty_core.crdgen import check_all, write_all

from . import commands

app = typer.Typer(
    name="thrifty",
    help="Thrifty: make LLM API traffic cheaper without making it worse.",
    no_args_is_help=True,
    add_completion=False,
)
crds_app = typer.Typer(help="CustomResourceDefinitions generated from the API types.")
app.add_typer(crds_app, name="crds")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"thrifty {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Thrifty command line."""
    del version


@crds_app.command("generate")
def crds_generate(
    directory: Annotated[Path, typer.Option("--dir", help="Where the CRD files live.")] = Path(
        "crds"
    ),
    check: Annotated[
        bool, typer.Option("--check", help="Exit non-zero when files differ.")
    ] = False,
) -> None:
    """Write crds/thrifty.dev_<plural>.yaml from the API types (or check them)."""
    if check:
        drift = check_all(directory)
        if drift:
            typer.echo(
                "CRDs differ from the API types: " + ", ".join(drift) + " "
                "(run `thrifty crds generate`)",
                err=True,
            )
            raise typer.Exit(1)
        typer.echo("CRDs are up to date")
        return
    for path in write_all(directory):
        typer.echo(f"wrote {path}")


commands.register(app)
