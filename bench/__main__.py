"""`python -m bench [NAME ...]`: run every `bench/bench_*.py` (or the named ones) and print
one JSON object {name: result}. Results are recorded by hand in bench/RESULTS.md."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any


def discover() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(p.stem.removeprefix("bench_") for p in here.glob("bench_*.py"))


def run(names: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        try:
            results[name] = module.main()
        except Exception as exc:  # one failing bench must not hide the others' results
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


def main(argv: list[str]) -> int:
    names = argv or discover()
    unknown = sorted(set(names) - set(discover()))
    if unknown:
        print(
            f"unknown benches: {', '.join(unknown)}; known: {', '.join(discover())}",
            file=sys.stderr,
        )
        return 2
    results = run(names)
    print(json.dumps(results, indent=2, sort_keys=True))
    return 1 if any(isinstance(r, dict) and "error" in r for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
