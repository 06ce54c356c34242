"""The operator's guard rails on the real control plane (kwok nodes), with the chart's RBAC:
a BatchQueue serves one gateway; a CachePolicy finalizer never blocks its namespace's deletion.

One module-scoped install (chart, CRDs, the operator as the chart's ServiceAccount) watching one
namespace; tests run in file order and the last one deletes that namespace.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.e2e.k8s import Cluster, wait_for
from tests.e2e.operator_helpers import (
    ROOT,
    OperatorProcess,
    condition,
    get,
    installed_operator,
    wait_ready,
)
from tests.services import free_port, wait_for_port
from thrifty_core.config import parse_config

pytestmark = pytest.mark.e2e

SECRETS = "/var/run/thrifty/secrets"


@dataclass
class Install:
    cluster: Cluster
    ns: str
    operator: OperatorProcess


@pytest.fixture(scope="module")
def install(k8s_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    cluster = k8s_cluster
    suffix = uuid.uuid4().hex[:6]
    ns, system_ns = f"guard-{suffix}", f"thrifty-guard-{suffix}"
    release = f"thrifty-guard-{suffix}"  # the chart names its objects after a "thrifty-*" release
    tmp = tmp_path_factory.mktemp("guards")
    with installed_operator(cluster, ns, system_ns, release, tmp, volumes=10) as operator:
        yield Install(cluster, ns, operator)


def _gateway(ns: str, name: str, queue: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "llmgateway.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": ns}
    for key in ("cachePolicyRef", "autoscaling", "podDisruptionBudget"):
        body["spec"].pop(key)
    body["spec"].update(replicas=1, batchQueueRef={"name": queue})
    return body


def _batch_of(cluster: Cluster, ns: str, gateway: str) -> str | None:
    cm = get(cluster, "configmap", ns, f"{gateway}-gateway-config") or {}
    config = parse_config(yaml.safe_load(cm["data"]["gateway.yaml"]))
    return config.batch.name if config.batch else None


def _serves(cluster: Cluster, ns: str, gateway: str) -> bool:
    queue = get(cluster, "batchqueue", ns, "jobs") or {}
    worker = get(cluster, "deployment", ns, "jobs-batch-worker") or {}
    annotations = worker.get("spec", {}).get("template", {}).get("metadata", {})
    return bool(
        queue.get("status", {}).get("gateway") == gateway
        and (annotations.get("annotations") or {}).get("thrifty.dev/gateway") == gateway
    )


def test_a_batch_queue_serves_one_gateway(install: Install) -> None:
    """A second gateway on the same queue would run its lines with the first one's providers
    and keys and share its tenants' batches: it is refused (naming the holder) until the
    holder goes. The holder is the oldest, not the first by name."""
    cluster, ns = install.cluster, install.ns
    queue = yaml.safe_load((ROOT / "examples" / "batchqueue.yaml").read_text())
    queue["metadata"] = {"name": "jobs", "namespace": ns}
    cluster.apply(queue)
    cluster.apply(_gateway(ns, "zeta", "jobs"))
    zeta = wait_ready(cluster, "llmgateway", ns, "zeta", timeout=120)
    assert condition(zeta, "BatchQueueReady")["reason"] == "Serving"
    cluster.apply(_gateway(ns, "alpha", "jobs"))

    def refused() -> dict[str, Any] | None:
        obj = get(cluster, "llmgateway", ns, "alpha")
        return obj if condition(obj, "Ready").get("reason") == "BatchQueueInUse" else None

    alpha = wait_for(refused, timeout=60, message="alpha Ready=False BatchQueueInUse")
    assert condition(alpha, "Ready")["status"] == "False"
    assert "'zeta'" in condition(alpha, "BatchQueueReady")["message"]
    wait_for(lambda: _serves(cluster, ns, "zeta"), timeout=60, message="jobs serving zeta")
    assert _batch_of(cluster, ns, "zeta") == "jobs"
    assert _batch_of(cluster, ns, "alpha") is None  # neither its stream nor its files
    deploy = get(cluster, "deployment", ns, "alpha-gateway") or {}
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in deploy["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert "jobs-files" not in claims
    cluster.kubectl("delete", "llmgateway", "zeta", "-n", ns)
    alpha = wait_ready(cluster, "llmgateway", ns, "alpha", timeout=90)
    assert condition(alpha, "BatchQueueReady")["reason"] == "Serving"
    wait_for(lambda: _serves(cluster, ns, "alpha"), timeout=60, message="jobs serving alpha")
    assert _batch_of(cluster, ns, "alpha") == "jobs"
    cm = get(cluster, "configmap", ns, "alpha-gateway-config") or {}
    config = parse_config(yaml.safe_load(cm["data"]["gateway.yaml"]))
    assert config.batch is not None and config.batch.redis_password is not None
    assert config.batch.redis_password.file == f"{SECRETS}/jobs-redis-auth/password"
    for deployment in ("alpha-gateway", "jobs-batch-worker"):
        assert f"{SECRETS}/jobs-redis-auth" in _mount_paths(cluster, ns, deployment)
    # The last gateway goes: its config goes with it, so no worker is left running on it;
    # the queue says so (its lines wait in Redis for the next gateway).
    cluster.kubectl("delete", "llmgateway", "alpha", "-n", ns)

    def no_gateway() -> dict[str, Any] | None:
        obj = get(cluster, "batchqueue", ns, "jobs")
        gone = get(cluster, "deployment", ns, "jobs-batch-worker") is None
        return obj if gone and condition(obj, "Available").get("reason") == "NoGateway" else None

    wait_for(no_gateway, timeout=90, message="jobs NoGateway, its worker removed")


def _mount_paths(cluster: Cluster, ns: str, deployment: str) -> set[str]:
    obj = get(cluster, "deployment", ns, deployment) or {}
    container = obj["spec"]["template"]["spec"]["containers"][0]
    return {m["mountPath"] for m in container["volumeMounts"]}


def _secret(cluster: Cluster, ns: str, name: str) -> tuple[str, str]:
    """(uid, password) of a generated Redis password Secret."""
    obj = get(cluster, "secret", ns, name) or {}
    return obj["metadata"]["uid"], base64.b64decode(obj["data"]["password"]).decode()


def _redis_like(
    args: list[str], password: str, workdir: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """A real redis-server with the Deployment's arguments (kubelet's $(VAR) expansion done
    here; port and data dir moved to this machine)."""
    port = free_port()
    local = [password if a == "$(REDIS_PASSWORD)" else a for a in args]
    local[local.index("--port") + 1] = str(port)
    local[local.index("--dir") + 1] = str(workdir)
    proc = subprocess.Popen(
        [str(shutil.which("redis-server")), *local, "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc=proc)
    return proc, port


def test_managed_redis_needs_its_password_generated_once(install: Install, tmp_path: Path) -> None:
    cluster, ns = install.cluster, install.ns
    policy = yaml.safe_load((ROOT / "examples" / "cachepolicy.yaml").read_text())
    policy["metadata"] = {"name": "guarded", "namespace": ns}
    policy["spec"]["semantic"] = {"enabled": False}
    cluster.apply(policy)
    obj = wait_ready(cluster, "cachepolicy", ns, "guarded", timeout=120)
    secret = get(cluster, "secret", ns, "guarded-redis-auth") or {}
    (ref,) = secret["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["uid"]) == ("CachePolicy", obj["metadata"]["uid"])
    uid, password = _secret(cluster, ns, "guarded-redis-auth")
    assert len(password) >= 32
    redis_deploy = get(cluster, "deployment", ns, "guarded-redis") or {}
    container = redis_deploy["spec"]["template"]["spec"]["containers"][0]
    (env,) = container["env"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "guarded-redis-auth", "key": "password"}
    netpol = get(cluster, "networkpolicy", ns, "guarded-redis") or {}
    assert netpol["spec"]["podSelector"] == redis_deploy["spec"]["selector"]
    peers = [p["podSelector"]["matchLabels"] for p in netpol["spec"]["ingress"][0]["from"]]
    assert peers == [
        {"app.kubernetes.io/name": "thrifty-batch-worker"},
        {"app.kubernetes.io/name": "thrifty-gateway"},
    ]
    # The arguments really close the server: no password, no access.
    server, port = _redis_like(container["args"], password, tmp_path)
    try:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        assert redis.Redis(port=port, password=password).ping() is True
    finally:
        server.terminate()
        server.wait(timeout=10)
    # Reconciles (a spec edit, a hand-deleted Redis) never replace the password.
    old = redis_deploy["metadata"]["uid"]
    cluster.kubectl("delete", "deployment", "guarded-redis", "-n", ns)
    cluster.kubectl(
        "patch",
        "cachepolicy",
        "guarded",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec": {"exact": {"ttlSeconds": 3600}}}',
    )
    wait_for(
        lambda: (
            (d := get(cluster, "deployment", ns, "guarded-redis")) and d["metadata"]["uid"] != old
        ),
        timeout=60,
        message="guarded-redis to be recreated",
    )
    wait_ready(cluster, "cachepolicy", ns, "guarded", timeout=60)
    assert _secret(cluster, ns, "guarded-redis-auth") == (uid, password)


def test_a_cache_policy_named_like_a_queue_leaves_the_queues_redis_alone(
    install: Install,
) -> None:
    """Both kinds name their managed Redis `<name>-redis`: the newer one is refused with a
    clear condition, and the queue's Redis keeps its owner and `noeviction`."""
    cluster, ns = install.cluster, install.ns
    policy = yaml.safe_load((ROOT / "examples" / "cachepolicy.yaml").read_text())
    policy["metadata"] = {"name": "jobs", "namespace": ns}  # the queue of the first test
    policy["spec"]["semantic"] = {"enabled": False}
    cluster.apply(policy)

    def refused() -> dict[str, Any] | None:
        obj = get(cluster, "cachepolicy", ns, "jobs")
        return obj if condition(obj, "Ready").get("reason") == "InvalidSpec" else None

    obj = wait_for(refused, timeout=60, message="CachePolicy jobs Ready=False InvalidSpec")
    assert "BatchQueue jobs" in condition(obj, "SpecValid")["message"]
    redis_deploy = get(cluster, "deployment", ns, "jobs-redis") or {}
    (owner,) = redis_deploy["metadata"]["ownerReferences"]
    assert owner["kind"] == "BatchQueue"
    args = redis_deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    cluster.kubectl("delete", "cachepolicy", "jobs", "-n", ns, "--wait=true")


