"""`make demo`: placeholder until the gateway lands."""

import logging


def run() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("thrifty.demo").info(
        "demo: will start the provider simulator and the gateway on embedded defaults, "
        "replay a workload through the openai client and print a savings report."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
