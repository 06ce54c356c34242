"""Students as the gateway runs them: `Predictor` answers a chat request with a label (or a
short answer) and a confidence, or None when it cannot.

* `ClassifierPredictor` — in process: the shared sentence embedder + the calibrated head of
  the serving artifact version (`thrifty_core.student.classifier`), run in a worker thread
  so the event loop stays free.
* `EndpointPredictor` — a causal-lm student behind its OpenAI-compatible server (vLLM with
  the LoRA adapter): greedy, `logprobs`, confidence = exp(mean token log-probability). The
  server's API key, when configured (`api_key`, a file the operator mounts), is sent as a
  Bearer token; it is read on first use and again after a 401 (a key that appeared or rotated
  since).

A predictor returns None when the student has no answer to give (an empty input, a label
outside the declared set) and raises `StudentError` when the student itself failed (no
connection, an error status, a body that is not a chat completion): the stage counts the
latter toward the student's breaker. Either way the teacher answers.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from thrifty_core.config import SecretSource
from thrifty_core.embedding import Embedder
from thrifty_core.student.capture import label_index, match_label, student_input
from thrifty_core.student.classifier import ClassifierStudent

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    confidence: float
    version: str
    seconds: float = 0.0


class StudentError(Exception):
    """The student server failed (transport, status or a malformed answer)."""


class Predictor(Protocol):
    version: str
    # digests of the instructions its version was trained under (`instructions_digest`);
    # empty when they are not known (no check)
    instructions: frozenset[str]

    async def predict(self, body: dict[str, Any]) -> Answer | None: ...

    async def aclose(self) -> None: ...


class ClassifierPredictor:
    """The in-process classifier student."""

    def __init__(self, student: ClassifierStudent) -> None:
        self.student = student
        self.version = student.version
        self.instructions = frozenset(student.manifest.instructions)

    @classmethod
    def load(cls, root: Path, embedder: Embedder, pinned: str | None) -> ClassifierPredictor | None:
        student = ClassifierStudent.load(root, embedder, pinned)
        return cls(student) if student is not None else None

    def predict_text(self, text: str) -> Answer:
        (pred,) = self.student.predict([text])
        return Answer(pred.label, pred.confidence, self.version)

    async def predict(self, body: dict[str, Any]) -> Answer | None:
        text = student_input(body.get("messages") or [])
        if not text.strip():
            return None
        return await asyncio.to_thread(self.predict_text, text)

    async def aclose(self) -> None:
        return None


class EndpointPredictor:
    """A causal-lm student behind an OpenAI-compatible server."""

    def __init__(
        self,
        endpoint: str,
        served_model: str,
        *,
        version: str = "",
        labels: list[str] | None = None,
        timeout: float = 2.0,
        max_tokens: int = 64,
        api_key: SecretSource | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = endpoint.rstrip("/") + "/chat/completions"
        # (it reads the whole request, instructions included, and answers within `labels`)
        self.instructions: frozenset[str] = frozenset()
        self.served_model = served_model
        self.version = version or served_model
        self.index = label_index(labels or [])
        self.max_tokens = max_tokens
        self.api_key = api_key
        self._key: str | None = None
        self._key_missing_logged = False
        self.client = client or httpx.AsyncClient(timeout=timeout)

    def _headers(self) -> dict[str, str]:
        """The Authorization header, when a key is configured and readable (a key not there
        yet is sent once it is: the server refuses the call meanwhile, and the teacher
        answers)."""
        if self.api_key is None:
            return {}
        if self._key is None:
            try:
                self._key = self.api_key.read() or None
            except LookupError:
                if not self._key_missing_logged:
                    self._key_missing_logged = True
                    source = self.api_key.file or f"${self.api_key.env}"
                    log.warning("student endpoint key %s cannot be read (yet)", source)
                return {}
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    async def predict(self, body: dict[str, Any]) -> Answer | None:
        payload = {
            "model": self.served_model,
            "messages": body.get("messages") or [],
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "logprobs": True,
        }
        try:
            resp = await self.client.post(self.url, json=payload, headers=self._headers())
        except httpx.HTTPError as exc:
            raise StudentError(f"student endpoint failed: {type(exc).__name__}") from exc
        if resp.status_code == 401:
            self._key = None  # read again next time: the Secret may have been rotated
        if resp.status_code != 200:
            raise StudentError(f"student endpoint answered {resp.status_code}")
        try:
            data = resp.json()
        except ValueError as exc:
            raise StudentError("student endpoint answered a body that is not JSON") from exc
        return self.parse(data)

    def parse(self, data: Any) -> Answer | None:
        """The answer in a chat completion; StudentError when it is not one."""
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content")
            finish = choice.get("finish_reason")
            tokens = (choice.get("logprobs") or {}).get("content") or []
            logps = [float(t["logprob"]) for t in tokens]
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise StudentError("student endpoint answered no chat completion") from exc
        if not isinstance(text, str) or not text.strip() or finish != "stop":
            return None  # an empty, cut or filtered answer is never served
        if self.index:
            label = match_label(text, self.index)
            if label is None:
                return None  # an answer outside the label set is never served
            text = label
        finite = [lp for lp in logps if math.isfinite(lp)]
        confidence = math.exp(sum(finite) / len(finite)) if finite and finite == logps else 0.0
        return Answer(text, confidence, self.version)

    async def aclose(self) -> None:
        await self.client.aclose()