def test_a_store_the_policy_no_longer_runs_is_removed(install: Install) -> None:
    """Semantic layer switched off: the managed Qdrant (StatefulSet, Service, NetworkPolicy)
    goes, with the chart's RBAC; its volume stays, and the Redis the policy still runs stays."""
    cluster, ns = install.cluster, install.ns
    policy = yaml.safe_load((ROOT / "examples" / "cachepolicy.yaml").read_text())
    policy["metadata"] = {"name": "shrinks", "namespace": ns}
    cluster.apply(policy)
    wait_ready(cluster, "cachepolicy", ns, "shrinks", timeout=180)
    assert get(cluster, "statefulset", ns, "shrinks-qdrant") is not None
    cluster.kubectl(
        "patch",
        "cachepolicy",
        "shrinks",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec": {"semantic": {"enabled": false}}}',
    )

    def removed(kind: str) -> bool:
        return get(cluster, kind, ns, "shrinks-qdrant") is None

    for kind in ("statefulset", "service", "networkpolicy"):
        wait_for(partial(removed, kind), timeout=60, message=f"{kind} shrinks-qdrant removed")
    assert get(cluster, "deployment", ns, "shrinks-redis") is not None
    assert get(cluster, "service", ns, "shrinks-redis") is not None
    wait_ready(cluster, "cachepolicy", ns, "shrinks", timeout=60)


def test_deleting_the_namespace_is_not_blocked_by_the_collection_finalizer(
    install: Install,
) -> None:
    """The namespace controller deletes the policy; its finalizer cannot create the delete Job
    in a terminating namespace (403): it warns and lets go instead of retrying forever."""
    cluster, ns = install.cluster, install.ns
    policy = yaml.safe_load((ROOT / "examples" / "cachepolicy.yaml").read_text())
    policy["metadata"] = {"name": "doomed", "namespace": ns}
    policy["spec"]["deletionPolicy"] = "Delete"
    cluster.apply(policy)
    obj = wait_ready(cluster, "cachepolicy", ns, "doomed", timeout=120)
    assert obj["metadata"]["finalizers"] == ["thrifty.dev/finalizer"]
    cluster.delete_namespace(ns)
    wait_for(
        lambda: cluster.kubectl("get", "namespace", ns, check=False).returncode != 0,
        timeout=180,
        interval=1.0,
        message=lambda: f"namespace {ns} to be deleted\n{install.operator.tail(40)}",
    )
    log = install.operator.tail(400)
    assert f"cachepolicy {ns}/doomed released" in log
    assert "refused the delete Job (403" in log and "may remain" in log
