"""The chart's ServiceMonitor can scrape gateways whose /metrics needs the admin key
(`spec.metricsNeedAdminKey: true`): `serviceMonitor.authorization` sends it from a Secret.
Rendered with `helm template` (no cluster needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.k8s import tool_path

pytestmark = pytest.mark.e2e

CHART = Path(__file__).resolve().parents[2] / "charts" / "thrifty"
ON = ["--set", "serviceMonitor.enabled=true"]


def _template(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool_path("helm")), "template", "t", str(CHART), "--kube-version", "1.36.3"]
        + ["--show-only", "templates/servicemonitor.yaml", *ON, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _endpoint(*extra: str) -> dict[str, Any]:
    result = _template(*extra)
    assert result.returncode == 0, result.stderr
    monitor = yaml.safe_load(result.stdout)
    endpoint: dict[str, Any] = monitor["spec"]["endpoints"][0]
    return endpoint


CREDENTIALS = [
    "--set",
    "serviceMonitor.authorization.credentials.name=thrifty-admin-key",
    "--set",
    "serviceMonitor.authorization.credentials.key=api-key",
]


def _monitor(*extra: str) -> dict[str, Any]:
    result = _template(*extra)
    assert result.returncode == 0, result.stderr
    monitor: dict[str, Any] = yaml.safe_load(result.stdout)
    return monitor


def test_the_monitor_sends_the_admin_key_from_a_secret_when_asked() -> None:
    assert "authorization" not in _endpoint()
    endpoint = _endpoint(*CREDENTIALS, "--set", "serviceMonitor.namespaces={shop}")
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "thrifty-admin-key", "key": "api-key"},
    }


def test_the_schema_refuses_incomplete_or_unknown_credentials() -> None:
    for bad in (
        ["--set", "serviceMonitor.authorization.credentials.name=only-a-name"],
        ["--set", "serviceMonitor.authorization.bearerTokenSecret.name=x"],
        ["--set", "serviceMonitor.authorization.type=Basic"],
    ):
        result = _template(*bad)
        assert result.returncode != 0, bad
        assert "schema" in result.stderr.lower() or "not allowed" in result.stderr, bad


def test_the_admin_key_goes_only_to_the_listed_namespaces() -> None:
    # Without credentials, every namespace may be scraped (nothing is handed out).
    assert _monitor()["spec"]["namespaceSelector"] == {"any": True}
    listed = ["--set", "serviceMonitor.namespaces={shop,ops}"]
    assert _monitor(*listed)["spec"]["namespaceSelector"] == {"matchNames": ["shop", "ops"]}
    spec = _monitor(*CREDENTIALS, *listed)["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["shop", "ops"]}
    assert spec["endpoints"][0]["authorization"]["credentials"]["name"] == "thrifty-admin-key"
    # Credentials for a Service in any namespace: anyone able to create a Service with the
    # gateway labels would receive the admin key. Refused, saying what to set.
    refused = _template(*CREDENTIALS)
    assert refused.returncode != 0
    assert "serviceMonitor.namespaces" in refused.stderr
    bad = _template("--set", "serviceMonitor.namespaces={Not_A_Namespace}")
    assert bad.returncode != 0 and "pattern" in bad.stderr
