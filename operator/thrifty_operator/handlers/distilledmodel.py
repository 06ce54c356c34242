"""DistilledModel: train -> evaluate -> serve -> route, each step a condition backed by a fact.

Trained follows the train Job's Complete/Failed condition; Evaluated reads the report the
evaluate Job wrote into `<name>-eval-<version>` and applies the spec's gate; Serving follows the
student Deployment (causal-lm) or is immediate for classifiers (served inside the gateway).
Once a version passes, it becomes `status.activeVersion` and the teacher's gateway re-renders.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from thrifty_core.api import DistilledModel

from ..builders import distill, names, serving
from ..builders.common import Owner
from ..conditions import Cond, false, true
from . import gateway
from .common import (
    Body,
    Context,
    InvalidSpec,
    Outcome,
    apply_all,
    deployment_state,
    job_state,
    now,
    parse,
    plain,
)
from .indexes import Indexes

logger = logging.getLogger(__name__)


def read_report(configmap: dict[str, Any] | None) -> dict[str, Any] | None:
    """The evaluation report (JSON) from its ConfigMap, or None when not written yet."""
    raw = ((configmap or {}).get("data") or {}).get(distill.REPORT_KEY)
    if not raw:
        return None
    try:
        report = json.loads(raw)
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def gate(model: DistilledModel, report: dict[str, Any]) -> tuple[bool, str]:
    """The spec's evaluation gate applied to a report."""
    want = model.spec.evaluation
    agreement = float(report.get("agreement", 0.0))
    coverage = float(report.get("coverage", 0.0))
    ok = (
        agreement >= want.min_agreement
        and coverage >= want.min_coverage
        and bool(report.get("passed", True))
    )
    message = (
        f"agreement {agreement:.3f} (min {want.min_agreement}), "
        f"coverage {coverage:.3f} (min {want.min_coverage})"
    )
    return ok, message


