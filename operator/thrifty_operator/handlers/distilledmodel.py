"""DistilledModel: train -> evaluate -> serve -> route, each step a condition backed by a fact.

A spec's run (a digest of what changes the student) trains its own version on its own
snapshot; its evaluation (the run under the current gate and threshold) evaluates that
version. Trained follows the train Job's Complete/Failed condition (a completed run is kept in
`status.candidateVersion`, so a Job its TTL removed is not run again); Evaluated reads the
report the evaluate Job wrote into `<name>-eval-<evaluation>` and applies the spec's gate;
Serving follows the student Deployment (causal-lm) or is immediate for classifiers (served
inside the gateway). Once a version passes, it becomes `status.activeVersion` and the
teacher's gateway re-renders. When the spec changes, the Jobs of the earlier run (recorded in
`status.jobs`) are deleted: they would only train and evaluate a version nobody asked for.
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import datetime
from typing import Any

from thrifty_core.api import DistilledModel, DistilledModelStatus

from ..apply import KubeError
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
    delete_owned,
    deployment_state,
    job_state,
    now,
    owned_by,
    parse,
    plain,
    rollout_reason,
)
from .indexes import Indexes

logger = logging.getLogger(__name__)

PASSED_VERSIONS = 20  # kept in status.passedVersions (the versions a pin may name)


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
    """The spec's evaluation gate applied to a report. The report is of this very gate and
    threshold (an evaluation is named after them), so its own verdict (which also fails an
    empty held-out split) agrees with the figures."""
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


async def _report(ctx: Context, owner: Owner, evaluation: str) -> dict[str, Any] | None:
    """The evaluation's report, once its evaluate Job has written one."""
    cm = await ctx.kube.get(
        "v1", "ConfigMap", owner.namespace, names.eval_report(owner.name, evaluation)
    )
    report = read_report(cm)
    return report if report is not None and report.get("version") else None


async def _evaluate(
    model: DistilledModel, owner: Owner, run: str, ctx: Context
) -> tuple[Cond, dict[str, Any] | None, bool]:
    ns = owner.namespace
    evaluation = distill.evaluation_run(model, run)
    await apply_all(ctx.kube, distill.build_report_access(owner, evaluation))
    # A written report is the fact: the Job is not needed any more (its TTL may remove it).
    report = await _report(ctx, owner, evaluation)
    if report is None:
        eval_name = names.eval_job(owner.name, evaluation)
        job = await ensure_job(ctx, distill.build_eval_job(model, owner, run, ctx.defaults))
        state = job_state(job)
        if state == "Failed":
            detail = failure(job)
            retried = await _retry_after(job, "Failed", ctx, ns, eval_name)
            reason = "Retrying" if retried else "EvaluationFailed"
            return false("Evaluated", reason, f"run {run}: {detail}"), None, False
        if state != "Complete":
            running = f"run {run}: evaluate Job running"
            return false("Evaluated", "Evaluating", running), None, False
        report = await _report(ctx, owner, evaluation)  # written just before it completed
        if report is None:
            # Evaluated again later (a Job that exited without writing its report).
            await _retry_after(job, "Complete", ctx, ns, eval_name)
            missing = f"run {run}: no report written"
            return false("Evaluated", "ReportMissing", missing), None, False
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


