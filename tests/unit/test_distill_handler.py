"""The DistilledModel handler's decisions, against an in-memory API server (the real one is in
the e2e tests): which Jobs it creates and deletes, which report it trusts, what it serves."""

from __future__ import annotations

import json
from copy import deepcopy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tests.unit.fake_kube import FakeKube as BaseKube
from thrifty_core.api import DistilledModel
from thrifty_operator.builders import distill, names
from thrifty_operator.builders.defaults import Defaults
from thrifty_operator.handlers import distilledmodel
from thrifty_operator.handlers.common import Context
from thrifty_operator.handlers.indexes import GATEWAYS, Indexes
from thrifty_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
NS = "shop"


class FakeKube(BaseKube):
    """Apply keeps what another writer put in a ConfigMap's data (as server-side apply keeps
    fields other managers own) unless it sets those keys, and a Job's status."""

    def merged(
        self, old: dict[str, Any] | None, manifest: dict[str, Any], manager: str
    ) -> dict[str, Any]:
        del manager  # one writer's fields are not told apart from another's here
        old = old or {}
        new = deepcopy(manifest)
        if "data" in old or "data" in new:
            new["data"] = {**old.get("data", {}), **new.get("data", {})}
        if "status" in old:
            new["status"] = old["status"]
        return new

    def finish(self, name: str, condition: str = "Complete", reason: str = "") -> None:
        cond = {
            "type": condition,
            "status": "True",
            "reason": reason,
            "message": "",
            "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        self.objects[("Job", name)]["status"] = {"conditions": [cond]}

    def report(self, evaluation: str, **report: Any) -> None:
        cm = self.objects[("ConfigMap", names.eval_report("banking-intent", evaluation))]
        cm.setdefault("data", {})[distill.REPORT_KEY] = json.dumps(report)


def body(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "distilledmodel.yaml").read_text())
    out["metadata"].update(namespace=NS, uid="uid-dm", generation=1)
    for path, value in changes.items():
        section, field = path.split("__")
        out["spec"].setdefault(section, {})[field] = value
    return out


def gateway() -> dict[str, Any]:
    return {
        "kind": "LLMGateway",
        "metadata": {"name": "thrifty", "namespace": NS},
        "spec": {"routes": [{"name": "gpt-4o-mini"}]},
    }


class Cluster:
    """The operator's view of one DistilledModel: its body (status carried over) and the API."""

    def __init__(self, **changes: Any) -> None:
        self.kube = FakeKube()
        self.body = body(**changes)
        self.status: dict[str, Any] = {}
        self.ctx: Any = Context(self.kube, Defaults(), OperatorSettings())  # type: ignore[arg-type]
        self.ix = Indexes({}, {("LLMGateway", NS, "thrifty"): gateway()})

    def edit(self, **changes: Any) -> None:
        self.body = body(**changes)

    async def reconcile(self) -> dict[str, dict[str, Any]]:
        outcome = await distilledmodel.reconcile(
            {**self.body, "status": self.status}, self.ix, self.ctx
        )
        self.status = {**self.status, **outcome.fields}
        return {c.type: {"reason": c.reason, "message": c.message} for c in outcome.conditions}

    @property
    def model(self) -> DistilledModel:
        return DistilledModel.model_validate(self.body)

    @property
    def run(self) -> str:
        return distill.candidate_version(self.model)

    @property
    def evaluation(self) -> str:
        return distill.evaluation_run(self.model, self.run)

    def jobs(self) -> set[str]:
        return {name for kind, name in self.kube.objects if kind == "Job"}

    async def passed(self, agreement: float = 0.95, coverage: float = 0.8) -> None:
        """Train and evaluate the current spec's run; its report passes the example's gate."""
        await self.reconcile()
        self.kube.finish(names.train_job("banking-intent", self.run))
        await self.reconcile()
        self.kube.finish(names.eval_job("banking-intent", self.evaluation))
        self.kube.report(
            self.evaluation,
            version=self.run,
            passed=agreement >= 0.9 and coverage >= 0.7,
            agreement=agreement,
            coverage=coverage,
            examples=2500,
        )
        await self.reconcile()


async def test_a_spec_edit_during_training_deletes_the_earlier_runs_jobs() -> None:
    """Run A's Job would go on training (and evaluating) a version nobody asked for, into the
    directory and snapshot run B reads: it is deleted when B starts."""
    c = Cluster()
    await c.reconcile()
    run_a = c.run
    assert c.jobs() == {names.train_job("banking-intent", run_a)}
    c.edit(training__epochs=7)
    await c.reconcile()
    assert c.run != run_a
    assert c.jobs() == {names.train_job("banking-intent", c.run)}
    assert ("Job", names.train_job("banking-intent", run_a)) in c.kube.deleted
    assert c.status["jobs"][0] == names.train_job("banking-intent", c.run)


