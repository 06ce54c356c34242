"""`python -m thrifty_gateway --config FILE [--host H] [--port P] [--workers N]`."""

from __future__ import annotations

import argparse

from .server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="thrifty_gateway", description="Thrifty gateway")
    parser.add_argument("--config", required=True, help="Gateway config file (YAML).")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    serve(args.config, host=args.host, port=args.port, workers=args.workers)


if __name__ == "__main__":
    main()