def too_few_examples(job: dict[str, Any] | None) -> bool:
    """The train Job failed by its pod failure policy: its only rule is the train step's
    exit code for too few examples (`thrifty distill train` exits 3)."""
    for cond in (job or {}).get("status", {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return bool(cond.get("reason") == "PodFailurePolicy")
    return False


async def _train(model: DistilledModel, owner: Owner, run: str, ctx: Context) -> tuple[Cond, bool]:
    """The run's train Job: (the Trained condition, whether it completed)."""
    name = names.train_job(owner.name, run)
    job = await ensure_job(ctx, distill.build_train_job(model, owner, run, ctx.defaults))
    state = job_state(job)
    if state == "Complete":
        return true("Trained", "TrainingSucceeded", f"run {run}: version {run} trained"), True
    if state != "Failed":
        return false("Trained", "Training", f"run {run}: train Job running"), False
    retried = await _retry_after(job, "Failed", ctx, owner.namespace, name)
    if too_few_examples(job):
        training = model.spec.training
        share = model.spec.evaluation.held_out_fraction
        when = "now" if retried else f"{ctx.settings.retrain_after_seconds:g} s after it failed"
        message = (
            f"run {run}: fewer than {training.min_examples} training examples captured "
            f"(spec.training.minExamples; {share:.0%} of the captured examples are held out "
            f"for evaluation); training is tried again {when}"
        )
        return false("Trained", "NotEnoughExamples", message), False
    reason = "Retrying" if retried else "TrainingFailed"
    return false("Trained", reason, f"run {run}: {failure(job)}"), False


async def _drop_stale(ctx: Context, owner: Owner, recorded: list[str], current: list[str]) -> None:
    """Delete the Jobs of an earlier spec's run or evaluation (running or finished): they
    would train or evaluate a version the spec no longer asks for. An earlier evaluation's
    report ConfigMap is deleted too (one per evaluation would otherwise pile up for the life
    of the DistilledModel): coming back to it evaluates again (the version's manifest, which
    the gateway checks, holds its latest evaluation only). The current evaluation's report
    (in `current`) is kept: status reads its figures."""
    for name in recorded:
        if name in current:
            continue
        await delete_owned(ctx.kube, owner, "batch/v1", "Job", name)
        cm = await ctx.kube.get("v1", "ConfigMap", owner.namespace, name)
        if cm is None or not owned_by(cm, owner):
            continue
        try:
            await ctx.kube.delete("v1", "ConfigMap", owner.namespace, name)
        except KubeError as exc:
            if exc.status != 403:
                raise
            # An operator whose RBAC does not grant `delete` on ConfigMaps yet (a chart older
            # than the operator): the report is blanked instead, as before.
            logger.warning("report %s/%s not deleted: %s", owner.namespace, name, exc.message)
            if read_report(cm) is not None:
                await ctx.kube.apply(distill.build_report_reset(owner, name))


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


async def release_student(model: DistilledModel, owner: Owner, ctx: Context) -> None:
    """Delete the causal-lm student's Deployment (ours only): its GPUs go back to the pool.
    The trained versions stay on the artifacts volume, and status keeps what passed, so the
    same version serves again once it is wanted (the next reconcile creates it anew)."""
    if model.spec.student.kind == "causal-lm":
        name = names.student(owner.name)
        await delete_owned(ctx.kube, owner, "apps/v1", "Deployment", name)


def teacher_gone(model: DistilledModel, waiting: Cond) -> Cond:
    """Serving while the teacher's gateway is missing: nothing routes to the student."""
    active = (model.status.active_version if model.status else "") or ""
    what = f"version {active}" if active else "the student"
    where = (
        "its GPU Deployment is removed until then"
        if model.spec.student.kind == "causal-lm"
        else "it is served inside that gateway"
    )
    return false(
        "Serving",
        waiting.reason,
        f"{waiting.message}: nothing routes to {what}; {where}, and it serves again once the "
        "gateway is back",
    )


async def reconcile(body: Body, ix: Indexes, ctx: Context) -> Outcome:
    model = parse(DistilledModel, body)
    owner = Owner.from_body(body)
    try:
        waiting = check_teacher(model, ix)
    except InvalidSpec as exc:
        # The route is gone from the teacher (or never was): nothing can route to the student.
        await release_student(model, owner, ctx)
        if model.spec.student.kind != "causal-lm":
            raise
        raise InvalidSpec(
            f"{exc}; the student's GPU Deployment is removed until the route is back"
        ) from exc
    if waiting is not None:
        await release_student(model, owner, ctx)
        return Outcome([waiting, teacher_gone(model, waiting)])
    status = model.status or DistilledModelStatus()
    run = distill.candidate_version(model)
    previous = status.active_version
    await apply_all(
        ctx.kube,
        [
            distill.build_artifacts_pvc(model, owner, ctx.defaults),
            distill.build_resource_config(model, owner),
        ],
    )
    jobs = [
        names.train_job(owner.name, run),
        names.eval_job(owner.name, distill.evaluation_run(model, run)),
    ]
    await _drop_stale(ctx, owner, status.jobs, jobs)
    fields: dict[str, Any] = {"jobs": jobs}
    conds: list[Cond] = []
    report: dict[str, Any] | None = None
    passed = False
    # A run trained before (its Job may be gone, removed by its TTL) is not trained again.
    if run in (status.candidate_version, previous, *status.passed_versions):
        trained = true("Trained", "TrainingSucceeded", f"run {run}: version {run} trained")
        done = True
    else:
        trained, done = await _train(model, owner, run, ctx)
    conds.append(trained)
    if done:
        fields["candidateVersion"] = run
        evaluated, report, passed = await _evaluate(model, owner, run, ctx)
        conds.append(evaluated)
    else:
        conds.append(false("Evaluated", "WaitingForTraining", "nothing to evaluate yet"))
    # (A status from before passedVersions: the active version had passed.)
    known = list(status.passed_versions) or ([previous] if previous else [])
    active = previous
    if report is not None:
        version = str(report["version"])
        fields["agreement"] = max(0.0, min(1.0, float(report.get("agreement", 0.0))))
        fields["coverage"] = max(0.0, min(1.0, float(report.get("coverage", 0.0))))
        fields["examples"] = max(0, int(report.get("examples", 0)))
        known = [v for v in known if v != version] + ([version] if passed else [])
        if passed:
            active = version
        elif version == active:
            # The serving version fails the current gate or threshold: it serves no more.
            active = ""
    known = known[-PASSED_VERSIONS:]
    fields["passedVersions"] = known
    pin = model.spec.serving.version
    refused: Cond | None = None
    if pin and pin in known:
        active = pin
    elif pin:
        refused = invalid_pin(pin, known, active)
    fields["activeVersion"] = active
    serving_cond = await _serve(model, owner, active, ctx, fields)
    conds.append(refused or serving_cond)
    return Outcome(conds, fields)


def invalid_pin(pin: str, known: list[str], active: str) -> Cond:
    """A pin (spec.serving.version) that is not a version the operator saw pass its gate:
    it does not exist, failed its gate, or was never evaluated here."""
    listed = ", ".join(known) or "none yet"
    instead = f"still serving {active}" if active else "nothing is served (the teacher answers)"
    return false(
        "Serving",
        "InvalidPin",
        f"spec.serving.version {pin} has not passed the evaluation gate (passed: {listed}); "
        f"{instead}",
    )


async def ensure_student_key(ctx: Context, owner: Owner) -> None:
    """Create the causal-lm student's API-key Secret unless it exists: generated once, owned by
    the DistilledModel (deleted with it), never read nor replaced by the operator."""
    secret = serving.build_student_auth_secret(owner, secrets.token_urlsafe(32))
    if await ctx.kube.create(secret):
        logger.info("generated the student API key of %s/%s", owner.namespace, owner.name)


async def _serve(
    model: DistilledModel, owner: Owner, active: str, ctx: Context, fields: dict[str, Any]
) -> Cond:
    if not active:
        await release_student(model, owner, ctx)
        return false("Serving", "NoPassingVersion", "no version has passed the evaluation gate")
    if model.spec.student.kind != "causal-lm":
        return true("Serving", "InProcess", f"{active} is served inside the teacher's gateway")
    await ensure_student_key(ctx, owner)  # the Deployment reads it: created first
    await apply_all(ctx.kube, serving.build_serving(model, owner, active, ctx.defaults))
    fields["endpoint"] = names.student_endpoint(owner.name, owner.namespace)
    deployment = await ctx.kube.get(
        "apps/v1", "Deployment", owner.namespace, names.student(owner.name)
    )
    ok, message = deployment_state(deployment)
    if ok:
        return true("Serving", "DeploymentAvailable", f"{active}: {message}")
    reason = rollout_reason(deployment, "DeploymentProgressing")  # (a GPU quota, say)
    return false("Serving", reason, f"{active}: {message}")


async def dependents(body: Body, status: dict[str, Any], ix: Indexes, ctx: Context) -> None:
    """Re-render the teacher's gateway (the route switch follows status.activeVersion)."""
    current = plain(body)
    current["status"] = {**(current.get("status") or {}), **status}
    ns = current["metadata"].get("namespace", "default")
    teacher = current.get("spec", {}).get("teacher", {}).get("gatewayRef", {}).get("name")
    if teacher:
        await gateway.resync(ix.with_body(current), ctx, ns, [teacher])