async def test_finished_jobs_removed_by_their_ttl_are_not_run_again() -> None:
    c = Cluster()
    await c.passed()
    assert c.status["activeVersion"] == c.run
    assert c.status["candidateVersion"] == c.run
    for name in c.jobs():  # the TTL controller removed both Jobs; the report stays
        del c.kube.objects[("Job", name)]
    conds = await c.reconcile()
    assert c.jobs() == set()
    assert conds["Trained"]["reason"] == "TrainingSucceeded"
    assert conds["Evaluated"]["reason"] == "GatePassed"
    assert c.status["activeVersion"] == c.run


async def test_a_lower_gate_evaluates_again_instead_of_keeping_the_old_verdict() -> None:
    """minAgreement 0.95 -> 0.9 with a measured 0.93: the first report failed; the new gate
    is a new evaluation (not retraining), whose own report decides."""
    c = Cluster(evaluation__minAgreement=0.95)
    await c.passed(agreement=0.93)
    assert c.status["activeVersion"] == ""
    first, run = c.evaluation, c.run
    c.edit(evaluation__minAgreement=0.9)
    conds = await c.reconcile()
    assert c.run == run and c.evaluation != first
    assert conds["Trained"]["reason"] == "TrainingSucceeded"  # no retraining
    assert conds["Evaluated"]["reason"] == "Evaluating"  # not GateFailed from the old report
    assert c.jobs() == {
        names.train_job("banking-intent", run),  # finished, kept (until its TTL)
        names.eval_job("banking-intent", c.evaluation),
    }
    c.kube.finish(names.eval_job("banking-intent", c.evaluation))
    c.kube.report(c.evaluation, version=run, passed=True, agreement=0.93, coverage=0.8)
    conds = await c.reconcile()
    assert conds["Evaluated"]["reason"] == "GatePassed"
    assert c.status["activeVersion"] == run


async def test_a_new_threshold_is_measured_before_it_is_trusted() -> None:
    """The gate passed at 0.7; at 0.2 the student answers more on its own: evaluated again,
    and a version that fails at the new threshold serves no more."""
    c = Cluster()
    await c.passed()
    run, first = c.run, c.evaluation
    c.edit(routing__confidenceThreshold=0.2)
    conds = await c.reconcile()
    assert conds["Evaluated"]["reason"] == "Evaluating"
    assert names.eval_job("banking-intent", c.evaluation) in c.jobs()
    assert names.eval_job("banking-intent", first) not in c.jobs()
    c.kube.finish(names.eval_job("banking-intent", c.evaluation))
    c.kube.report(c.evaluation, version=run, passed=False, agreement=0.8, coverage=0.95)
    conds = await c.reconcile()
    assert conds["Evaluated"]["reason"] == "GateFailed"
    assert c.status["activeVersion"] == "" and c.status["passedVersions"] == []
    # back to 0.7: the earlier report was deleted when it went stale, so it runs again
    # (the version's manifest now holds the 0.2 evaluation)
    assert ("ConfigMap", names.eval_report("banking-intent", first)) not in c.kube.objects
    c.edit()
    conds = await c.reconcile()
    assert conds["Evaluated"]["reason"] == "Evaluating"


async def test_too_few_examples_says_so() -> None:
    c = Cluster()
    await c.reconcile()
    c.kube.finish(names.train_job("banking-intent", c.run), "Failed", "PodFailurePolicy")
    conds = await c.reconcile()
    assert conds["Trained"]["reason"] == "NotEnoughExamples"
    assert "fewer than 1000 training examples" in conds["Trained"]["message"]
    c.kube.finish(names.train_job("banking-intent", c.run), "Failed", "BackoffLimitExceeded")
    conds = await c.reconcile()
    assert conds["Trained"]["reason"] in ("TrainingFailed", "Retrying")


async def test_examples_counts_the_runs_examples_not_the_held_out_split() -> None:
    c = Cluster()
    await c.passed()
    assert c.status["examples"] == 2500  # the report's count: training plus held-out


async def test_a_pin_must_name_a_version_that_passed() -> None:
    c = Cluster()
    await c.passed()
    good = c.run
    c.edit(serving__version="v0042")
    conds = await c.reconcile()
    assert conds["Serving"]["reason"] == "InvalidPin"
    assert "v0042" in conds["Serving"]["message"]
    assert c.status["activeVersion"] == good  # the passing version keeps serving
    c.edit(serving__version=good)
    conds = await c.reconcile()
    assert conds["Serving"]["reason"] == "InProcess"
    assert c.status["activeVersion"] == good


async def test_a_causal_lm_pin_that_failed_is_not_served() -> None:
    lm = {"kind": "causal-lm", "baseModel": "Qwen/Qwen2.5-0.5B-Instruct"}
    c = Cluster(student__kind="causal-lm")
    c.body["spec"]["student"] = lm
    await c.passed()
    good = c.run
    c.body["spec"]["serving"]["version"] = "v0001"
    conds = await c.reconcile()
    assert conds["Serving"]["reason"] == "InvalidPin"
    deploy = c.kube.objects[("Deployment", names.student("banking-intent"))]
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"banking-intent=/var/lib/thrifty/data/students/{good}/adapter" in args


