"""`thrifty simulator`: the OpenAI-compatible provider simulator (development, tests, demo)."""

from __future__ import annotations

from typing import Annotated

import typer

# The simulator's fault kinds (thrifty_gateway.simulator.settings.FAULT_KINDS, which a test
# compares: imported here, the whole simulator would load for every `thrifty --help`).
FAULTS = (
    "429|500|502|503|timeout|truncate|split-emoji|cut-stream|abort-stream|error-stream|not-json"
)


def register(app: typer.Typer) -> None:
    """Attach `thrifty simulator`."""
    app.command("simulator")(simulator)


def simulator(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Bind port.")] = 9100,
    latency_ms: Annotated[float, typer.Option(help="Latency added to every answer.")] = 0.0,
    jitter_ms: Annotated[float, typer.Option(help="Uniform extra latency 0..jitter.")] = 0.0,
    chunk_delay_ms: Annotated[float, typer.Option(help="Delay between stream chunks.")] = 0.0,
    rate_429: Annotated[float, typer.Option(help="Share of requests answered 429.")] = 0.0,
    rate_500: Annotated[float, typer.Option(help="Share of requests answered 500.")] = 0.0,
    rate_timeout: Annotated[float, typer.Option(help="Share of requests that hang.")] = 0.0,
    rate_truncate: Annotated[
        float, typer.Option(help="Share cut with finish_reason length.")
    ] = 0.0,
    retry_after: Annotated[float, typer.Option(help="Retry-After seconds on 429.")] = 1.0,
    hang_seconds: Annotated[float, typer.Option(help="How long a timeout fault hangs.")] = 30.0,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            help=f"MODEL=KIND: every call to MODEL fails or answers with a flaw ({FAULTS})."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random faults.")] = 0,
    oracle: Annotated[
        str | None, typer.Option(help="Teacher oracle (simulator/oracle_<name>.py).")
    ] = None,
    batch_speedup: Annotated[
        float, typer.Option(help="Batches API: how much faster than real time jobs move.")
    ] = 1.0,
    batch_create_ms: Annotated[
        float, typer.Option(help="Batches API: how long creating a batch takes.")
    ] = 0.0,
    stream_usage: Annotated[
        bool,
        typer.Option(
            help="Honour stream_options.include_usage (--no-stream-usage: no usage in streams, "
            "as some providers)."
        ),
    ] = True,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="THRIFTY_SIMULATOR_API_KEY",
            help="Require this bearer key on /v1 requests (from the environment: keeps it "
            "out of the process list).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the OpenAI-compatible provider simulator (chat, embeddings, models, batches)."""
    from thrifty_core.logging import setup_logging
    from thrifty_gateway.simulator.app import serve
    from thrifty_gateway.simulator.settings import SimulatorSettings

    faults: dict[str, str] = {}
    for item in fault or []:
        model, sep, kind = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected MODEL=KIND, got {item!r}", param_hint="--fault")
        faults[model] = kind
    setup_logging("INFO", "text")
    settings = SimulatorSettings.model_validate(
        {
            "host": host,
            "port": port,
            "latency_ms": latency_ms,
            "jitter_ms": jitter_ms,
            "chunk_delay_ms": chunk_delay_ms,
            "rate_429": rate_429,
            "rate_500": rate_500,
            "rate_timeout": rate_timeout,
            "rate_truncate": rate_truncate,
            "retry_after_seconds": retry_after,
            "hang_seconds": hang_seconds,
            "model_faults": faults,
            "seed": seed,
            "oracle": oracle,
            "batch_speedup": batch_speedup,
            "batch_create_ms": batch_create_ms,
            "stream_usage": stream_usage,
            "api_key": api_key,
        }
    )
    serve(settings)
