"""Conditions and status helpers of the operator: pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from thrifty_core.api import DistilledModel
from thrifty_operator.conditions import false, merge, ready, transitions, true
from thrifty_operator.handlers.common import (
    PROBLEM_LIMIT,
    deployment_state,
    job_state,
    pod_problem,
    rollout_reason,
)
from thrifty_operator.handlers.distilledmodel import gate, read_report
from thrifty_operator.report import normalise

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_ready_summarises_the_first_failing_condition() -> None:
    conds = [true("StoreReady", "StoresAvailable"), false("CollectionReady", "Creating", "wait")]
    summary = ready(conds)
    assert (summary.status, summary.reason, summary.message) == ("False", "Creating", "wait")
    assert ready([true("A", "Ok")]).status == "True"


def test_merge_keeps_transition_time_until_status_changes() -> None:
    first = merge([], [false("Available", "Progressing")], 1, T0)
    later = T0 + timedelta(minutes=5)
    same = merge(first, [false("Available", "Progressing", "1/2")], 2, later)
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert same[0]["observedGeneration"] == 2
    flipped = merge(same, [true("Available", "MinimumReplicasAvailable")], 2, later)
    assert flipped[0]["lastTransitionTime"] == "2026-11-27T12:05:00Z"


def test_transitions_report_only_changes() -> None:
    old = merge([], [false("Available", "Progressing")], 1, T0)
    assert transitions(old, [false("Available", "Progressing", "other text")]) == []
    assert [c.reason for c in transitions(old, [true("Available", "Up")])] == ["Up"]


def test_deployment_and_job_state() -> None:
    assert deployment_state(None) == (False, "not created yet")
    obj: dict[str, Any] = {
        "metadata": {"generation": 3},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 3, "updatedReplicas": 2, "availableReplicas": 2},
    }
    assert deployment_state(obj)[0] is True
    # The tail of a rollout: every new replica is up, one old one is still there.
    obj["status"] |= {"replicas": 3, "availableReplicas": 3}
    assert deployment_state(obj) == (
        False,
        "3/2 replicas available, 2 updated, 1 old pending termination",
    )
    obj["status"] |= {"replicas": 2, "availableReplicas": 2}
    assert deployment_state(obj)[0] is True
    obj["status"]["observedGeneration"] = 2
    assert deployment_state(obj)[0] is False
    # Stuck: the controller's own words are passed on (a quota, a rollout out of time).
    obj["status"] |= {
        "observedGeneration": 3,
        "availableReplicas": 0,
        "conditions": [
            {
                "type": "ReplicaFailure",
                "status": "True",
                "message": 'pods "g-1" is forbidden: exceeded quota: compute',
            },
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
        ],
    }
    ok, message = deployment_state(obj)
    assert not ok and message.endswith('; pods "g-1" is forbidden: exceeded quota: compute')
    assert rollout_reason(obj) == "RolloutStuck"
    obj["status"]["conditions"] = []
    assert rollout_reason(obj) == "Progressing" and rollout_reason(None, "X") == "X"
    assert job_state(None) == "Missing"
    assert job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == (
        "Complete"
    )
    assert job_state({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) == "Failed"
    assert job_state({"status": {}}) == "Running"


def test_evaluation_gate_reads_the_report() -> None:
    model = DistilledModel.model_validate(
        {
            "metadata": {"name": "m"},
            "spec": {
                "teacher": {"gatewayRef": {"name": "g"}, "route": "r"},
                "student": {"kind": "classifier"},
                "evaluation": {"minAgreement": 0.9, "minCoverage": 0.5},
            },
        }
    )
    report = read_report({"data": {"report.json": '{"agreement": 0.95, "coverage": 0.6}'}})
    assert report is not None and gate(model, report)[0] is True
    assert gate(model, {"agreement": 0.95, "coverage": 0.4})[0] is False
    assert read_report({"data": {}}) is None
    assert read_report({"data": {"report.json": "not json"}}) is None


def test_report_from_the_evaluate_summary() -> None:
    summary = {
        "version": "v0002",
        "promoted": True,
        "gate": {"passed": True, "min_agreement": 0.9},
        "at_threshold": {"coverage": 0.71, "agreement_with_fallback": 0.95, "threshold": 0.7},
    }
    report = normalise(summary)
    assert report == {
        "version": "v0002",
        "passed": True,
        "agreement": 0.95,
        "coverage": 0.71,
        "examples": 0,
    }
    summary["gate"] = {"passed": False}
    assert normalise(summary)["passed"] is False


def test_a_statefulset_is_ready_once_its_current_spec_has_rolled_out() -> None:
    from thrifty_operator.handlers.common import statefulset_state

    def sts(generation: int, **status: Any) -> dict[str, Any]:
        return {"metadata": {"generation": generation}, "spec": {"replicas": 1}, "status": status}

    done = {"observedGeneration": 2, "readyReplicas": 1, "updatedReplicas": 1}
    revisions = {"currentRevision": "q-2", "updateRevision": "q-2"}
    assert statefulset_state(sts(2, **done, **revisions))[0]
    # The old pod is still ready while the new spec (an API key, say) rolls out: not ready.
    rolling = {**done, "updatedReplicas": 0, "currentRevision": "q-1", "updateRevision": "q-2"}
    assert statefulset_state(sts(2, **rolling)) == (False, "1/1 replicas ready, 0 updated")
    assert not statefulset_state(sts(3, **done, **revisions))[0]  # change not seen yet
    assert statefulset_state(None) == (False, "not created yet")


def policy_body() -> dict[str, Any]:
    """A CachePolicy as kopf hands it to a handler (generation 2, no status yet)."""
    return {
        "apiVersion": "thrifty.dev/v1alpha1",
        "kind": "CachePolicy",
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "generation": 2},
        "status": {},
    }


async def test_an_unexpected_reconcile_failure_is_a_condition_not_a_silent_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A builder that raises something unforeseen (a quantity it cannot read, a bug) leaves a
    `ReconcileError` condition naming it in status and a Warning event; change handlers retry
    later. (Events are recorded here instead of posted: posting needs kopf's running
    operator, which the e2e tests use.)"""
    import kopf

    events: list[tuple[str, str]] = []

    def record(_obj: Any, *, type: str, reason: str, message: str) -> None:
        assert message
        events.append((type, reason))

    monkeypatch.setattr(kopf, "event", record)

    from thrifty_operator.handlers.common import Outcome, run

    body = policy_body()

    async def broken() -> Outcome:
        raise ValueError("not a quantity: '1Xi'")

    for strict in (False, True):
        patch = kopf.Patch()
        if strict:
            with pytest.raises(kopf.TemporaryError):
                await run(body, patch, broken, strict=strict)
        else:
            await run(body, patch, broken, strict=strict)
        (cond,) = [c for c in patch["status"]["conditions"] if c["type"] == "Applied"]
        assert (cond["status"], cond["reason"]) == ("False", "ReconcileError")
        assert "not a quantity" in cond["message"]
    assert ("Warning", "ReconcileError") in events


