"""Helpers for the operator e2e tests: volumes, a ServiceAccount kubeconfig, the operator process.

The operator runs IN THIS MACHINE as a `thrifty operator` subprocess (kwok nodes execute no
containers), authenticated with a token of the chart's ServiceAccount: whatever it manages to
do, the chart's RBAC allowed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.k8s import Cluster, tool_path, wait_for
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
EXAMPLES = ("cachepolicy.yaml", "batchqueue.yaml", "llmgateway.yaml", "distilledmodel.yaml")
KINDS = ("llmgateway", "cachepolicy", "batchqueue", "distilledmodel")


def restricted_namespace(cluster: Cluster, name: str) -> None:
    """A namespace enforcing the `restricted` Pod Security Standard."""
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, *(f"{k}={v}" for k, v in RESTRICTED.items()))


def install_watching(
    cluster: Cluster, release: str, release_ns: str, watched: tuple[str, ...], *others: str
) -> str:
    """A namespaced install: `watched`, `others` and `release_ns` created (restricted), the CRDs
    applied and the chart installed in `release_ns` with `operator.watchNamespaces` = `watched`.
    Returns the operator's ServiceAccount name."""
    for name in (*watched, *others, release_ns):
        restricted_namespace(cluster, name)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    chart = str(ROOT / "charts" / "thrifty")
    namespaces = f"operator.watchNamespaces={{{','.join(watched)}}}"
    helm(cluster, "install", release, chart, "-n", release_ns, "--set", namespaces)
    return f"{release}-thrifty-operator"


def helm(cluster: Cluster, *args: str) -> str:
    result = helm_run(cluster, *args)
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
    return result.stdout


def helm_run(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """helm against `cluster`, whatever its exit status."""
    return subprocess.run(
        [str(tool_path("helm")), *args],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def create_volumes(cluster: Cluster, prefix: str, count: int) -> list[str]:
    """hostPath PersistentVolumes without a class (the test cluster has no provisioner)."""
    names = [f"{prefix}-pv-{i}" for i in range(count)]
    docs = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": n, "labels": {"thrifty.dev/e2e": prefix}},
            "spec": {
                "capacity": {"storage": "100Gi"},
                "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": f"/tmp/{n}"},
            },
        }
        for n in names
    ]
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    )
    return names


def delete_volumes(cluster: Cluster, prefix: str) -> None:
    cluster.kubectl("delete", "pv", "-l", f"thrifty.dev/e2e={prefix}", "--wait=false", check=False)


def service_account_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount (a bound token, 2 hours)."""
    token = cluster.kubectl(
        "create", "token", account, "-n", namespace, "--duration=2h"
    ).stdout.strip()
    admin = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    server = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": server}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": account}}],
        "current-context": "e2e",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@dataclass
class OperatorProcess:
    """`thrifty operator -n NS` as a subprocess; kill it, start it again."""

    kubeconfig: Path
    namespace: str
    log_path: Path
    drift_seconds: float = 3.0
    proc: subprocess.Popen[bytes] | None = None
    health_port: int = 0
    also_watch: tuple[str, ...] = ()  # more namespaces
    instance: str = ""  # THRIFTY_OPERATOR_INSTANCE, as the chart sets it

    def start(self) -> None:
        self.health_port = free_port()
        env = dict(os.environ)
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            THRIFTY_OPERATOR_DRIFT_INTERVAL_SECONDS=str(self.drift_seconds),
            THRIFTY_OPERATOR_LOG_FORMAT="plain",
            THRIFTY_OPERATOR_INSTANCE=self.instance,
        )
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "thrifty_cli",
                "operator",
                *(f"--namespace={ns}" for ns in (self.namespace, *self.also_watch)),
                f"--liveness=http://127.0.0.1:{self.health_port}/healthz",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()
        wait_for(self.healthy, timeout=60, message=lambda: f"operator health\n{self.tail()}")

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the operator exited\n{self.tail()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, no chance to finish what it was doing."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 60) -> str:
        with suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@contextmanager
def running_operator(kubeconfig: Path, namespace: str, log_path: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(kubeconfig, namespace, log_path)
    op.start()
    try:
        yield op
    finally:
        op.stop()


@contextmanager
def installed_operator(
    cluster: Cluster, ns: str, system_ns: str, release: str, tmp: Path, volumes: int
) -> Iterator[OperatorProcess]:
    """The chart (CRDs, RBAC) in `system_ns` and the operator, as the chart's ServiceAccount,
    watching `ns` (restricted, with `volumes` PersistentVolumes and examples/secrets.yaml);
    all of it removed on exit, the operator's log tail printed."""
    operator: OperatorProcess | None = None
    try:
        restricted_namespace(cluster, ns)
        restricted_namespace(cluster, system_ns)
        create_volumes(cluster, ns, volumes)
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        helm(cluster, "install", release, str(ROOT / "charts" / "thrifty"), "-n", system_ns)
        kubeconfig = service_account_kubeconfig(
            cluster, system_ns, f"{release}-operator", tmp / "operator.kubeconfig"
        )
        operator = OperatorProcess(kubeconfig, ns, tmp / "operator.log")
        operator.start()
        cluster.kubectl("apply", "-n", ns, "-f", str(ROOT / "examples" / "secrets.yaml"))
        yield operator
    finally:
        if operator is not None:
            print(operator.tail(200))  # noqa: T201 - shown by pytest only when a test failed
            operator.stop()
        helm(cluster, "uninstall", release, "-n", system_ns, "--ignore-not-found")
        cluster.delete_namespace(ns)
        cluster.delete_namespace(system_ns)
        delete_volumes(cluster, ns)