async def ensure_job(ctx: Context, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The run's Job: created when absent; a finished one is left as it is (its history; its
    immutable pod template may differ after an operator upgrade or a resources edit, and
    re-applying it would be refused); an unfinished one whose spec changed is deleted, and the
    next reconcile creates it anew. None while it is being replaced."""
    meta = manifest["metadata"]
    ns, name = meta["namespace"], meta["name"]
    job = await ctx.kube.get("batch/v1", "Job", ns, name)
    if job is None:
        return await ctx.kube.apply(manifest)  # the Job as created
    if job_state(job) in ("Complete", "Failed"):
        return job
    have = (job["metadata"].get("annotations") or {}).get(distill.TEMPLATE_HASH)
    # (A Job from before the digest existed carries none: it is left to finish.)
    if have is not None and have != meta["annotations"][distill.TEMPLATE_HASH]:
        await ctx.kube.delete("batch/v1", "Job", ns, name)
        return None
    return job


async def _evaluate(
    model: DistilledModel, owner: Owner, run: str, ctx: Context
) -> tuple[Cond, dict[str, Any] | None, bool]:
    ns = owner.namespace
    await apply_all(ctx.kube, distill.build_report_access(owner, run))
    eval_name = names.eval_job(owner.name, run)
    job = await ensure_job(ctx, distill.build_eval_job(model, owner, run, ctx.defaults))
    state = job_state(job)
    if state == "Failed":
        detail = failure(job)
        retried = await _retry_after(job, "Failed", ctx, ns, eval_name)
        reason = "Retrying" if retried else "EvaluationFailed"
        return false("Evaluated", reason, f"run {run}: {detail}"), None, False
    if state != "Complete":
        return false("Evaluated", "Evaluating", f"run {run}: evaluate Job running"), None, False
    report = read_report(
        await ctx.kube.get("v1", "ConfigMap", ns, names.eval_report(owner.name, run))
    )
    if report is None or not report.get("version"):
        # Evaluated again later (a Job that exited without writing its report).
        await _retry_after(job, "Complete", ctx, ns, eval_name)
        return false("Evaluated", "ReportMissing", f"run {run}: no report written"), None, False
    passed, message = gate(model, report)
    version = report["version"]
    if passed:
        return true("Evaluated", "GatePassed", f"{version}: {message}"), report, True
    return false("Evaluated", "GateFailed", f"{version}: {message}"), report, False


def failure(job: dict[str, Any] | None) -> str:
    """The Job's own words for why it failed."""
    for cond in (job or {}).get("status", {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return str(cond.get("message") or cond.get("reason") or "failed")
    return "failed"


async def _retry_after(
    job: dict[str, Any] | None, condition: str, ctx: Context, ns: str, name: str
) -> bool:
    """Delete a Job that ended (`condition`: Failed, or Complete without a result) once it is
    old enough, so the next reconcile runs it again (a train Job: typically more examples
    have been captured since; an evaluate Job: a drained node, an OOM). True when deleted."""
    for cond in (job or {}).get("status", {}).get("conditions") or []:
        if cond.get("type") == condition and cond.get("status") == "True":
            when = datetime.fromisoformat(str(cond["lastTransitionTime"]).replace("Z", "+00:00"))
            if (now() - when).total_seconds() >= ctx.settings.retrain_after_seconds:
                return await ctx.kube.delete("batch/v1", "Job", ns, name)
    return False


def check_teacher(model: DistilledModel, ix: Indexes) -> Cond | None:
    """A missing teacher gateway is waited for; a route it does not serve is a bad spec."""
    ns, teacher = model.metadata.namespace, model.spec.teacher
    body = ix.body("LLMGateway", ns, teacher.gateway_ref.name)
    if body is None:
        return false(
            "Trained", "TeacherMissing", f"LLMGateway {teacher.gateway_ref.name} not found"
        )
    routes = [r.get("name") for r in body.get("spec", {}).get("routes", [])]
    if teacher.route not in routes:
        raise InvalidSpec(
            f"spec.teacher.route: gateway {teacher.gateway_ref.name} has no route "
            f"{teacher.route!r} (routes: {', '.join(str(r) for r in routes)})"
        )
    return None


async def reconcile(body: Body, ix: Indexes, ctx: Context) -> Outcome:
    model = parse(DistilledModel, body)
    owner = Owner.from_body(body)
    ns = owner.namespace
    waiting = check_teacher(model, ix)
    if waiting is not None:
        return Outcome([waiting])
    run = distill.candidate_version(model)
    previous = model.status.active_version if model.status else ""
    await apply_all(
        ctx.kube,
        [
            distill.build_artifacts_pvc(owner, ctx.defaults),
            distill.build_resource_config(model, owner),
        ],
    )
    train_name = names.train_job(owner.name, run)
    train_job = await ensure_job(ctx, distill.build_train_job(model, owner, run, ctx.defaults))
    train = job_state(train_job)
    fields: dict[str, Any] = {}
    conds: list[Cond] = []
    report: dict[str, Any] | None = None
    passed = False
    if train == "Complete":
        conds.append(true("Trained", "TrainingSucceeded", f"run {run}: a new version trained"))
        evaluated, report, passed = await _evaluate(model, owner, run, ctx)
        conds.append(evaluated)
    elif train == "Failed":
        retried = await _retry_after(train_job, "Failed", ctx, ns, train_name)
        reason = "Retrying" if retried else "TrainingFailed"
        conds.append(false("Trained", reason, f"run {run}: {failure(train_job)}"))
        conds.append(false("Evaluated", "WaitingForTraining", "nothing to evaluate yet"))
    else:
        conds.append(false("Trained", "Training", f"run {run}: train Job running"))
        conds.append(false("Evaluated", "WaitingForTraining", "nothing to evaluate yet"))
    if report is not None:
        fields["candidateVersion"] = str(report["version"])
        fields["agreement"] = max(0.0, min(1.0, float(report.get("agreement", 0.0))))
        fields["coverage"] = max(0.0, min(1.0, float(report.get("coverage", 0.0))))
        fields["examples"] = max(0, int(report.get("examples", 0)))
    active = model.spec.serving.version or (
        str(report["version"]) if passed and report else previous
    )
    fields["activeVersion"] = active
    conds.append(await _serve(model, owner, active, ctx, fields))
    return Outcome(conds, fields)


async def _serve(
    model: DistilledModel, owner: Owner, active: str, ctx: Context, fields: dict[str, Any]
) -> Cond:
    if not active:
        return false("Serving", "NoPassingVersion", "no version has passed the evaluation gate")
    if model.spec.student.kind != "causal-lm":
        return true("Serving", "InProcess", f"{active} is served inside the teacher's gateway")
    await apply_all(ctx.kube, serving.build_serving(model, owner, active, ctx.defaults))
    fields["endpoint"] = names.student_endpoint(owner.name, owner.namespace)
    ok, message = deployment_state(
        await ctx.kube.get("apps/v1", "Deployment", owner.namespace, names.student(owner.name))
    )
    if ok:
        return true("Serving", "DeploymentAvailable", f"{active}: {message}")
    return false("Serving", "DeploymentProgressing", f"{active}: {message}")


async def dependents(body: Body, status: dict[str, Any], ix: Indexes, ctx: Context) -> None:
    """Re-render the teacher's gateway (the route switch follows status.activeVersion)."""
    current = plain(body)
    current["status"] = {**(current.get("status") or {}), **status}
    ns = current["metadata"].get("namespace", "default")
    teacher = current.get("spec", {}).get("teacher", {}).get("gatewayRef", {}).get("name")
    if teacher:
        await gateway.resync(ix.with_body(current), ctx, ns, [teacher])
