"""Run the gateway with uvicorn (uvloop + httptools), one or several worker processes."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from thrifty_core.config import load_config, parse_config
from thrifty_core.logging import setup_logging

CONFIG_ENV = "THRIFTY_GATEWAY_CONFIG"


def app_from_env() -> FastAPI:
    """App factory for uvicorn workers: reads the config path from THRIFTY_GATEWAY_CONFIG."""
    from .app import create_app

    config = load_config(os.environ[CONFIG_ENV])
    setup_logging(config.server.log_level, config.server.log_format)
    return create_app(config)


def serve(
    config_path: str | Path,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
) -> None:
    """Load the config, set up logging and serve until interrupted."""
    import uvicorn

    config = load_config(config_path)
    if workers is not None:  # checked like a config that says so (shared stores)
        data = config.model_dump(mode="json", by_alias=True)
        data["server"]["workers"] = workers
        config = parse_config(data)
    setup_logging(config.server.log_level, config.server.log_format)
    os.environ[CONFIG_ENV] = str(Path(config_path).resolve())
    uvicorn.run(
        "thrifty_gateway.server:app_from_env",
        factory=True,
        host=host or config.server.host,
        port=config.server.port if port is None else port,
        workers=config.server.workers,
        loop="uvloop",
        http="httptools",
        access_log=config.server.access_log,
        log_config=None,
        lifespan="on",
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=10,
    )
