"""Simulator settings and per-process state (faults, counters, the teacher oracle)."""

from __future__ import annotations

import importlib
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from .engine import Oracle

# split-emoji: the answer ends with an emoji that a stream sends as two chunks of lone UTF-16
# surrogate escapes (as providers that cut text by UTF-16 code units do); valid JSON that a
# strict UTF-8 parser (orjson) refuses.
# cut-stream: a stream stops half-way without [DONE] (a provider or proxy that closed early);
# abort-stream: the connection is dropped half-way through a stream; error-stream: a 200 stream
# whose first event is an error (an overload reported after the headers); not-json: a 200 whose
# body is an HTML page (a proxy or captive portal in front of the provider).
FaultKind = Literal[
    "429",
    "500",
    "502",
    "503",
    "timeout",
    "truncate",
    "split-emoji",
    "cut-stream",
    "abort-stream",
    "error-stream",
    "not-json",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
)


class SimulatorSettings(BaseModel):
    """How the simulated provider behaves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=9100, ge=0, le=65535)
    latency_ms: float = Field(default=0.0, ge=0, description="Added before every answer.")
    jitter_ms: float = Field(default=0.0, ge=0, description="Uniform extra latency, 0..jitter.")
    chunk_delay_ms: float = Field(default=0.0, ge=0, description="Delay between stream chunks.")
    rate_429: float = Field(default=0.0, ge=0, le=1)
    rate_500: float = Field(default=0.0, ge=0, le=1)
    rate_timeout: float = Field(default=0.0, ge=0, le=1)
    rate_truncate: float = Field(default=0.0, ge=0, le=1)
    retry_after_seconds: float = Field(default=1.0, ge=0, description="Retry-After on 429s.")
    hang_seconds: float = Field(default=30.0, ge=0, description="How long a timeout fault hangs.")
    model_faults: dict[str, FaultKind] = Field(
        default_factory=dict, description="Model name -> fault it always answers with."
    )
    models: tuple[str, ...] = DEFAULT_MODELS
    embedding_dimensions: int = Field(default=1536, ge=8, le=8192)
    seed: int = 0
    oracle: str | None = Field(
        default=None, description="Teacher oracle module suffix: simulator/oracle_<name>.py."
    )
    stream_usage: bool = Field(
        default=True,
        description="Honour stream_options.include_usage (some OpenAI-compatible providers "
        "send no usage in a stream whatever they are asked).",
    )
    batch_speedup: float = Field(
        default=1.0, gt=0, description="Batches API: how much faster than real time jobs move."
    )
    batch_create_ms: float = Field(
        default=0.0,
        ge=0,
        description="Batches API: how long creating a batch takes (the job exists once it "
        "answers, whether or not the caller is still there).",
    )
    api_key: str | None = Field(
        default=None,
        description="When set, /v1 requests need `Authorization: Bearer <api_key>` (401 "
        "invalid_api_key otherwise), as a real provider does.",
    )


def load_oracle(name: str) -> Oracle:
    """Import `thrifty_gateway.simulator.oracle_<name>` and call its `create_oracle()`."""
    module = importlib.import_module(f"thrifty_gateway.simulator.oracle_{name}")
    oracle: Oracle = module.create_oracle()
    return oracle


@dataclass
class SimState:
    """Mutable per-process state of one simulator app."""

    settings: SimulatorSettings
    oracle: Oracle | None = None
    rng: random.Random = field(default_factory=random.Random)
    requests: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)

    def pick_fault(self, model: str, header: str | None) -> str | None:
        """The fault for one request: header, then per-model, then the random ratios."""
        if header in FAULT_KINDS:
            return header
        if model in self.settings.model_faults:
            return self.settings.model_faults[model]
        s = self.settings
        if not (s.rate_429 or s.rate_500 or s.rate_timeout or s.rate_truncate):
            return None
        roll = self.rng.random()
        for kind, rate in (
            ("429", s.rate_429),
            ("500", s.rate_500),
            ("timeout", s.rate_timeout),
            ("truncate", s.rate_truncate),
        ):
            if roll < rate:
                return kind
            roll -= rate
        return None