def test_progress_is_a_normal_event_and_a_failure_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """People alert on Warning events: a rollout, a Job or a store on its way posts Normal
    ones; a stuck rollout, a missing reference, a failed Job Warnings."""
    import kopf

    from thrifty_operator.handlers.common import Outcome, finish

    events: list[tuple[str, str]] = []
    monkeypatch.setattr(
        kopf, "event", lambda _o, *, type, reason, **_: events.append((type, reason))
    )
    body: dict[str, Any] = {"metadata": {"name": "g", "generation": 1}, "status": {}}
    for reason in ("Progressing", "StoresProgressing", "Training", "Evaluating", "Creating"):
        finish(body, {}, Outcome([false("Available", reason, "on its way")]))
    assert events and all(kind == "Normal" for kind, _ in events)
    events.clear()
    for reason in ("RolloutStuck", "MissingReference", "StoresFailing", "GateFailed"):
        finish(body, {}, Outcome([false("Available", reason, "stuck")]))
    assert events and all(kind == "Warning" for kind, _ in events)


async def test_a_reconcile_cut_short_by_the_operators_shutdown_leaves_the_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operator stops (an upgrade, a drained node): kopf leaves timers running while the
    API client closes under them, and they fail (aiohttp's AssertionError, "Session is
    closed"). That is not the resource's failure: its status is left for the next operator
    (every upgrade showed `Ready=False ReconcileError` before); a bad spec is still said."""
    import asyncio

    import kopf

    events: list[tuple[str, str]] = []
    monkeypatch.setattr(
        kopf, "event", lambda _o, *, type, reason, **_: events.append((type, reason))
    )
    from thrifty_operator.handlers.common import InvalidSpec, Outcome, run

    body = policy_body()

    async def closed() -> Outcome:
        raise AssertionError  # (aiohttp: self._connector is not None)

    async def invalid() -> Outcome:
        raise InvalidSpec("threshold above 1")

    stopping = asyncio.Event()
    stopping.set()
    patch = kopf.Patch()
    await run(body, patch, closed, strict=False, stopping=stopping)
    assert "status" not in patch and not events
    with pytest.raises(kopf.TemporaryError):
        await run(body, kopf.Patch(), closed, strict=True, stopping=stopping)
    patch = kopf.Patch()
    await run(body, patch, invalid, strict=False, stopping=stopping)
    (cond,) = [c for c in patch["status"]["conditions"] if c["type"] == "SpecValid"]
    assert cond["reason"] == "InvalidSpec"
    patch = kopf.Patch()
    await run(body, patch, closed, strict=False, stopping=asyncio.Event())  # not stopping
    (cond,) = [c for c in patch["status"]["conditions"] if c["type"] == "Applied"]
    assert cond["reason"] == "ReconcileError"


async def test_the_operators_cleanup_says_it_is_stopping_before_closing_its_client() -> None:
    import kopf

    from thrifty_operator.handlers.common import Context
    from thrifty_operator.main import cleanup

    seen: list[bool] = []

    class Api:
        async def close(self) -> None:
            seen.append(ctx.stopping.is_set())

    ctx = Context(kube=None, defaults=None, settings=None)  # type: ignore[arg-type]
    await cleanup(kopf.Memo(ctx=ctx, api=Api()))
    assert seen == [True]


async def test_ended_jobs_are_run_again_after_the_retry_interval() -> None:
    """A failed evaluate Job (a drained node, an OOM) or one that ended without its report is
    deleted once older than `retrain_after_seconds`, so the next reconcile evaluates again; a
    recent one is left (no retry storm). (The client records deletes: the decision is the
    handler's; the real API server is in the e2e tests.)"""
    from thrifty_operator.handlers.distilledmodel import _retry_after
    from thrifty_operator.settings import OperatorSettings

    class Deletes:
        def __init__(self) -> None:
            self.names: list[str] = []

        async def delete(self, _api: str, _kind: str, _ns: str, name: str) -> bool:
            self.names.append(name)
            return True

    class Ctx:
        kube = Deletes()
        settings = OperatorSettings(retrain_after_seconds=60)

    def ended(kind: str, ago: float) -> dict[str, Any]:
        when = (datetime.now(UTC) - timedelta(seconds=ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "status": {"conditions": [{"type": kind, "status": "True", "lastTransitionTime": when}]}
        }

    ctx: Any = Ctx()
    assert await _retry_after(ended("Failed", 5), "Failed", ctx, "ns", "recent") is False
    assert await _retry_after(ended("Failed", 120), "Failed", ctx, "ns", "failed") is True
    assert await _retry_after(ended("Complete", 120), "Complete", ctx, "ns", "no-report") is True
    assert await _retry_after(ended("Complete", 120), "Failed", ctx, "ns", "succeeded") is False
    assert ctx.kube.names == ["failed", "no-report"]


def _pod(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "default-cache-qdrant-0"}, "status": status}


def test_a_pod_that_waits_for_a_change_says_why() -> None:
    """The kubelet's and the scheduler's reasons that do not pass by themselves, in their own
    words; a pod starting or running says nothing."""
    pulling = {"name": "qdrant", "state": {"waiting": {"reason": "ImagePullBackOff",
               "message": 'Back-off pulling image "mirror/qdrant:v1.13.6"'}}}  # fmt: skip
    assert pod_problem(_pod(containerStatuses=[pulling])) == (
        "pod default-cache-qdrant-0: container qdrant ImagePullBackOff: "
        'Back-off pulling image "mirror/qdrant:v1.13.6"'
    )
    crashing = {
        "name": "qdrant",
        "restartCount": 5,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
    }
    assert pod_problem(_pod(containerStatuses=[crashing])) == (
        "pod default-cache-qdrant-0: container qdrant CrashLoopBackOff "
        "(last exit: OOMKilled, 5 restarts)"
    )
    crashing["lastState"] = {"terminated": {"exitCode": 101}}
    assert "(last exit: code 101, 5 restarts)" in pod_problem(_pod(containerStatuses=[crashing]))
    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/3 nodes are available: 3 Insufficient memory."}  # fmt: skip
    assert pod_problem(_pod(conditions=[unschedulable])) == (
        "pod default-cache-qdrant-0 cannot be scheduled: 0/3 nodes are available: 3 "
        "Insufficient memory."
    )
    init = {"name": "init", "state": {"waiting": {"reason": "CreateContainerConfigError"}}}
    assert "container init CreateContainerConfigError" in pod_problem(
        _pod(initContainerStatuses=[init])
    )
    creating = {"name": "qdrant", "state": {"waiting": {"reason": "ContainerCreating"}}}
    running = {"name": "qdrant", "state": {"running": {}}}
    assert pod_problem(_pod(containerStatuses=[creating])) == ""
    assert pod_problem(_pod(containerStatuses=[running])) == ""
    assert pod_problem(_pod()) == ""
    assert pod_problem(None) == ""
    long = {
        "name": "qdrant",
        "state": {"waiting": {"reason": "ErrImagePull", "message": "x" * 999}},
    }
    assert len(pod_problem(_pod(containerStatuses=[long]))) == PROBLEM_LIMIT


class CredentialsKube:
    """A Secret that exists or not, and the store workload's pod template annotations."""

    def __init__(self, secret_exists: bool, workload: dict[str, str] | None) -> None:
        self.secret_exists = secret_exists
        self.workload = workload  # its template annotations; None: not there
        self.managers: list[str | None] = []

    async def create(self, _manifest: dict[str, Any]) -> bool:
        created = not self.secret_exists
        self.secret_exists = True
        return created

    async def patch_json(
        self, _api: str, _kind: str, _ns: str, _name: str, ops: Any, manager: str | None = None
    ) -> dict[str, Any]:
        from thrifty_operator.apply import KubeError

        if self.workload is None:
            raise KubeError(404, "not found")
        if ops[0]["path"].endswith("/annotations") is False and not self.workload:
            raise KubeError(422, "the annotations do not exist")
        self.workload[ops[-1]["path"].rsplit("/", 1)[1].replace("~1", "/")] = ops[-1]["value"]
        self.managers.append(manager)
        return {}


async def test_a_regenerated_store_password_restarts_the_store() -> None:
    """Its Secret deleted, the Redis password is generated again, and the Redis that read the
    old one from its environment at start is restarted (its clients read the new one and were
    refused until someone restarted it); with the Secret there, nothing happens."""
    from thrifty_operator.builders.common import Owner
    from thrifty_operator.handlers.common import (
        CREDENTIALS_ANNOTATION,
        CREDENTIALS_MANAGER,
        ensure_qdrant_key,
        ensure_redis_password,
    )

    owner = Owner(api_version="thrifty.dev/v1alpha1", kind="CachePolicy", name="c",
                  namespace="ns", uid="u")  # fmt: skip
    kept = CredentialsKube(secret_exists=True, workload={})
    await ensure_redis_password(kept, owner)  # type: ignore[arg-type]
    assert kept.workload == {}
    again = CredentialsKube(secret_exists=False, workload={})
    await ensure_redis_password(again, owner)  # type: ignore[arg-type]
    assert again.workload is not None and CREDENTIALS_ANNOTATION in again.workload
    assert again.managers == [CREDENTIALS_MANAGER]  # (the operator's own applies keep it)
    annotated = CredentialsKube(secret_exists=False, workload={"other": "x"})
    await ensure_qdrant_key(annotated, owner)  # type: ignore[arg-type]
    assert annotated.workload is not None and CREDENTIALS_ANNOTATION in annotated.workload
    first = CredentialsKube(secret_exists=False, workload=None)  # a new store: nothing to roll
    await ensure_redis_password(first, owner)  # type: ignore[arg-type]
    assert first.managers == []
