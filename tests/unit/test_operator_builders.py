"""Operator builders: pure spec -> manifest functions, checked without an API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from thrifty_core.api import BatchQueue, CachePolicy, DistilledModel, LLMGateway
from thrifty_core.config import dump_config
from thrifty_core.render import render_gateway_config
from thrifty_operator.builders import batch, cache, distill, names, serving
from thrifty_operator.builders import gateway as gw
from thrifty_operator.builders.common import (
    CONFIG_HASH_ANNOTATION,
    OWNER_KIND_LABEL,
    Owner,
    short_hash,
)
from thrifty_operator.builders.defaults import Defaults
from thrifty_operator.builders.secrets import gateway_secret_refs
from thrifty_operator.handlers.common import parse

ROOT = Path(__file__).resolve().parents[2]
NS = "shop"
DEFAULTS = Defaults()
SECRET_VALUES = [
    v
    for doc in yaml.safe_load_all((ROOT / "examples" / "secrets.yaml").read_text())
    for v in doc["stringData"].values()
]


def example(kind: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "examples" / f"{kind}.yaml").read_text())
    body["metadata"].update(namespace=NS, uid=f"uid-{kind}", generation=1)
    return body


def owner(body: dict[str, Any]) -> Owner:
    return Owner.from_body(body)


def render(gateway: LLMGateway, policy: CachePolicy, queue: BatchQueue) -> tuple[str, str]:
    cfg = render_gateway_config(gateway, {policy.metadata.name: policy}, queue, [])
    text = dump_config(cfg)
    return text, short_hash(text)


def all_manifests() -> list[dict[str, Any]]:
    gbody, pbody, qbody = example("llmgateway"), example("cachepolicy"), example("batchqueue")
    dbody = example("distilledmodel")
    gateway = LLMGateway.model_validate(gbody)
    policy = CachePolicy.model_validate(pbody)
    queue = BatchQueue.model_validate(qbody)
    model = DistilledModel.model_validate(dbody)
    lm_body = {**dbody, "metadata": {**dbody["metadata"], "name": "summariser"}}
    lm_body["spec"] = {
        **dbody["spec"],
        "student": {"kind": "causal-lm", "baseModel": "Qwen/Qwen2.5-0.5B-Instruct"},
        "training": {"gpu": {"count": 1, "product": "NVIDIA-L4"}},
    }
    lm = DistilledModel.model_validate(lm_body)
    text, digest = render(gateway, policy, queue)
    refs = gateway_secret_refs(gateway, [policy], queue)
    mounts = gw.GatewayMounts(refs, queue.metadata.name, ["banking-intent"])
    go = owner(gbody)
    out: list[dict[str, Any] | None] = [
        gw.build_config_map(go, text, digest),
        gw.build_deployment(gateway, go, digest, mounts, DEFAULTS),
        gw.build_service(go),
        gw.build_hpa(gateway, go),
        gw.build_pdb(gateway, go),
        *cache.build_stores(policy, owner(pbody), DEFAULTS),
        cache.build_collection_job(policy, owner(pbody), DEFAULTS),
        cache.build_collection_delete_job(policy, owner(pbody), DEFAULTS),
        *batch.build_queue_stores(queue, owner(qbody), DEFAULTS),
        batch.build_worker(
            queue,
            owner(qbody),
            "thrifty",
            digest,
            batch.worker_secret_refs(gateway, [policy], queue),
            DEFAULTS,
        ),
        distill.build_artifacts_pvc(model, owner(dbody), DEFAULTS),
        distill.build_resource_config(model, owner(dbody)),
        *distill.build_report_access(owner(dbody), distill.evaluation_run(model, "v1")),
        distill.build_train_job(model, owner(dbody), "v1", DEFAULTS),
        distill.build_eval_job(model, owner(dbody), "v1", DEFAULTS),
        distill.build_train_job(lm, owner(lm_body), "v1", DEFAULTS),
        *serving.build_serving(lm, owner(lm_body), "v1", DEFAULTS),
    ]
    return [m for m in out if m is not None]


MANIFESTS = all_manifests()


def pod_templates() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{m['kind']}/{m['metadata']['name']}", m["spec"]["template"]["spec"])
        for m in MANIFESTS
        if m["kind"] in ("Deployment", "StatefulSet", "Job")
    ]


def test_every_kind_is_built() -> None:
    kinds = {m["kind"] for m in MANIFESTS}
    assert kinds >= {
        "ConfigMap",
        "NetworkPolicy",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "StatefulSet",
        "PersistentVolumeClaim",
        "Job",
        "ServiceAccount",
        "Role",
        "RoleBinding",
    }


def retained(manifest: dict[str, Any]) -> bool:
    """The example cache policy's Redis volume (deletionPolicy Retain, the default)."""
    return bool(
        manifest["kind"] == "PersistentVolumeClaim"
        and manifest["metadata"]["name"].endswith("-redis-data")
        and manifest["metadata"]["labels"][OWNER_KIND_LABEL] == "cachepolicy"
    )


