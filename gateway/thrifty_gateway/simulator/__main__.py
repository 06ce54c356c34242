"""`python -m thrifty_gateway.simulator`: the same as `thrifty simulator` with defaults."""

from thrifty_core.logging import setup_logging

from .app import serve
from .settings import SimulatorSettings

setup_logging("INFO", "text")
serve(SimulatorSettings())
