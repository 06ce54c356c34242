"""Who may reach what (security review): a causal-lm student answers its teacher's gateway
only (a NetworkPolicy and a generated API key the gateway sends) and mounts only the version it
serves, never the captured traffic; a batch worker mounts only the Secrets it reads and is not
a Qdrant client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.unit.test_distill_handler import Cluster
from tests.unit.test_operator_builders import DEFAULTS, MANIFESTS, example, owner
from thrifty_core.api import BatchQueue, CachePolicy, DistilledModel, LLMGateway
from thrifty_core.config import SecretSource, dump_config, parse_config
from thrifty_core.render import render_gateway_config, student_api_key
from thrifty_gateway.services.distill import load_predictor
from thrifty_gateway.services.distill.predictors import EndpointPredictor, StudentError
from thrifty_operator.builders import batch, names, serving
from thrifty_operator.builders import gateway as gw
from thrifty_operator.builders.secrets import gateway_secret_refs

SECRETS = "/var/run/thrifty/secrets"


def _lm() -> tuple[DistilledModel, dict[str, Any]]:
    body = example("distilledmodel")
    body["metadata"]["name"] = "summariser"
    body["spec"]["student"] = {"kind": "causal-lm", "baseModel": "Qwen/Qwen2.5-0.5B-Instruct"}
    return DistilledModel.model_validate(body), body


def _students(*models: DistilledModel) -> list[Any]:
    """The student entries the operator renders for the example gateway."""
    gateway = LLMGateway.model_validate(example("llmgateway"))
    policy = CachePolicy.model_validate(example("cachepolicy"))
    config = render_gateway_config(gateway, {"default-cache": policy}, None, list(models))
    assert parse_config(yaml.safe_load(dump_config(config))) == config
    return list(config.students)


def _by(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(m for m in manifests if m["kind"] == kind)


def _admits(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    return any(
        all(labels.get(k) == v for k, v in peer["podSelector"]["matchLabels"].items())
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
    )


def _pod_labels(kind: str, name: str) -> dict[str, str]:
    found = next(m for m in MANIFESTS if m["kind"] == kind and m["metadata"]["name"] == name)
    labels: dict[str, str] = found["spec"]["template"]["metadata"]["labels"]
    return labels


# --- the student's server ----------------------------------------------------------------------


def test_only_the_teacher_gateway_reaches_the_student() -> None:
    model, body = _lm()
    built = serving.build_serving(model, owner(body), "v1", DEFAULTS)
    policy = _by(built, "NetworkPolicy")
    deploy = _by(built, "Deployment")
    assert policy["metadata"]["name"] == names.student("summariser")
    assert policy["spec"]["podSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    teacher = _pod_labels("Deployment", names.gateway("thrifty"))
    assert model.spec.teacher.gateway_ref.name == "thrifty"
    assert _admits(policy, teacher)
    other_gateway = {**teacher, "app.kubernetes.io/instance": "another-gateway"}
    assert not _admits(policy, other_gateway)
    assert not _admits(policy, _pod_labels("Deployment", names.batch_worker("default-batch")))
    assert not _admits(policy, {"app": "anything-else"})


def test_the_student_pod_mounts_only_its_version_read_only() -> None:
    model, body = _lm()
    deploy = _by(serving.build_serving(model, owner(body), "v7", DEFAULTS), "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    (artifacts,) = [m for m in main["volumeMounts"] if m["name"] == "artifacts"]
    assert artifacts == {
        "name": "artifacts",
        "mountPath": "/var/lib/thrifty/data/students/v7",
        "subPath": "students/v7",
        "readOnly": True,
    }
    (volume,) = [v for v in pod["volumes"] if v["name"] == "artifacts"]
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    args = main["args"]
    adapter = args[args.index("--lora-modules") + 1]
    assert adapter == "summariser=/var/lib/thrifty/data/students/v7/adapter"
    assert adapter.split("=", 1)[1].startswith(artifacts["mountPath"] + "/")
    # Nothing of the volume holding capture/ and snapshot/ is mounted whole.
    assert not any(m["mountPath"] == "/var/lib/thrifty/data" for m in main["volumeMounts"])


def test_vllm_requires_the_generated_api_key() -> None:
    model, body = _lm()
    own = owner(body)
    deploy = _by(serving.build_serving(model, own, "v1", DEFAULTS), "Deployment")
    (main,) = deploy["spec"]["template"]["spec"]["containers"]
    (env,) = [e for e in main["env"] if e["name"] == "VLLM_API_KEY"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "summariser-student-auth", "key": "api-key"}
    assert "--api-key" not in main["args"]  # never in the pod spec or the process list
    secret = serving.build_student_auth_secret(own, "k3y")
    assert secret["metadata"]["name"] == "summariser-student-auth"
    assert secret["stringData"] == {"api-key": "k3y"}
    assert secret["metadata"]["ownerReferences"][0]["uid"] == own.uid


async def test_the_handler_generates_the_key_once_before_the_deployment() -> None:
    c = Cluster()
    c.body["spec"]["student"] = {"kind": "causal-lm", "baseModel": "Qwen/Qwen2.5-0.5B-Instruct"}
    await c.passed()
    conds = await c.reconcile()
    assert conds["Serving"]["reason"] in ("DeploymentAvailable", "DeploymentProgressing")
    key = ("Secret", "banking-intent-student-auth")
    first = c.kube.objects[key]["stringData"]["api-key"]
    assert len(first) >= 32
    assert ("NetworkPolicy", names.student("banking-intent")) in c.kube.objects
    await c.reconcile()
    assert c.kube.objects[key]["stringData"]["api-key"] == first  # never replaced


# --- the gateway sends it ----------------------------------------------------------------------


def test_the_gateway_mounts_and_renders_the_student_key() -> None:
    model, _ = _lm()
    (student,) = _students(model)
    assert student.api_key == SecretSource(file=f"{SECRETS}/summariser-student-auth/api-key")
    gateway = LLMGateway.model_validate(example("llmgateway"))
    mounts = gw.GatewayMounts(students=["summariser"], student_keys=[student_api_key("summariser")])
    deploy = gw.build_deployment(gateway, owner(example("llmgateway")), "h", mounts, DEFAULTS)
    pod = deploy["spec"]["template"]["spec"]
    (volume,) = [
        v
        for v in pod["volumes"]
        if v.get("secret", {}).get("secretName", "").endswith("-student-auth")
    ]
    # Optional: the DistilledModel's handler may create it after the gateway renders the student.
    assert volume["secret"]["optional"] is True
    assert volume["secret"]["items"] == [{"key": "api-key", "path": "api-key"}]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {
        "name": volume["name"],
        "mountPath": f"{SECRETS}/summariser-student-auth",
        "readOnly": True,
    }
    classifier = DistilledModel.model_validate(example("distilledmodel"))
    (rendered,) = _students(classifier)
    assert rendered.api_key is None  # in-process: nothing to authenticate to


def _predictor(
    seen: list[httpx.Request], api_key: SecretSource | None, status: int = 200
) -> EndpointPredictor:
    answer = {
        "choices": [
            {
                "message": {"content": "card_arrival"},
                "logprobs": {"content": [{"token": "card_arrival", "logprob": -0.01}]},
                "finish_reason": "stop",
            }
        ]
    }

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=answer if status == 200 else {"error": "nope"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    return EndpointPredictor(
        "http://student:8000/v1", "student", api_key=api_key, labels=["card_arrival"], client=client
    )


BODY = {"messages": [{"role": "user", "content": "where is my card"}]}


async def test_the_endpoint_predictor_sends_the_key_as_a_bearer_token(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("s3cret\n")
    seen: list[httpx.Request] = []
    predictor = _predictor(seen, SecretSource(file=str(key_file)))
    answer = await predictor.predict(BODY)
    assert answer is not None and answer.text == "card_arrival"
    assert seen[-1].headers["authorization"] == "Bearer s3cret"
    assert json.loads(seen[-1].content)["model"] == "student"
    await predictor.aclose()


async def test_without_a_key_the_predictor_sends_none(tmp_path: Path) -> None:
    """Local configs (a vLLM without --api-key) keep working; a configured key file that is
    not there yet sends nothing and is read once it is."""
    seen: list[httpx.Request] = []
    predictor = _predictor(seen, None)
    assert await predictor.predict(BODY) is not None
    assert "authorization" not in seen[-1].headers
    await predictor.aclose()
    later = tmp_path / "api-key"
    predictor = _predictor(seen, SecretSource(file=str(later)))
    assert await predictor.predict(BODY) is not None
    assert "authorization" not in seen[-1].headers
    later.write_text("arrived")
    await predictor.predict(BODY)
    assert seen[-1].headers["authorization"] == "Bearer arrived"
    await predictor.aclose()


async def test_a_refused_key_is_read_again(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("old")
    seen: list[httpx.Request] = []
    predictor = _predictor(seen, SecretSource(file=str(key_file)), status=401)
    try:
        await predictor.predict(BODY)
    except StudentError:
        pass
    else:
        raise AssertionError("a 401 is a student failure (the teacher answers)")
    key_file.write_text("rotated")
    try:
        await predictor.predict(BODY)
    except StudentError:
        pass
    assert [r.headers["authorization"] for r in seen] == ["Bearer old", "Bearer rotated"]
    await predictor.aclose()


def test_the_loaded_predictor_carries_the_configured_key() -> None:
    model, _ = _lm()
    (cfg,) = _students(model)
    cfg = cfg.model_copy(update={"serve": True, "version": "v1"})
    predictor, _ = load_predictor(cfg, lambda: None)
    assert isinstance(predictor, EndpointPredictor)
    assert predictor.api_key == cfg.api_key and predictor.api_key is not None


# --- the batch worker ----------------------------------------------------------------------------


def test_the_worker_mounts_only_the_secrets_it_reads() -> None:
    gateway = LLMGateway.model_validate(example("llmgateway"))
    policy = CachePolicy.model_validate(example("cachepolicy"))
    queue = BatchQueue.model_validate(example("batchqueue"))
    worker = {(r.name, r.key) for r in batch.worker_secret_refs(gateway, [policy], queue)}
    everything = {(r.name, r.key) for r in gateway_secret_refs(gateway, [policy], queue)}
    providers = {
        (p.api_key_secret_ref.name, p.api_key_secret_ref.key)
        for p in gateway.spec.providers
        if p.api_key_secret_ref
    }
    assert providers and providers <= worker
    assert ("default-cache-redis-auth", "password") in worker
    assert ("default-batch-redis-auth", "password") in worker
    assert worker < everything
    left_out = {name for name, _ in everything - worker}
    assert "default-cache-qdrant-auth" in left_out
    tenant_and_admin = {
        t.api_keys_secret_ref.name for t in gateway.spec.tenants if t.api_keys_secret_ref
    }
    if gateway.spec.admin_key_secret_ref:
        tenant_and_admin.add(gateway.spec.admin_key_secret_ref.name)
    assert tenant_and_admin and not tenant_and_admin & {name for name, _ in worker}
    deploy = next(
        m
        for m in MANIFESTS
        if m["kind"] == "Deployment"
        and m["metadata"]["name"] == names.batch_worker("default-batch")
    )
    mounted = {
        v["secret"]["secretName"]
        for v in deploy["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    }
    assert mounted == {name for name, _ in worker}


def test_qdrant_does_not_admit_the_worker() -> None:
    policy = next(
        m
        for m in MANIFESTS
        if m["kind"] == "NetworkPolicy" and m["metadata"]["name"] == names.qdrant("default-cache")
    )
    assert not _admits(policy, _pod_labels("Deployment", names.batch_worker("default-batch")))
    assert _admits(policy, _pod_labels("Deployment", names.gateway("thrifty")))
