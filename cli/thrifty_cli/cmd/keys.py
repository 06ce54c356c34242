"""`thrifty keys`: gateway API key helpers."""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

import typer

keys_app = typer.Typer(help="Gateway API keys (tenant Secrets hold SHA-256 hashes).")


def register(app: typer.Typer) -> None:
    """Attach `thrifty keys hash|new`."""
    app.add_typer(keys_app, name="keys")


@keys_app.command("hash")
def hash_key(key: Annotated[str, typer.Argument(help="The API key to hash.")]) -> None:
    """Print the SHA-256 hex digest a tenant Secret holds for KEY."""
    typer.echo(hashlib.sha256(key.encode()).hexdigest())


@keys_app.command("new")
def new_key(prefix: Annotated[str, typer.Option(help="Key prefix.")] = "sk-thrifty-") -> None:
    """Print a new random key and its hash (store only the hash in the Secret)."""
    key = prefix + secrets.token_urlsafe(32)
    typer.echo(f"key:  {key}")
    typer.echo(f"hash: {hashlib.sha256(key.encode()).hexdigest()}")