def reports(c: Cluster) -> list[str]:
    return sorted(n for k, n in c.kube.objects if k == "ConfigMap" and "-eval-" in n)


async def test_report_configmaps_do_not_pile_up_across_retrains() -> None:
    """Each retrain evaluates anew into its own report ConfigMap; the earlier one is deleted
    (not blanked and kept for the life of the DistilledModel). The current one stays."""
    c = Cluster()
    for day in range(1, 6):
        c.body["metadata"]["annotations"] = {"thrifty.dev/retrain": f"2026-01-0{day}"}
        await c.passed()
        assert reports(c) == [names.eval_report("banking-intent", c.evaluation)]
        assert c.status["activeVersion"] == c.run


async def test_a_stale_report_is_blanked_where_the_operator_may_not_delete_it() -> None:
    """An operator whose RBAC lacks `delete` on ConfigMaps (a chart older than the operator)
    keeps working: the stale report is blanked, as before."""
    from thrifty_operator.apply import KubeError

    c = Cluster()
    await c.passed()
    first = c.evaluation
    delete = c.kube.delete

    async def forbidden(api: str, kind: str, ns: str, name: str) -> bool:
        if kind == "ConfigMap":
            raise KubeError(403, "configmaps is forbidden")
        return await delete(api, kind, ns, name)

    c.kube.delete = forbidden  # type: ignore[method-assign, assignment]
    c.edit(routing__confidenceThreshold=0.2)
    conds = await c.reconcile()
    assert conds["Evaluated"]["reason"] == "Evaluating"
    cm = c.kube.objects[("ConfigMap", names.eval_report("banking-intent", first))]
    assert cm["data"][distill.REPORT_KEY] == ""


LM = {"kind": "causal-lm", "baseModel": "Qwen/Qwen2.5-0.5B-Instruct"}


async def test_gpu_student_released_when_teacher_gateway_is_gone() -> None:
    """Nothing routes to the student without its teacher's gateway: its GPU Deployment goes
    (Serving says why), the trained versions stay, and it serves again when the gateway is
    back, without training anew."""
    c = Cluster(student__kind="causal-lm")
    c.body["spec"]["student"] = LM
    await c.passed()
    good = c.run
    student = ("Deployment", names.student("banking-intent"))
    assert student in c.kube.objects
    c.ix = Indexes({GATEWAYS: {}}, {})  # the teacher LLMGateway was deleted
    conds = await c.reconcile()
    assert student not in c.kube.objects
    assert conds["Serving"]["reason"] == "TeacherMissing"
    assert good in conds["Serving"]["message"] and "GPU" in conds["Serving"]["message"]
    assert c.status["activeVersion"] == good
    assert ("PersistentVolumeClaim", names.distill_artifacts("banking-intent")) in c.kube.objects
    c.ix = Indexes({}, {("LLMGateway", NS, "thrifty"): gateway()})  # back
    jobs = c.jobs()
    conds = await c.reconcile()
    assert student in c.kube.objects and c.jobs() == jobs
    assert conds["Serving"]["reason"] == "DeploymentProgressing"
    assert good in conds["Serving"]["message"]
    # its controller cannot create the GPU pods (a quota): stuck, a Warning, not progress
    c.kube.objects[student]["status"] = {
        "conditions": [
            {"type": "ReplicaFailure", "status": "True", "message": "exceeded quota: gpu"}
        ]
    }
    conds = await c.reconcile()
    assert conds["Serving"]["reason"] == "RolloutStuck"
    assert "exceeded quota: gpu" in conds["Serving"]["message"]


async def test_gpu_student_released_when_its_route_leaves_the_teacher() -> None:
    import pytest

    from thrifty_operator.handlers.common import InvalidSpec

    c = Cluster(student__kind="causal-lm")
    c.body["spec"]["student"] = LM
    await c.passed()
    student = ("Deployment", names.student("banking-intent"))
    assert student in c.kube.objects
    routeless = {**gateway(), "spec": {"routes": [{"name": "other"}]}}
    c.ix = Indexes({}, {("LLMGateway", NS, "thrifty"): routeless})
    with pytest.raises(InvalidSpec, match="GPU Deployment is removed"):
        await c.reconcile()
    assert student not in c.kube.objects


async def test_a_classifier_reports_its_missing_teacher_under_serving() -> None:
    c = Cluster()
    await c.passed()
    c.ix = Indexes({GATEWAYS: {}}, {})
    conds = await c.reconcile()
    assert conds["Serving"]["reason"] == "TeacherMissing"
    assert conds["Trained"]["reason"] == "TeacherMissing"
