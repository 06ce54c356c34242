"""The CachePolicy collection finalizer's decisions: it never holds a policy (and so its
namespace) forever."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import kopf
import pytest

from thrifty_operator.apply import KubeError
from thrifty_operator.handlers.cachepolicy import collection_delete_step, deleted_at
from thrifty_operator.settings import OperatorSettings, configure_kopf

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TIMEOUT = 600.0
TERMINATING = KubeError(
    403,
    'jobs.batch "p-collection-delete" is forbidden: unable to create new content in namespace '
    "ns because it is being terminated",
)


def step(
    state: str | None = None, error: KubeError | None = None, after_s: float = 10.0
) -> tuple[bool, str, str]:
    got = collection_delete_step(
        "thrifty-ns-p", state, error, T0, T0 + timedelta(seconds=after_s), TIMEOUT
    )
    return got.release, got.reason, got.message


def test_a_completed_job_releases_quietly() -> None:
    assert step("Complete") == (True, "", "")


def test_a_failed_job_releases_with_a_warning() -> None:
    release, reason, message = step("Failed")
    assert (release, reason) == (True, "CollectionNotDeleted")
    assert "thrifty-ns-p" in message


@pytest.mark.parametrize("status", [403, 404, 422])
def test_a_refusal_that_retrying_cannot_fix_releases_at_once(status: int) -> None:
    error = TERMINATING if status == 403 else KubeError(status, "no")
    release, reason, message = step(error=error, after_s=0)
    assert (release, reason) == (True, "CollectionDeleteRefused")
    assert "may remain" in message and str(status) in message


@pytest.mark.parametrize("state", ["Running", "Missing"])
def test_an_unfinished_job_is_waited_for_until_the_deadline(state: str) -> None:
    assert step(state, after_s=TIMEOUT - 1)[0] is False
    release, reason, message = step(state, after_s=TIMEOUT)
    assert (release, reason) == (True, "CollectionDeleteTimedOut")
    assert "may remain" in message and "600s" in message


@pytest.mark.parametrize("status", [0, 409, 429, 500, 503])
def test_a_transient_api_fault_is_retried_until_the_deadline(status: int) -> None:
    error = KubeError(status, "busy")
    release, _, message = step(error=error, after_s=1)
    assert release is False and str(status) in message
    assert step(error=error, after_s=TIMEOUT + 1)[:2] == (True, "CollectionDeleteTimedOut")


def test_the_deadline_counts_from_the_deletion_timestamp() -> None:
    body = {"metadata": {"name": "p", "deletionTimestamp": "2026-11-27T12:00:00Z"}}
    assert deleted_at(body) == T0
    assert deleted_at({"metadata": {"name": "p"}}) is None
    assert deleted_at({"metadata": {"deletionTimestamp": "garbage"}}) is None
    # Not being deleted (no timestamp): no deadline to enforce, keep waiting.
    got = collection_delete_step("c", "Running", None, None, T0 + timedelta(days=1), TIMEOUT)
    assert got.release is False


def test_the_deadline_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OperatorSettings().collection_delete_timeout_seconds == 600.0
    monkeypatch.setenv("THRIFTY_OPERATOR_COLLECTION_DELETE_TIMEOUT_SECONDS", "30")
    assert OperatorSettings().collection_delete_timeout_seconds == 30.0


def test_namespaced_operators_keep_watching_a_terminating_namespace() -> None:
    """kopf drops a namespace marked for deletion from its watch before the finalizers of the
    objects in it ran (nolar/kopf#1088); exact namespaces need no scanning, so it is off."""
    namespaced, clusterwide = kopf.OperatorSettings(), kopf.OperatorSettings()
    configure_kopf(namespaced, namespaced=True)
    configure_kopf(clusterwide, namespaced=False)
    assert namespaced.scanning.disabled is True
    assert clusterwide.scanning.disabled is False  # it still notices CRDs installed later
    assert namespaced.persistence.finalizer == "thrifty.dev/finalizer"


async def test_an_operator_back_long_after_the_deletion_still_waits_for_its_job() -> None:
    """The operator was down when the policy was deleted (the README says: reinstall it and let
    it finish). Back an hour later it makes the delete Job: the deadline counts from the Job,
    so the policy is not let go at once with the collection still in place."""
    from pathlib import Path
    from typing import Any

    import yaml

    from thrifty_operator.builders.defaults import Defaults
    from thrifty_operator.handlers.cachepolicy import delete_collection
    from thrifty_operator.handlers.common import Context

    root = Path(__file__).resolve().parents[2]
    body: dict[str, Any] = yaml.safe_load((root / "examples" / "cachepolicy.yaml").read_text())
    body["spec"]["deletionPolicy"] = "Delete"
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    body["metadata"].update(
        namespace="shop", uid="uid-1", deletionTimestamp=an_hour_ago.isoformat()
    )

    class Kube:
        def __init__(self) -> None:
            self.jobs: dict[str, dict[str, Any]] = {}

        async def get(self, *where: str) -> dict[str, Any] | None:
            return self.jobs.get(where[-1])  # (apiVersion, kind, namespace, name)

        async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
            made = {**manifest, "status": {}}
            made["metadata"] = {
                **manifest["metadata"],
                "creationTimestamp": datetime.now(UTC).isoformat(),
            }
            self.jobs[manifest["metadata"]["name"]] = made
            return made

    kube = Kube()
    ctx = Context(kube, Defaults(), OperatorSettings())  # type: ignore[arg-type]
    with pytest.raises(kopf.TemporaryError, match="waiting for the collection"):
        await delete_collection(body, ctx)
    assert len(kube.jobs) == 1
    with pytest.raises(kopf.TemporaryError):  # and on the next try, following that Job
        await delete_collection(body, ctx)
