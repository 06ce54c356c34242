"""Helpers for end-to-end tests against the local test control plane.

The control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a kwok
controller with fake CPU and GPU nodes) is built by ``scripts/k8s/build.sh`` from Go modules and
run by ``scripts/k8s/cluster.sh`` on 127.0.0.1. This module wraps those scripts and the real
``kubectl`` so that any e2e test (control plane, CRDs, operator, chart) can use them:

    from tests.e2e.k8s import Cluster, tool_path, wait_for

    def test_something(k8s_cluster: Cluster, namespace: str) -> None:
        k8s_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
        helm = tool_path("helm")
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "k8s"
BUILD_SCRIPT = SCRIPTS / "build.sh"
CLUSTER_SCRIPT = SCRIPTS / "cluster.sh"

DEFAULT_K8S_VERSION = "v1.36.3"
TOOLS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "etcd",
    "kwok",
    "kwokctl",
    "helm",
    "kubeconform",
)
CPU_NODES = ("thrifty-cpu-0", "thrifty-cpu-1")
GPU_NODES = ("thrifty-gpu-0", "thrifty-gpu-1")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
GPU_TOLERATION: dict[str, str] = {
    "key": "nvidia.com/gpu",
    "operator": "Exists",
    "effect": "NoSchedule",
}

BUILD_TIMEOUT_S = 3600.0
UP_TIMEOUT_S = 600.0

T = TypeVar("T")


class ClusterError(RuntimeError):
    """The test control plane could not be built, started or reached."""


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message carries the command and its output."""

    def __init__(self, args: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        self.args_ = list(args)
        self.result = result
        super().__init__(
            f"kubectl {' '.join(args)} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout.strip()}\n--- stderr ---\n{result.stderr.strip()}"
        )


# --- paths -------------------------------------------------------------------------------------


def k8s_version() -> str:
    """The Kubernetes version the scripts build and run (``K8S_VERSION``)."""
    return os.environ.get("K8S_VERSION") or DEFAULT_K8S_VERSION


def cache_root() -> Path:
    """Root of the build cache (``THRIFTY_K8S_CACHE``, default ``~/.cache/thrifty-k8s``)."""
    env = os.environ.get("THRIFTY_K8S_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "thrifty-k8s"


def bin_dir() -> Path:
    """Directory of the cached binaries for :func:`k8s_version`."""
    return cache_root() / k8s_version() / "bin"


def kubectl_path() -> Path:
    """The real kubectl client: ``KUBECTL``, else the pinned one scripts/k8s/build.sh builds
    (the control plane's version: a clean CI box has no other), else the one on PATH."""
    env = os.environ.get("KUBECTL")
    pinned = bin_dir() / "kubectl"
    if env:
        found = env
    elif os.access(pinned, os.X_OK):
        found = str(pinned)
    else:
        found = shutil.which("kubectl") or "/usr/bin/kubectl"
    path = Path(found)
    if not path.is_file():
        raise ClusterError(f"kubectl not found at {path}; install it or set KUBECTL")
    return path


def tools_present() -> bool:
    """True when every pinned binary is already in the cache."""
    return all(os.access(bin_dir() / name, os.X_OK) for name in TOOLS)


def ensure_tools() -> Path:
    """Build the pinned binaries (a fast no-op when they are cached); returns :func:`bin_dir`."""
    result = _run_script(BUILD_SCRIPT, [], timeout=BUILD_TIMEOUT_S)
    if result.returncode != 0:
        raise ClusterError(
            f"{BUILD_SCRIPT} failed (exit {result.returncode}); it needs Go and the Go module "
            f"proxy.\n{_tail(result.stderr)}"
        )
    return bin_dir()


def tool_path(name: str) -> Path:
    """Path of a cached binary (``helm``, ``kubeconform``, ``kwokctl``, ...), building if needed."""
    if name == "kubectl":
        return kubectl_path()
    if name not in TOOLS:
        raise ValueError(f"unknown tool {name!r}; known: kubectl, {', '.join(TOOLS)}")
    path = bin_dir() / name
    if not os.access(path, os.X_OK):
        ensure_tools()
    if not os.access(path, os.X_OK):
        raise ClusterError(f"{path} is missing after {BUILD_SCRIPT}")
    return path


# --- cluster -----------------------------------------------------------------------------------


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_script(
    script: Path, args: Sequence[str], *, timeout: float
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.setdefault("K8S_VERSION", k8s_version())
    try:
        return subprocess.run(
            [str(script), *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{script} {' '.join(args)} timed out after {timeout:.0f}s") from exc


def cluster_running() -> bool:
    """True when ``cluster.sh status`` reports a healthy cluster."""
    if not tools_present():
        return False
    return _run_script(CLUSTER_SCRIPT, ["status"], timeout=60).returncode == 0


def kubeconfig_path() -> Path:
    """Where ``cluster.sh`` keeps the kubeconfig of the test cluster."""
    result = _run_script(CLUSTER_SCRIPT, ["kubeconfig"], timeout=30)
    if result.returncode != 0:
        raise ClusterError(f"cluster.sh kubeconfig failed:\n{_tail(result.stderr)}")
    return Path(result.stdout.strip())


def start_cluster() -> Path:
    """Build the tools if needed and run ``cluster.sh up``; returns the kubeconfig path."""
    ensure_tools()
    result = _run_script(CLUSTER_SCRIPT, ["up"], timeout=UP_TIMEOUT_S)
    if result.returncode != 0:
        raise ClusterError(
            f"cluster.sh up failed (exit {result.returncode}):\n{_tail(result.stderr, 120)}"
        )
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("export KUBECONFIG=")]
    if len(lines) != 1:
        raise ClusterError(f"cluster.sh up printed no kubeconfig line:\n{result.stdout}")
    path = Path(lines[0].removeprefix("export KUBECONFIG="))
    if not path.is_file():
        raise ClusterError(f"cluster.sh up printed {path}, which does not exist")
    return path


def stop_cluster() -> None:
    """Run ``cluster.sh down`` (stops every process of the cluster, removes its state)."""
    result = _run_script(CLUSTER_SCRIPT, ["down"], timeout=120)
    if result.returncode != 0:
        raise ClusterError(f"cluster.sh down failed:\n{_tail(result.stderr)}")


def run_kubectl(
    *args: str,
    kubeconfig: Path,
    input: str | None = None,
    check: bool = True,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run the real kubectl against ``kubeconfig``; raises :class:`KubectlError` when ``check``."""
    env = dict(os.environ)
    env["KUBECONFIG"] = str(kubeconfig)
    result = subprocess.run(
        [str(kubectl_path()), *args],
        env=env,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise KubectlError(args, result)
    return result


@dataclass(frozen=True)
class Cluster:
    """A running test control plane."""

    kubeconfig: Path
    started_here: bool = False

    @property
    def env(self) -> dict[str, str]:
        """``os.environ`` plus ``KUBECONFIG`` (and the cached tools first on ``PATH``)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster."""
        return run_kubectl(
            *args, kubeconfig=self.kubeconfig, input=input, check=check, timeout=timeout
        )

    def get_json(self, *args: str) -> Any:
        """``kubectl get ARGS -o json`` parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, manifest: str | Mapping[str, Any], *, namespace: str | None = None) -> None:
        """Server-side apply a YAML/JSON manifest (a string or one object as a dict)."""
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        ns = ["-n", namespace] if namespace else []
        self.kubectl(
            "apply", "--server-side", "--field-manager=thrifty-e2e", *ns, "-f", "-", input=text
        )

    def create_namespace(self, prefix: str = "e2e") -> str:
        """Create a uniquely named namespace and return its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        return name

    def delete_namespace(self, name: str, *, wait: bool = False) -> None:
        """Delete a namespace (in the background unless ``wait``)."""
        self.kubectl(
            "delete", "namespace", name, "--ignore-not-found", f"--wait={str(wait).lower()}"
        )

    @contextmanager
    def namespace(self, prefix: str = "e2e") -> Iterator[str]:
        """A unique namespace for the duration of the block."""
        name = self.create_namespace(prefix)
        try:
            yield name
        finally:
            self.delete_namespace(name)

    def pods(self, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        """Pods in ``namespace`` (optionally matching a label selector)."""
        sel = ["-l", selector] if selector else []
        items: list[dict[str, Any]] = self.get_json("pods", "-n", namespace, *sel)["items"]
        return items


@contextmanager
def cluster_session() -> Iterator[Cluster]:
    """Reuse a healthy running cluster, or start one and stop it again afterwards.

    ``THRIFTY_KEEP_CLUSTER=1`` keeps a cluster this started running for the next session.
    """
    if cluster_running():
        yield Cluster(kubeconfig=kubeconfig_path(), started_here=False)
        return
    kubeconfig = start_cluster()
    try:
        yield Cluster(kubeconfig=kubeconfig, started_here=True)
    finally:
        if os.environ.get("THRIFTY_KEEP_CLUSTER", "") not in ("1", "true", "yes"):
            stop_cluster()


# --- waiting -----------------------------------------------------------------------------------


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float = 60.0,
    interval: float = 0.5,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {text}")
        time.sleep(interval)


def deployment(
    name: str,
    *,
    replicas: int = 1,
    gpus: int = 0,
    tolerate_gpu: bool = False,
    image: str = "registry.k8s.io/pause:3.10",
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A minimal Deployment manifest (kwok fakes the containers, nothing is pulled)."""
    pod_labels = {"app": name, **(labels or {})}
    resources: dict[str, Any] = {"requests": {"cpu": "100m", "memory": "64Mi"}}
    if gpus:
        resources["limits"] = {GPU_RESOURCE: str(gpus)}
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": image, "resources": resources}],
    }
    if tolerate_gpu:
        spec["tolerations"] = [dict(GPU_TOLERATION)]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": pod_labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": pod_labels}, "spec": spec},
        },
    }