@pytest.mark.parametrize(
    "manifest", MANIFESTS, ids=lambda m: f"{m['kind']}-{m['metadata']['name']}"
)
def test_every_child_has_a_controller_owner_and_labels(manifest: dict[str, Any]) -> None:
    meta = manifest["metadata"]
    assert meta["namespace"] == NS
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "thrifty-operator"
    if retained(manifest):
        assert "ownerReferences" not in meta  # outlives its policy: see below
        return
    (ref,) = meta["ownerReferences"]
    assert ref["controller"] is True and ref["blockOwnerDeletion"] is True
    assert ref["apiVersion"] == "thrifty.dev/v1alpha1"
    assert ref["uid"].startswith("uid-") and ref["name"] == meta["labels"]["thrifty.dev/owner-name"]
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "thrifty-operator"


@pytest.mark.parametrize("name,pod", pod_templates(), ids=lambda v: v if isinstance(v, str) else "")
def test_pods_meet_the_restricted_standard(name: str, pod: dict[str, Any]) -> None:
    sec = pod["securityContext"]
    assert sec["runAsNonRoot"] is True and sec["runAsUser"] > 0, name
    assert sec["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"] + pod.get("initContainers", []):
        csc = c["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False, name
        assert csc["capabilities"] == {"drop": ["ALL"]}, name
        assert csc["readOnlyRootFilesystem"] is True, name
        assert csc["runAsNonRoot"] is True
        assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not csc.get("privileged")
        assert all("hostPath" not in v for v in pod["volumes"])
        assert not c.get("ports") or all("hostPort" not in p for p in c["ports"])


def test_selectors_match_pod_labels() -> None:
    for m in MANIFESTS:
        if m["kind"] in ("Deployment", "StatefulSet"):
            selector = m["spec"]["selector"]["matchLabels"]
            labels = m["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), m["metadata"]["name"]


def _by(kind: str, name: str) -> dict[str, Any]:
    return next(m for m in MANIFESTS if m["kind"] == kind and m["metadata"]["name"] == name)


def test_gateway_deployment_rolls_on_config_hash_and_mounts_secrets_as_files() -> None:
    deploy = _by("Deployment", names.gateway("thrifty"))
    cm = _by("ConfigMap", names.gateway_config("thrifty"))
    digest = deploy["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
    assert digest == cm["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
    assert digest == short_hash(cm["data"]["gateway.yaml"])
    assert "replicas" not in deploy["spec"]  # the HPA owns the replica count
    mounts = {
        v["mountPath"] for v in deploy["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    assert "/var/run/thrifty/secrets/thrifty-provider-keys" in mounts
    assert "/var/run/thrifty/secrets/thrifty-tenant-keys" in mounts
    assert "/etc/thrifty" in mounts
    # The ONNX graphs (~90 MB each) get their own volume, found through XDG_CACHE_HOME; /tmp
    # has room for the largest batch upload the example's queue may spool there.
    pod = deploy["spec"]["template"]["spec"]
    assert "/var/cache/thrifty" in mounts
    assert {"name": "XDG_CACHE_HOME", "value": "/var/cache/thrifty"} in pod["containers"][0]["env"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-cache"]["emptyDir"] == {"sizeLimit": "1Gi"}
    assert volumes["tmp"]["emptyDir"]["sizeLimit"] == "2560Mi"
    config = cm["data"]["gateway.yaml"]
    assert "/var/run/thrifty/secrets/thrifty-tenant-keys/team-a" in config
    for value in SECRET_VALUES:
        assert value not in config


def test_config_hash_follows_the_referenced_policy_only() -> None:
    gateway = LLMGateway.model_validate(example("llmgateway"))
    queue = BatchQueue.model_validate(example("batchqueue"))
    pbody = example("cachepolicy")
    _, before = render(gateway, CachePolicy.model_validate(pbody), queue)
    _, again = render(gateway, CachePolicy.model_validate(pbody), queue)
    pbody["spec"]["semantic"]["threshold"] = 0.85
    _, after = render(gateway, CachePolicy.model_validate(pbody), queue)
    assert before == again
    assert before != after


def test_hpa_and_pdb_only_when_asked() -> None:
    body = example("llmgateway")
    body["spec"]["autoscaling"] = {"enabled": False}
    body["spec"]["podDisruptionBudget"] = {"enabled": False}
    gateway = LLMGateway.model_validate(body)
    assert gw.build_hpa(gateway, owner(body)) is None
    assert gw.build_pdb(gateway, owner(body)) is None
    deploy = gw.build_deployment(gateway, owner(body), "h", gw.GatewayMounts(), DEFAULTS)
    assert deploy["spec"]["replicas"] == 2
    hpa = _by("HorizontalPodAutoscaler", names.gateway("thrifty"))
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)


def test_qdrant_statefulset_headless_service_and_pvc_retention() -> None:
    sts = _by("StatefulSet", names.qdrant("default-cache"))
    svc = _by("Service", names.qdrant("default-cache"))
    assert svc["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == "2Gi"
    # deletionPolicy: Retain keeps the vectors when the policy goes away
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"


def test_collection_job_carries_vector_size_and_tenant_index() -> None:
    job = next(
        m
        for m in MANIFESTS
        if m["kind"] == "Job"
        and "-collection-" in m["metadata"]["name"]
        and "delete" not in m["metadata"]["name"]
    )
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["operator", "ensure-collection"]
    assert args[args.index("--size") + 1] == "384"
    assert args[args.index("--collection") + 1] == f"thrifty-{NS}-default-cache"
    assert args[args.index("--tenant-field") + 1] == "partition"
    # Its own collection may be recreated at a new vector size (unless it holds entries of
    # policies other than this one); a named one (maybe shared with other policies) never is.
    assert "--recreate" in args
    assert args[args.index("--policy") + 1] == f"{NS}/default-cache"
    delete = cache.build_collection_delete_job(
        CachePolicy.model_validate(example("cachepolicy")), owner(example("cachepolicy")), DEFAULTS
    )
    assert delete is not None
    delete_args = delete["spec"]["template"]["spec"]["containers"][0]["args"]
    assert delete_args[delete_args.index("--policy") + 1] == f"{NS}/default-cache"
    body = example("cachepolicy")
    body["spec"]["stores"]["qdrant"]["collection"] = "shared-cache"
    named = cache.build_collection_job(CachePolicy.model_validate(body), owner(body), DEFAULTS)
    assert named is not None
    assert "--recreate" not in named["spec"]["template"]["spec"]["containers"][0]["args"]


def test_external_stores_build_nothing() -> None:
    body = example("cachepolicy")
    body["spec"]["stores"] = {
        "redis": {"managed": False, "url": "redis://redis.example:6379/0"},
        "qdrant": {"managed": False, "url": "http://qdrant.example:6333"},
    }
    policy = CachePolicy.model_validate(body)
    assert cache.build_stores(policy, owner(body), DEFAULTS) == []
    assert cache.redis_url(policy) == "redis://redis.example:6379/0"
    job = cache.build_collection_job(policy, owner(body), DEFAULTS)
    assert (
        job is not None
        and "http://qdrant.example:6333" in job["spec"]["template"]["spec"]["containers"][0]["args"]
    )


def test_batch_redis_never_evicts_and_worker_uses_gateway_config() -> None:
    redis = _by("Deployment", names.redis("default-batch"))
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    cache_redis = _by("Deployment", names.redis("default-cache"))
    cargs = cache_redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert cargs[cargs.index("--maxmemory-policy") + 1] == "volatile-lru"
    # Without maxmemory Redis never evicts: the cache is capped (1 GiB without a memory limit),
    # the queue is not (it must not lose entries).
    assert cargs[cargs.index("--maxmemory") + 1] == str(1024**3)
    assert "--maxmemory" not in args
    worker = _by("Deployment", names.batch_worker("default-batch"))
    pod = worker["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"][0] == "batch-worker"
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {names.batch_files("default-batch")}
    cm = next(v for v in pod["volumes"] if v["name"] == "config")
    assert cm["configMap"]["name"] == names.gateway_config("thrifty")


def test_gpu_serving_requests_gpus_and_targets_gpu_nodes() -> None:
    deploy = _by("Deployment", names.student("summariser"))
    pod = deploy["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    args = pod["containers"][0]["args"]
    assert (
        "--enable-lora" in args and "summariser=/var/lib/thrifty/data/students/v1/adapter" in args
    )
    assert pod["containers"][0]["command"] == ["vllm"] and args[0] == "serve"
    train = _by("Job", names.train_job("summariser", "v1"))
    tpod = train["spec"]["template"]["spec"]
    assert tpod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert tpod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert [c["name"] for c in tpod["initContainers"]] == ["export"]
    assert "nvidia.com/gpu" not in tpod["initContainers"][0].get("resources", {}).get("limits", {})
    assert _by("Service", names.student("summariser"))["spec"]["ports"][0]["port"] == 8000
    # torch, transformers and peft: the LM image, for both steps; the base model's download
    # goes to the data volume, not the small /tmp emptyDir
    steps = [*tpod["initContainers"], *tpod["containers"]]
    assert {c["image"] for c in steps} == {DEFAULTS.distill_lm_image}
    for step in steps:
        env = {e["name"]: e["value"] for e in step["env"]}
        assert env["HF_HOME"].startswith("/var/lib/thrifty/data/")
    main = pod["containers"][0]
    assert {e["name"]: e.get("value") for e in main["env"]}["HOME"] == "/var/cache/thrifty"


def test_classifier_student_needs_no_serving_deployment() -> None:
    body = example("distilledmodel")
    model = DistilledModel.model_validate(body)
    assert serving.build_serving(model, owner(body), "v1", DEFAULTS) == []
    train = distill.build_train_job(model, owner(body), "v1", DEFAULTS)
    assert "nodeSelector" not in train["spec"]["template"]["spec"]
    steps = [*train["spec"]["template"]["spec"]["initContainers"]]
    steps += train["spec"]["template"]["spec"]["containers"]
    assert {c["image"] for c in steps} == {DEFAULTS.distill_image}


def _evaluation() -> str:
    return distill.evaluation_run(DistilledModel.model_validate(example("distilledmodel")), "v1")


def test_eval_report_access_is_limited_to_one_configmap() -> None:
    role = _by("Role", names.distill_service_account("banking-intent"))
    (rule,) = role["rules"]
    assert rule["resources"] == ["configmaps"]
    assert rule["resourceNames"] == [names.eval_report("banking-intent", _evaluation())]
    assert set(rule["verbs"]) == {"get", "patch"}
    job = _by("Job", names.eval_job("banking-intent", _evaluation()))
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == role["metadata"]["name"]


def test_candidate_version_is_stable_and_follows_training_inputs() -> None:
    body = example("distilledmodel")
    first = distill.candidate_version(DistilledModel.model_validate(body))
    assert first == distill.candidate_version(DistilledModel.model_validate(body))
    body["spec"]["routing"]["confidenceThreshold"] = 0.9  # routing does not retrain
    assert first == distill.candidate_version(DistilledModel.model_validate(body))
    body["spec"]["training"]["epochs"] = 7
    assert first != distill.candidate_version(DistilledModel.model_validate(body))


def test_the_retrain_annotation_starts_a_new_run() -> None:
    """`kubectl annotate distilledmodel x thrifty.dev/retrain=<new value> --overwrite` (by
    hand or from a CronJob) trains a new version on what was captured since; other
    annotations do not."""
    body = example("distilledmodel")
    plain = distill.candidate_version(DistilledModel.model_validate(body))
    body["metadata"]["annotations"] = {"team": "support"}
    assert distill.candidate_version(DistilledModel.model_validate(body)) == plain
    body["metadata"]["annotations"][distill.RETRAIN_ANNOTATION] = "2026-12-07"
    dated = distill.candidate_version(DistilledModel.model_validate(body))
    assert dated != plain
    body["metadata"]["annotations"][distill.RETRAIN_ANNOTATION] = "2026-12-08"
    assert distill.candidate_version(DistilledModel.model_validate(body)) not in (plain, dated)
    # as the handler reads the body
    body["metadata"]["annotations"][distill.RETRAIN_ANNOTATION] = "2026-12-07"
    assert distill.candidate_version(parse(DistilledModel, body)) == dated


def test_builders_are_deterministic() -> None:
    assert all_manifests() == MANIFESTS


def test_pipeline_jobs_run_the_distill_commands_on_the_shared_volume() -> None:
    train = _by("Job", names.train_job("banking-intent", "v1"))
    pod = train["spec"]["template"]["spec"]
    export, main = pod["initContainers"][0], pod["containers"][0]
    assert export["args"][:2] == ["distill", "export"] and main["args"][:2] == ["distill", "train"]
    assert (
        export["args"][export["args"].index("--capture-dir") + 1] == "/var/lib/thrifty/data/capture"
    )
    rule = train["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [3]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {names.distill_artifacts("banking-intent")}
    evaluate = _by("Job", names.eval_job("banking-intent", _evaluation()))
    args = evaluate["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:4] == [
        "operator",
        "publish-report",
        "--configmap",
        names.eval_report("banking-intent", _evaluation()),
    ]
    assert args[args.index("--") + 1 :][:3] == ["thrifty", "distill", "evaluate"]
    resource = yaml.safe_load(
        _by("ConfigMap", names.distill_resource("banking-intent"))["data"]["resource.yaml"]
    )
    assert DistilledModel.model_validate(resource).metadata.name == "banking-intent"


def test_gateway_mounts_capture_and_students_from_the_same_volume() -> None:
    deploy = _by("Deployment", names.gateway("thrifty"))
    mounts = deploy["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    by_path = {m["mountPath"]: m for m in mounts}
    capture = by_path["/var/lib/thrifty/capture/banking-intent"]
    students = by_path["/var/lib/thrifty/students/banking-intent"]
    assert capture["subPath"] == "capture" and students["subPath"] == "students"
    assert students["readOnly"] is True and capture["name"] == students["name"]


def test_a_managed_redis_keeps_headroom_under_its_memory_limit() -> None:
    from thrifty_core.api.cachepolicy import RedisStore
    from thrifty_operator.builders.stores import redis_maxmemory

    limited = RedisStore.model_validate({"resources": {"limits": {"memory": "2Gi"}}})
    assert redis_maxmemory(limited, evict=True) == 3 * 512 * 1024**2
    assert redis_maxmemory(limited, evict=False) == 3 * 512 * 1024**2  # noeviction refuses
    assert redis_maxmemory(RedisStore(), evict=True) == 1024**3
    assert redis_maxmemory(RedisStore(), evict=False) == 0


def test_the_keyspace_follows_the_vectors_not_where_they_come_from() -> None:
    body = example("cachepolicy")
    base = cache.keyspace_version(CachePolicy.model_validate(body))
    # A local-backend policy keeps the version it had before endpoint and key were ignored
    # (computed with that code): upgrading does not purge its caches.
    assert base == "v-6a86fcd575"
    # The precision changes the vectors only: the gateway's semantic keyspace follows it, the
    # exact layer is not purged.
    body["spec"]["semantic"]["embedding"]["precision"] = "float32"
    assert cache.keyspace_version(CachePolicy.model_validate(body)) == base
    remote = {
        "backend": "openai",
        "model": "text-embedding-3-small",
        "dimensions": 1536,
        "endpoint": "https://api.openai.com/v1",
        "apiKeySecretRef": {"name": "emb", "key": "k"},
    }
    body["spec"]["semantic"]["embedding"] = remote
    first = cache.keyspace_version(CachePolicy.model_validate(body))
    assert first != base
    body["spec"]["semantic"]["embedding"] = {
        **remote,
        "endpoint": "https://proxy.example/v1",
        "apiKeySecretRef": {"name": "emb-rotated", "key": "k2"},
    }
    assert cache.keyspace_version(CachePolicy.model_validate(body)) == first
    body["spec"]["semantic"]["embedding"] = {**remote, "model": "text-embedding-3-large"}
    assert cache.keyspace_version(CachePolicy.model_validate(body)) != first
    body["spec"]["scope"] = "shared"
    body["spec"]["semantic"]["embedding"] = remote
    assert cache.keyspace_version(CachePolicy.model_validate(body)) != first


def test_stores_a_policy_no_longer_runs_are_named_for_removal() -> None:
    body = example("cachepolicy")
    running = CachePolicy.model_validate(body)
    assert cache.unused_stores(running, owner(body)) == []
    body["spec"]["semantic"]["enabled"] = False
    body["spec"]["stores"] = {"redis": {"managed": False, "url": "redis://r.example:6379/0"}}
    gone = cache.unused_stores(CachePolicy.model_validate(body), owner(body))
    assert gone == [
        ("apps/v1", "Deployment", "default-cache-redis"),
        ("v1", "Service", "default-cache-redis"),
        ("networking.k8s.io/v1", "NetworkPolicy", "default-cache-redis"),
        # (the Qdrant StatefulSet is scaled to zero instead: see below)
        ("v1", "Service", "default-cache-qdrant"),
        ("networking.k8s.io/v1", "NetworkPolicy", "default-cache-qdrant"),
    ]


def test_a_qdrant_volume_claim_is_owned_by_the_policy_only_under_delete() -> None:
    """With deletionPolicy Delete the policy co-owns the claim the StatefulSet controller
    made (not as its controller), so the claim outlives the StatefulSet (a semantic layer
    turned off) and goes with the policy; with Retain it does not."""
    body = example("cachepolicy")
    sts = {"metadata": {"uid": "uid-sts"}}
    for deletion in ("Delete", "Retain"):
        body["spec"]["deletionPolicy"] = deletion
        policy, who = CachePolicy.model_validate(body), owner(body)
        bare: dict[str, Any] = {"metadata": {"name": "storage-default-cache-qdrant-0"}}
        by_sts = {"metadata": {"ownerReferences": [{"uid": "uid-sts", "controller": True}]}}
        both = {"metadata": {"ownerReferences": [{"uid": "uid-sts"}, {"uid": who.uid}]}}
        change = cache.claim_ownership(policy, who, bare)
        if deletion == "Delete":
            assert change is not None
            assert change["metadata"]["name"] == "storage-default-cache-qdrant-0"
            (ref,) = change["metadata"]["ownerReferences"]
            assert ref == {
                "apiVersion": "thrifty.dev/v1alpha1",
                "kind": "CachePolicy",
                "name": "default-cache",
                "uid": who.uid,
            }  # (no `controller`: the StatefulSet controller's reference may be one)
            assert cache.claim_ownership(policy, who, both) is None
        else:
            assert change is None
            removal = cache.claim_ownership(policy, who, both)
            assert removal is not None and "ownerReferences" not in removal["metadata"]
        assert cache.claim_held_by(by_sts, sts, who)
        assert not cache.claim_held_by(both, sts, who)
        assert not cache.claim_held_by(bare, sts, who)
        assert not cache.claim_held_by(None, sts, who)
    release = cache.qdrant_release(owner(body))
    assert release["spec"] == {
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"}
    }


def test_a_cache_policys_redis_volume_follows_its_deletion_policy() -> None:
    """The volume holds cached answers and, for the gateways using the policy, the usage
    ledger, budget spend and rate limits: with Retain (the default) it outlives the policy
    (no owner reference for the garbage collector), with Delete it goes with it."""
    body = example("cachepolicy")
    for policy, owned in (("Retain", False), ("Delete", True)):
        body["spec"]["deletionPolicy"] = policy
        built = cache.build_stores(CachePolicy.model_validate(body), owner(body), DEFAULTS)
        (pvc,) = [
            m
            for m in built
            if m["kind"] == "PersistentVolumeClaim" and "redis" in m["metadata"]["name"]
        ]
        assert ("ownerReferences" in pvc["metadata"]) is owned, policy


def test_the_replica_count_is_handed_over_before_the_hpa_takes_it() -> None:
    """Autoscaling turned on: the operator stops applying `spec.replicas`; as its only owner,
    the field would be removed and fall back to 1. It is first applied, at its live value,
    under a second field manager, and only while the operator still owns it."""
    live: dict[str, Any] = {
        "metadata": {
            "name": "thrifty-gateway",
            "namespace": NS,
            "managedFields": [
                {
                    "manager": "thrifty-operator",
                    "operation": "Apply",
                    "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}},
                },
                {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {}},
            ],
        },
        "spec": {"replicas": 6},
    }
    assert gw.owns_replicas(live, "thrifty-operator")
    assert not gw.owns_replicas(live, gw.REPLICAS_HANDOVER)
    assert gw.replicas_handover(live) == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "thrifty-gateway", "namespace": NS},
        "spec": {"replicas": 6},
    }
    live["metadata"]["managedFields"][0]["fieldsV1"] = {"f:spec": {"f:template": {}}}
    assert not gw.owns_replicas(live, "thrifty-operator")
    assert not gw.owns_replicas(None, "thrifty-operator")


def _lm(**serving: Any) -> tuple[DistilledModel, Owner]:
    body = example("distilledmodel")
    body["metadata"]["name"] = "summariser"
    body["spec"]["student"] = {"kind": "causal-lm", "baseModel": "Qwen/Qwen2.5-0.5B-Instruct"}
    body["spec"]["serving"] = {**body["spec"]["serving"], **serving}
    return DistilledModel.model_validate(body), owner(body)


def test_vllm_gets_time_to_load_the_model_before_liveness_counts() -> None:
    """vLLM answers /health only once the model is loaded (minutes): a startup probe covers
    that (30 min by default, spec.serving.startupTimeoutSeconds), liveness starts after it."""
    model, own = _lm()
    deploy, *_ = serving.build_serving(model, own, "v1", DEFAULTS)
    main = deploy["spec"]["template"]["spec"]["containers"][0]
    startup = main["startupProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    assert "initialDelaySeconds" not in main["livenessProbe"]  # the startup probe gates it
    assert deploy["spec"]["progressDeadlineSeconds"] > 1800
    model, own = _lm(startupTimeoutSeconds=3600)
    deploy, *_ = serving.build_serving(model, own, "v1", DEFAULTS)
    startup = deploy["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 3600


def test_vllm_splits_the_model_over_every_gpu_it_asks_for() -> None:
    model, own = _lm(gpu={"count": 2})
    deploy, *_ = serving.build_serving(model, own, "v1", DEFAULTS)
    main = deploy["spec"]["template"]["spec"]["containers"][0]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "2"
    args = main["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "2"


def test_a_new_student_version_rolls_out_without_a_spare_gpu() -> None:
    """The default rolling update starts an extra GPU pod first: on a full pool it stays
    Pending for ever. No surge: one old pod goes, then its replacement starts."""
    model, own = _lm(replicas=2)
    deploy, *_ = serving.build_serving(model, own, "v1", DEFAULTS)
    assert deploy["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }


def test_each_run_trains_and_evaluates_its_own_version_on_its_own_snapshot() -> None:
    model = DistilledModel.model_validate(example("distilledmodel"))
    own = owner(example("distilledmodel"))
    train = distill.build_train_job(model, own, "vaaaa1111", DEFAULTS)
    evaluate = distill.build_eval_job(model, own, "vaaaa1111", DEFAULTS)
    pod = train["spec"]["template"]["spec"]
    export, main = pod["initContainers"][0]["args"], pod["containers"][0]["args"]
    snapshot = "/var/lib/thrifty/data/snapshot/vaaaa1111"
    assert export[export.index("--snapshot-dir") + 1] == snapshot
    assert main[main.index("--snapshot-dir") + 1] == snapshot
    assert main[main.index("--version") + 1] == "vaaaa1111"
    args = evaluate["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--snapshot-dir") + 1] == snapshot
    assert args[args.index("--version") + 1] == "vaaaa1111"
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["THRIFTY_SNAPSHOT_DIR"] == snapshot
    # finished Jobs do not pile up
    assert train["spec"]["ttlSecondsAfterFinished"] == distill.JOB_TTL_SECONDS
    assert evaluate["spec"]["ttlSecondsAfterFinished"] == distill.JOB_TTL_SECONDS


def test_a_new_gate_or_threshold_evaluates_again_without_retraining() -> None:
    body = example("distilledmodel")
    model = DistilledModel.model_validate(body)
    run = distill.candidate_version(model)
    first = distill.evaluation_run(model, run)
    assert first.startswith(f"{run}-")
    for path, value in (
        (("evaluation", "minAgreement"), 0.8),
        (("evaluation", "minCoverage"), 0.3),
        (("routing", "confidenceThreshold"), 0.2),
    ):
        changed = example("distilledmodel")
        changed["spec"][path[0]][path[1]] = value
        other = DistilledModel.model_validate(changed)
        assert distill.candidate_version(other) == run  # no retraining
        assert distill.evaluation_run(other, run) != first  # a new evaluation
    # the held-out share changes what the student is trained on: a new run
    body["spec"]["evaluation"]["heldOutFraction"] = 0.3
    assert distill.candidate_version(DistilledModel.model_validate(body)) != run
    # names stay valid: a 40-character resource's evaluate Job name fits a label value
    assert len(names.eval_job("x" * 40, first)) <= 63


def test_artifacts_volume_size_and_class_come_from_the_spec() -> None:
    body = example("distilledmodel")
    claim = distill.build_artifacts_pvc(DistilledModel.model_validate(body), owner(body), DEFAULTS)
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"  # the default
    assert "storageClassName" not in claim["spec"]
    body["spec"]["artifacts"] = {"size": "200Gi", "storageClassName": "fast-rwx"}
    claim = distill.build_artifacts_pvc(DistilledModel.model_validate(body), owner(body), DEFAULTS)
    assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert claim["spec"]["storageClassName"] == "fast-rwx"


def test_an_earlier_evaluations_report_is_blanked() -> None:
    body = example("distilledmodel")
    reset = distill.build_report_reset(owner(body), "banking-intent-eval-v1-abcd")
    assert reset["kind"] == "ConfigMap" and reset["data"] == {distill.REPORT_KEY: ""}
    assert reset["metadata"]["ownerReferences"][0]["uid"] == "uid-distilledmodel"
