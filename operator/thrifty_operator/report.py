"""`thrifty operator publish-report -- CMD...`: run the evaluation, publish its summary.

Runs inside the evaluate Job (the distill image), so it needs nothing beyond the standard
library: it reads the pod's ServiceAccount token and patches the one ConfigMap the Job's Role
allows. The operator reads that ConfigMap to set `Evaluated` and the active version.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
GATE_FAILED = 2  # `thrifty distill evaluate` exit code when the gate did not pass


@dataclass(frozen=True)
class ApiTarget:
    """Where and as whom to write: the in-cluster API server and the pod's token."""

    server: str
    token: str
    namespace: str
    ca_file: str | None

    @classmethod
    def in_cluster(cls) -> ApiTarget:
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        return cls(
            server=f"https://{host}:{port}",
            token=(SA_DIR / "token").read_text().strip(),
            namespace=(SA_DIR / "namespace").read_text().strip(),
            ca_file=str(SA_DIR / "ca.crt"),
        )


def normalise(summary: dict[str, Any]) -> dict[str, Any]:
    """The evaluate command's summary -> the report the operator reads."""
    at = summary.get("at_threshold") or {}
    gate = summary.get("gate") or {}
    return {
        "version": str(summary["version"]),
        "passed": bool(gate.get("passed", False)),
        "agreement": float(at.get("agreement_with_fallback", 0.0)),
        "coverage": float(at.get("coverage", 0.0)),
        "examples": int(summary.get("examples", 0)),
    }


def patch_configmap(target: ApiTarget, name: str, data: dict[str, str]) -> None:
    url = f"{target.server}/api/v1/namespaces/{target.namespace}/configmaps/{name}"
    request = urllib.request.Request(
        url,
        method="PATCH",
        data=json.dumps({"data": data}).encode(),
        headers={
            "Authorization": f"Bearer {target.token}",
            "Content-Type": "application/merge-patch+json",
            "Accept": "application/json",
        },
    )
    context = ssl.create_default_context(cafile=target.ca_file)
    with urllib.request.urlopen(request, context=context, timeout=30) as resp:
        resp.read()


def run_and_publish(command: list[str], configmap: str, target: ApiTarget) -> int:
    """Run the evaluation; publish the report whether the gate passed or not."""
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.stderr:
        logger.info("evaluate: %s", proc.stderr.strip()[-2000:])
    if proc.returncode not in (0, GATE_FAILED):
        logger.error("evaluation failed with exit code %d", proc.returncode)
        return proc.returncode
    report = normalise(json.loads(proc.stdout))
    patch_configmap(target, configmap, {"report.json": json.dumps(report, sort_keys=True)})
    logger.info(
        "published %s: version %s passed=%s", configmap, report["version"], report["passed"]
    )
    return 0
