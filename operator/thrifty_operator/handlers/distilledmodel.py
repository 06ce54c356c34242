"""DistilledModel: train -> evaluate -> serve -> route, each step a condition backed by a fact.

Trained follows the train Job's Complete/Failed condition; Evaluated reads the report the
evaluate Job wrote into `<name>-eval-<version>` and applies the spec's gate; Serving follows the
student Deployment (causal-lm) or is immediate for classifiers (served inside the gateway).
Once a version passes, it becomes `status.activeVersion` and the teacher's gateway re-renders.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from thrifty_core.api import DistilledModel

from ..builders import distill, names
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
    ok = agreement >= want.min_agreement and coverage >= want.min_coverage
    message = (
        f"agreement {agreement:.3f} (min {want.min_agreement}), "
        f"coverage {coverage:.3f} (min {want.min_coverage})"
    )
    return ok, message


async def _evaluate(
    model: DistilledModel, owner: Owner, version: str, ctx: Context
) -> tuple[Cond, dict[str, Any] | None, bool]:
    ns = owner.namespace
    await apply_all(ctx.kube, distill.build_report_access(owner, version))
    await ctx.kube.apply(distill.build_eval_job(model, owner, version, ctx.defaults))
    state = job_state(
        await ctx.kube.get("batch/v1", "Job", ns, names.eval_job(owner.name, version))
    )
    if state == "Failed":
        return (
            false("Evaluated", "EvaluationFailed", f"the evaluate Job of {version} failed"),
            None,
            False,
        )
    if state != "Complete":
        return false("Evaluated", "Evaluating", f"evaluating {version}"), None, False
    report = read_report(
        await ctx.kube.get("v1", "ConfigMap", ns, names.eval_report(owner.name, version))
    )
    if report is None:
        return false("Evaluated", "ReportMissing", f"no report for {version}"), None, False
    passed, message = gate(model, report)
    if passed:
        return true("Evaluated", "GatePassed", f"{version}: {message}"), report, True
    return false("Evaluated", "GateFailed", f"{version}: {message}"), report, False


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
    version = distill.candidate_version(model)
    previous = model.status.active_version if model.status else ""
    await ctx.kube.apply(distill.build_artifacts_pvc(owner))
    await ctx.kube.apply(distill.build_train_job(model, owner, version, ctx.defaults))
    train = job_state(
        await ctx.kube.get("batch/v1", "Job", ns, names.train_job(owner.name, version))
    )
    fields: dict[str, Any] = {"candidateVersion": version}
    conds: list[Cond] = []
    report: dict[str, Any] | None = None
    passed = False
    if train == "Complete":
        conds.append(true("Trained", "TrainingSucceeded", f"version {version} trained"))
        evaluated, report, passed = await _evaluate(model, owner, version, ctx)
        conds.append(evaluated)
    else:
        reason = "TrainingFailed" if train == "Failed" else "Training"
        conds.append(false("Trained", reason, f"version {version}: train Job {train.lower()}"))
        conds.append(false("Evaluated", "WaitingForTraining", "nothing to evaluate yet"))
    if report is not None:
        fields["agreement"] = max(0.0, min(1.0, float(report.get("agreement", 0.0))))
        fields["coverage"] = max(0.0, min(1.0, float(report.get("coverage", 0.0))))
        fields["examples"] = max(0, int(report.get("examples", 0)))
    active = model.spec.serving.version or (version if passed else previous)
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
    await apply_all(ctx.kube, distill.build_serving(model, owner, active, ctx.defaults))
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
