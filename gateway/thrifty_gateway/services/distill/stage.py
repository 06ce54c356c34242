"""The distill stage: route a student's requests to it, fall back to the teacher when it is
unsure, capture teacher answers, and keep measuring agreement (see the package docstring)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from thrifty_core.config import StudentConfig
from thrifty_core.prices import Usage
from thrifty_core.student.capture import answer_text, instructions_digest
from thrifty_core.student.redact import redact

from ...state import GatewayState
from ..ledger import Entry
from ..pipeline import Outcome, RequestContext, StageResponse, Target
from ..proxy import estimate_usage
from ..resilience import CircuitBreaker, call_with_fallback
from ..sse import usage_object, usage_of
from .agreement import AgreementTracker, same_answer
from .capture import CaptureSink
from .demotions import DemotionStore
from .metrics import DistillMetrics
from .predictors import Answer, Predictor

log = logging.getLogger(__name__)

SERVED_BY = "x-thrifty-served-by"
EVAL_TENANT = "thrifty:distill-evaluation"


@dataclass
class StudentRoute:
    """One student and what the stage tracks about it."""

    config: StudentConfig
    predictor: Predictor | None
    capture: CaptureSink | None
    tracker: AgreementTracker
    demoted: bool = False
    demoted_reason: str = ""
    prompt_ratio: float = 1.0  # teacher-reported / estimated prompt tokens (moving average)
    completion_ratio: float = 1.0
    served: dict[str, int] = field(default_factory=dict)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> str:
        return self.predictor.version if self.predictor else ""

    def count(self, reason: str) -> None:
        self.served[reason] = self.served.get(reason, 0) + 1

    def status(self) -> dict[str, Any]:
        return {
            "student": self.name,
            "route": self.config.route,
            "kind": self.config.kind,
            "mode": self.config.mode,
            "version": self.version,
            "demoted": self.demoted,
            "demoted_reason": self.demoted_reason,
            "agreement": self.tracker.rate,
            "comparisons": self.tracker.total,
            "served": dict(self.served),
            "captured": self.capture.written if self.capture else 0,
        }


def canary_bucket(request_id: str) -> int:
    """0..99, stable per request id."""
    return zlib.crc32(request_id.encode()) % 100


STUDENT_ROLES = frozenset({"system", "developer", "user"})


def eligible(body: dict[str, Any]) -> bool:
    """Students answer what they were trained on: one plain text question (system or
    developer instructions and one user turn, text only), one choice, no tools, no structured
    output, no log-probabilities asked for. Everything else goes to the teacher."""
    n = body.get("n")
    if body.get("tools") or body.get("functions") or (n is not None and n != 1):
        return False
    if body.get("logprobs") or body.get("top_logprobs"):
        return False
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") in (None, "text")):
        return False
    messages = body.get("messages") or []
    users = 0
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in STUDENT_ROLES:
            return False  # an assistant or tool turn: a conversation, not one question
        users += message.get("role") == "user"
        content = message.get("content")
        if isinstance(content, list) and not all(
            isinstance(part, dict) and part.get("type") == "text" for part in content
        ):
            return False  # images, audio, files
    return users == 1


def familiar(instructions: frozenset[str], body: dict[str, Any]) -> bool:
    """The request's instructions are among those the student was trained under (it reads
    the user turn alone: under other instructions, "translate this" or another label list,
    its label is no answer), as captured: redacted by default, or not (a route that opted
    out). True when they are not known (versions trained before they were recorded)."""
    if not instructions:
        return True
    messages = body.get("messages") or []
    return (
        instructions_digest(messages) in instructions
        or instructions_digest(messages, redact) in instructions
    )


def fits(body: dict[str, Any], text: str, completion_tokens: int) -> bool:
    """The teacher could have given this answer whole: none of the request's stop sequences
    is in it and it is within the request's token limit (a cut answer ends `length`, which a
    student never serves)."""
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    if any(isinstance(s, str) and s and s in text for s in stops):
        return False
    limits = (body.get("max_completion_tokens"), body.get("max_tokens"))
    limit = next((n for n in limits if n is not None), None)  # (one may be sent as null)
    return not (isinstance(limit, int) and completion_tokens > limit)


def finished(completion: dict[str, Any] | None) -> bool:
    """The first choice ended on its own (`finish_reason: stop`)."""
    choices = (completion or {}).get("choices") or []
    return (
        bool(choices) and isinstance(choices[0], dict) and choices[0].get("finish_reason") == "stop"
    )


def teacher_complete(
    targets: Sequence[Target], model: str, completion: dict[str, Any] | None
) -> bool:
    """The teacher's own complete answer: the route's first target answered (not a fallback
    model, not a cheaper tier) and the answer ended on its own (not cut by max_tokens, not
    filtered)."""
    return bool(targets) and model == targets[0].model and finished(completion)


def student_completion(
    ctx: RequestContext, answer: Answer, usage: Usage, student: str
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-student-{ctx.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": ctx.route.name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage_object(usage),
        "system_fingerprint": f"thrifty-student-{student}-{answer.version}",
    }


class DistillStage:
    """Student routing, confidence fallback, capture and continuous evaluation."""

    name = "distill"

    def __init__(
        self,
        students: dict[str, StudentRoute],
        state: GatewayState,
        metrics: DistillMetrics,
        *,
        rand: Callable[[], float] = random.random,
        demotions: DemotionStore | None = None,
    ) -> None:
        self.students = students
        self.state = state
        self.metrics = metrics
        self.rand = rand
        self.demotions = demotions  # shared with the gateway's other replicas (None: not)
        self.tasks: set[asyncio.Task[None]] = set()

    # -- before the provider ----------------------------------------------------------------

    async def before_upstream(self, ctx: RequestContext) -> StageResponse | None:
        sr = self.students.get(ctx.route.name)
        if sr is None or ctx.endpoint != "chat":
            return None
        st: dict[str, Any] = {"student": sr}
        ctx.state[self.name] = st
        if sr.capture is not None and sr.capture.wants(ctx.headers, ctx.tenant_name):
            st["capture"] = True
            extra = sr.capture.logprobs_request(ctx.body)
            if extra:  # upstream only: not in ctx.body (the cache key), nulled for the client
                ctx.upstream_extra.update(extra)
                ctx.hidden_choice_fields.add("logprobs")
        cfg = sr.config
        reason = self._teacher_reason(ctx, sr)
        if reason is not None:
            self._teacher(ctx, sr, reason)
            return None
        if cfg.mode == "shadow":
            # Measured after the response (`_shadow`): a shadow student never adds latency.
            st["shadow"] = True
            self._teacher(ctx, sr, "shadow")
            return None
        answer, seconds, failed = await self._predict(sr, ctx.body)
        if answer is None or answer.confidence < cfg.confidence_threshold:
            self._decline(ctx, sr, seconds, "student_error" if failed else "low_confidence")
            return None
        usage = self._teacher_usage(ctx, sr, answer)
        if not fits(ctx.body, answer.text, usage.completion_tokens):
            self._decline(ctx, sr, seconds, "answer_limits")
            return None
        if cfg.evaluation_sample_rate and self.rand() < cfg.evaluation_sample_rate:
            st["evaluate"] = answer
        return self._student(ctx, sr, answer, usage, seconds)

    async def _predict(
        self, sr: StudentRoute, body: dict[str, Any]
    ) -> tuple[Answer | None, float, bool]:
        """(answer or None, seconds, whether the student failed). Any failure of the student
        (an error, a malformed answer, no answer within `timeout_seconds`) means the teacher
        answers; failures in a row open the student's breaker (see `_teacher_reason`)."""
        assert sr.predictor is not None
        started = time.perf_counter()
        try:
            answer = await asyncio.wait_for(sr.predictor.predict(body), sr.config.timeout_seconds)
        except Exception as exc:  # whatever the student did, the teacher answers
            seconds = time.perf_counter() - started
            sr.breaker.failure()
            self.metrics.failures.labels(sr.name, type(exc).__name__).inc()
            log.warning("student %s failed (%s); the teacher answers", sr.name, type(exc).__name__)
            return None, seconds, True
        seconds = time.perf_counter() - started
        sr.breaker.success()
        self.metrics.latency.labels(sr.name).observe(seconds)
        return answer, seconds, False

    def _teacher_reason(self, ctx: RequestContext, sr: StudentRoute) -> str | None:
        if sr.predictor is None:
            return "no_student"
        if sr.demoted:
            return "demoted"
        if not eligible(ctx.body):
            return "ineligible"
        if not familiar(sr.predictor.instructions, ctx.body):
            return "unfamiliar_instructions"
        if sr.config.mode == "canary" and canary_bucket(ctx.request_id) >= sr.config.canary_percent:
            return "canary"
        if sr.config.mode != "shadow" and not sr.breaker.allow():
            return "student_unavailable"
        return None

    def _decline(self, ctx: RequestContext, sr: StudentRoute, seconds: float, reason: str) -> None:
        """The student ran and the teacher answers: its inference was paid for all the same
        (a loss of the distill lever on this request)."""
        ctx.spend("distill", sr.config.cost_per_hour * seconds / 3600)
        self._teacher(ctx, sr, reason)

    def _teacher(self, ctx: RequestContext, sr: StudentRoute, reason: str) -> None:
        ctx.response_headers[SERVED_BY] = "teacher"
        sr.count(reason)
        self.metrics.requests.labels(sr.name, "teacher", reason).inc()

    @staticmethod
    def _teacher_usage(ctx: RequestContext, sr: StudentRoute, answer: Answer) -> Usage:
        """The tokens the teacher would have counted for this answer (estimated, scaled by
        what the teacher reported on the route)."""
        usage = estimate_usage(ctx.body, {"choices": [{"message": {"content": answer.text}}]})
        return Usage(
            prompt_tokens=round(usage.prompt_tokens * sr.prompt_ratio),
            completion_tokens=max(1, round(usage.completion_tokens * sr.completion_ratio)),
        )

    def _student(
        self,
        ctx: RequestContext,
        sr: StudentRoute,
        answer: Answer,
        teacher_usage: Usage,
        seconds: float,
    ) -> StageResponse:
        cfg = sr.config
        cost = cfg.cost_per_hour * seconds / 3600
        saved = max(ctx.baseline_cost(teacher_usage) - cost, 0.0)
        sr.count("confident")
        self.metrics.requests.labels(sr.name, "student", "confident").inc()
        return StageResponse(
            lever="distill",
            body=student_completion(ctx, answer, teacher_usage, sr.name),
            usage=teacher_usage,
            model=f"student:{sr.name}",
            served_by=f"student:{sr.name}@{answer.version}",
            cost_usd=cost,
            saved_usd=saved,
            headers={
                SERVED_BY: "student",
                "x-thrifty-student-version": answer.version,
                "x-thrifty-student-confidence": f"{answer.confidence:.4f}",
            },
        )

    # -- after the response -----------------------------------------------------------------

    async def after_upstream(self, ctx: RequestContext, outcome: Outcome) -> None:
        st = ctx.state.get(self.name)
        if not st:
            return
        sr: StudentRoute = st["student"]
        if outcome.from_stage:
            if outcome.lever == "distill" and "evaluate" in st:
                self._spawn(self._evaluate(ctx, sr, st["evaluate"]))
            return
        if outcome.status != 200 or outcome.body is None:
            return
        teacher = answer_text(outcome.body)
        self._learn_ratios(ctx, sr, outcome)
        if st.get("shadow") and teacher and finished(outcome.body):
            self._spawn(self._shadow(ctx, sr, teacher))
        if (
            st.get("capture")
            and sr.capture is not None
            and eligible(ctx.body)
            and self._teacher_answered(ctx, outcome)
        ):
            await self._capture(ctx, sr, outcome, "teacher")

    def _teacher_answered(self, ctx: RequestContext, outcome: Outcome) -> bool:
        """Training data is the teacher's own complete answer (see `teacher_complete`)."""
        route = self.state.routes.get(ctx.route.name)
        completion = outcome.upstream_body or outcome.body
        return route is not None and teacher_complete(route.targets, outcome.model, completion)

    def _book(self, route: str, model: str, usage: Usage, cost: float) -> None:
        """Money the distill lever spent on a request it did not answer (a shadow prediction,
        an evaluation call): booked on the gateway's evaluation account, not the tenant's."""
        self.state.ledger.record(
            Entry(EVAL_TENANT, route, model, usage, cost, {"distill": -cost}, lever=None)
        )

    async def _shadow(self, ctx: RequestContext, sr: StudentRoute, teacher: str) -> None:
        """A shadow student's prediction, after the teacher's answer was sent, compared with
        it; its inference cost is the distill lever's (as for evaluation calls)."""
        if not sr.breaker.allow():
            return
        answer, seconds, _ = await self._predict(sr, ctx.body)
        cost = sr.config.cost_per_hour * seconds / 3600
        if cost > 0:
            self._book(ctx.route.name, f"student:{sr.name}", Usage(), cost)
        if answer is not None and answer.confidence >= sr.config.confidence_threshold:
            self._compare(sr, answer.text, teacher)

    def _learn_ratios(self, ctx: RequestContext, sr: StudentRoute, outcome: Outcome) -> None:
        estimate = estimate_usage(ctx.body, outcome.body)
        actual = outcome.usage
        if estimate.prompt_tokens and actual.prompt_tokens:
            ratio = actual.prompt_tokens / estimate.prompt_tokens
            sr.prompt_ratio += 0.05 * (ratio - sr.prompt_ratio)
        if estimate.completion_tokens and actual.completion_tokens:
            ratio = actual.completion_tokens / estimate.completion_tokens
            sr.completion_ratio += 0.05 * (ratio - sr.completion_ratio)

    async def _capture(
        self, ctx: RequestContext, sr: StudentRoute, outcome: Outcome, source: str
    ) -> None:
        assert sr.capture is not None
        try:
            written = await sr.capture.record(
                request_id=ctx.request_id,
                ts=time.time(),
                tenant=ctx.tenant_name,
                model=outcome.model,
                messages=list(ctx.body.get("messages") or []),
                completion=outcome.body if outcome.upstream_body is None else outcome.upstream_body,
                prompt_tokens=outcome.usage.prompt_tokens,
                completion_tokens=outcome.usage.completion_tokens,
                cost_usd=outcome.cost_usd,
                source="evaluation" if source == "evaluation" else "teacher",
            )
        except OSError as exc:
            log.warning("capture for %s failed: %s", sr.name, type(exc).__name__)
            return
        if written:
            self.metrics.captured.labels(sr.name, source).inc()

    def _compare(self, sr: StudentRoute, student: str, teacher: str) -> None:
        agreed = same_answer(student, teacher)
        sr.tracker.add(agreed)
        self.metrics.comparisons.labels(sr.name, "agree" if agreed else "disagree").inc()
        rate = sr.tracker.rate
        if rate is not None:
            self.metrics.agreement.labels(sr.name).set(rate)
        if sr.config.mode != "shadow" and not sr.demoted and sr.tracker.below_gate:
            self.demote(sr, f"agreement {rate:.3f} fell below {sr.tracker.min_agreement:.3f}")

    def demote(self, sr: StudentRoute, reason: str, *, share: bool = True) -> None:
        """Route the student's traffic back to the teacher until a new version arrives (on
        every replica: the demotion is shared, see demotions.py)."""
        sr.demoted = True
        sr.demoted_reason = reason
        self.metrics.demoted.labels(sr.name).set(1)
        log.warning("student %s version %s demoted: %s", sr.name, sr.version, reason)
        if share and self.demotions is not None and sr.version:
            self._spawn(self.demotions.mark(sr.name, sr.version, reason))

    async def sync_demotions(self) -> None:
        """Demote here what another replica (or this one before a restart) demoted."""
        if self.demotions is None:
            return
        for sr in self.students.values():
            if sr.demoted or sr.predictor is None or not sr.version:
                continue
            reason = await self.demotions.reason(sr.name, sr.version)
            if reason is not None:
                self.demote(sr, f"{reason} (shared)", share=False)

    async def _evaluate(self, ctx: RequestContext, sr: StudentRoute, answer: Answer) -> None:
        """Ask the teacher too (after the response was sent) and compare."""
        state = self.state
        route = state.routes[ctx.route.name]
        body = {k: v for k, v in ctx.body.items() if k not in ("stream", "stream_options")}
        capture = sr.capture is not None and sr.capture.wants(ctx.headers, ctx.tenant_name)
        if capture and sr.capture is not None:
            body.update(sr.capture.logprobs_request(ctx.body))  # never reaches the client
        try:
            attempt = await call_with_fallback(
                state.upstream,
                state.breakers,
                list(route.targets),
                "chat/completions",
                lambda target: orjson.dumps({**body, "model": target.model}),
                route.timeouts,
                stream=False,
                max_retries=0,
                retry_budget=route.config.retry_budget_seconds,
            )
            completion = orjson.loads(attempt.response.body)
        except Exception as exc:  # evaluation must never break serving
            log.info("evaluation call for %s failed: %s", sr.name, type(exc).__name__)
            return
        usage = usage_of(completion) or estimate_usage(ctx.body, completion)
        model = attempt.target.model
        cost = state.catalog.cost(model, usage, provider=attempt.target.provider)
        # A cost of the distill lever: without Thrifty this call would not have been made.
        self._book(ctx.route.name, model, usage, cost)
        teacher = answer_text(completion)
        if teacher is None or not teacher_complete(route.targets, model, completion):
            return  # a fallback model's or a cut answer says nothing about the teacher
        self._compare(sr, answer.text, teacher)
        if capture:
            outcome = Outcome(200, completion, usage, model, attempt.target.label, cost)
            await self._capture(ctx, sr, outcome, "evaluation")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- lifecycle --------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        return [sr.status() for sr in self.students.values()]

    async def aclose(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for sr in self.students.values():
            if sr.predictor is not None:
                await sr.predictor.aclose()