def uninstall_and_clean(
    cluster: Cluster,
    operator: OperatorProcess | None,
    release: str,
    release_ns: str,
    namespaces: tuple[str, ...],
) -> None:
    """A test's teardown: stop its operator (its log is printed, which pytest shows when the
    test failed), uninstall the release, take the finalizers off the Thrifty resources left
    in `namespaces` (no operator is left to do it) and delete the namespaces."""
    if operator is not None:
        print(operator.tail(100))  # noqa: T201 - shown by pytest only when a test failed
        operator.stop()
    helm(cluster, "uninstall", release, "-n", release_ns, "--ignore-not-found")
    for name in (*namespaces, release_ns):
        if cluster.kubectl("get", "namespace", name, check=False).returncode == 0:
            for kind in ("llmgateways", "cachepolicies", "batchqueues", "distilledmodels"):
                for item in cluster.get_json(kind, "-n", name)["items"]:
                    cluster.kubectl(
                        "patch", kind, item["metadata"]["name"], "-n", name,
                        "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False,
                    )  # fmt: skip
        cluster.delete_namespace(name)


def get(cluster: Cluster, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    obj: dict[str, Any] = json.loads(result.stdout)
    return obj


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in (obj or {}).get("status", {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def wait_ready(
    cluster: Cluster, kind: str, namespace: str, name: str, timeout: float = 120
) -> dict[str, Any]:
    """Wait for Ready=True with an up-to-date observedGeneration."""

    def probe() -> dict[str, Any] | None:
        obj = get(cluster, kind, namespace, name)
        if obj is None:
            return None
        status = obj.get("status") or {}
        fresh = status.get("observedGeneration") == obj["metadata"].get("generation")
        return obj if fresh and condition(obj, "Ready").get("status") == "True" else None

    def explain() -> str:
        obj = get(cluster, kind, namespace, name)
        return f"{kind}/{name} Ready: {json.dumps((obj or {}).get('status'), indent=1)}"

    return wait_for(probe, timeout=timeout, interval=1.0, message=explain)


def wait_gone(cluster: Cluster, kind: str, namespace: str, name: str, timeout: float = 90) -> None:
    wait_for(
        lambda: get(cluster, kind, namespace, name) is None,
        timeout=timeout,
        interval=1.0,
        message=f"{kind}/{name} to be deleted",
    )


def simulate_evaluation(
    cluster: Cluster,
    namespace: str,
    model: str,
    agreement: float,
    coverage: float,
    version: str = "v0001",
) -> str:
    """Write the report the evaluate Job would publish (kwok runs no containers).

    kwok completes Job pods by itself, so the train and evaluate Jobs reach Complete on their
    own; only the report content (what `thrifty operator publish-report` writes) is supplied.
    """
    selector = f"thrifty.dev/owner-name={model},app.kubernetes.io/name=thrifty-distill-eval"

    def report_map() -> str | None:
        items = cluster.get_json("configmaps", "-n", namespace, "-l", selector)["items"]
        return str(items[0]["metadata"]["name"]) if items else None

    name = wait_for(report_map, timeout=90, interval=1.0, message=f"{model} report ConfigMap")
    report = {
        "version": version,
        "passed": agreement >= 0.9,
        "agreement": agreement,
        "coverage": coverage,
        "examples": 2000,
    }
    cluster.kubectl(
        "patch",
        "configmap",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"data": {"report.json": json.dumps(report)}}),
    )
    return version


def pod_template_hash(cluster: Cluster, namespace: str, deployment: str) -> str:
    obj = get(cluster, "deployment", namespace, deployment) or {}
    annotations = obj.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations")
    return str((annotations or {}).get("thrifty.dev/config-hash", ""))


def settle(seconds: float) -> None:
    """Give the drift timer time to act (used only before asserting that nothing changed)."""
    time.sleep(seconds)
