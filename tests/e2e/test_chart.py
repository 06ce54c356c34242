"""The Helm chart: lint --strict, a strict values schema, and kubeconform -strict on what it
renders (and on examples/), with JSON schemas made offline: the built-in kinds from the test API
server's OpenAPI v3 documents, the Thrifty kinds from the generated CRDs in crds/.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.k8s import Cluster, tool_path

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "thrifty"
KUBE_VERSION = "1.36.3"
ALL_ON = ["--set", "serviceMonitor.enabled=true", "--set", "grafanaDashboard.enabled=true"]


def _run(tool: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool_path(tool)), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _template(*extra: str) -> str:
    result = _run(
        "helm",
        "template",
        "thrifty",
        str(CHART),
        "-n",
        "thrifty-system",
        "--kube-version",
        KUBE_VERSION,
        "--include-crds",
        *extra,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _strict(node: Any) -> Any:
    """Refuse unknown fields wherever the schema lists the known ones (kubeconform -strict)."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def _suffix(api_version: str) -> str:
    group, _, version = api_version.rpartition("/")
    return f"-{group.split('.')[0]}-{version}" if group else f"-{version}"


def _write_schemas(cluster: Cluster, kinds: set[tuple[str, str]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for api_version, kind in sorted(kinds):
        path = out / f"{kind.lower()}{_suffix(api_version)}.json"
        if api_version.startswith("thrifty.dev/"):
            continue  # from crds/ below
        raw = "/openapi/v3/" + ("api/v1" if api_version == "v1" else f"apis/{api_version}")
        doc = json.loads(cluster.kubectl("get", "--raw", raw).stdout)
        schemas = doc["components"]["schemas"]
        group, _, version = api_version.rpartition("/")
        name = next(
            n
            for n, s in schemas.items()
            if {"group": group, "version": version, "kind": kind}
            in s.get("x-kubernetes-group-version-kind", [])
        )
        path.write_text(json.dumps({"$ref": f"#/components/schemas/{name}", **_strict(doc)}))
    for crd_file in (ROOT / "crds").glob("*.yaml"):
        crd = yaml.safe_load(crd_file.read_text())
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            schema = _strict(version["schema"]["openAPIV3Schema"])
            kind = crd["spec"]["names"]["kind"].lower()
            (out / f"{kind}{_suffix(api_version)}.json").write_text(json.dumps(schema))


def _kinds(text: str) -> set[tuple[str, str]]:
    return {(d["apiVersion"], d["kind"]) for d in yaml.safe_load_all(text) if d}


def test_lint_strict_is_clean() -> None:
    for extra in ([], ALL_ON):
        result = _run("helm", "lint", "--strict", str(CHART), *extra)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout


def test_values_schema_refuses_unknown_keys_and_bad_values() -> None:
    for bad in (
        ["--set", "bogus=1"],
        ["--set", "operator.logFormat=xml"],
        ["--set", "rbac.x=1"],
        ["--set", "images.gateway=Bad/Repo:1"],  # repository names are lower case
        ["--set", "images.gateway=MyOrg/op"],  # (a first part without "." or ":" is a path)
        ["--set", "images.gateway=null"],  # (helm drops the key: no image at all)
        ["--set-string", "image.repository=bad repo"],
        ["--set-string", "image.tag=has space"],
        # The operator's cluster-wide role would be bound to the namespace's `default`
        # account, which every other pod there runs as.
        ["--set", "serviceAccount.create=false"],
    ):
        result = _run("helm", "template", "t", str(CHART), "--kube-version", KUBE_VERSION, *bad)
        assert result.returncode != 0, bad
        assert "schema" in result.stderr.lower() or "not allowed" in result.stderr


def test_images_and_tags_are_configurable() -> None:
    text = _template(
        "--set",
        "image.repository=registry.local/op",
        "--set",
        "image.tag=9.9.9",
        "--set",
        "images.gateway=registry.local/gw:1.2.3",
    )
    deploy = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "Deployment")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == "registry.local/op:9.9.9"
    assert env["THRIFTY_OPERATOR_GATEWAY_IMAGE"] == "registry.local/gw:1.2.3"
    assert env["THRIFTY_OPERATOR_OPERATOR_IMAGE"] == "registry.local/op:9.9.9"
    assert deploy["spec"]["strategy"]["type"] == "Recreate" and deploy["spec"]["replicas"] == 1
    # tags may have capitals; registries with ports, nested paths and digests are images too
    digest = "sha256:" + "a" * 64
    for image in ("thrifty-gateway:V1.0-RC1", f"registry.local:5000/team/gw:1.2.3@{digest}"):
        text = _template("--set", f"images.gateway={image}")
        deploy = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "Deployment")
        env = {
            e["name"]: e.get("value")
            for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["THRIFTY_OPERATOR_GATEWAY_IMAGE"] == image
    pinned = _template(
        "--set", "image.repository=registry.local/op", "--set", f"image.tag=9.9@{digest}"
    )  # fmt: skip
    deploy = next(d for d in yaml.safe_load_all(pinned) if d and d["kind"] == "Deployment")
    image = deploy["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"registry.local/op:9.9@{digest}"  # the operator pinned by its digest
    named = _template("--set", "serviceAccount.create=false", "--set", "serviceAccount.name=ops")
    assert "serviceAccountName: ops" in named


def test_rendered_chart_and_examples_pass_kubeconform(k8s_cluster: Cluster, tmp_path: Path) -> None:
    rendered = _template(*ALL_ON)
    examples = [
        d
        for p in sorted((ROOT / "examples").glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d and "apiVersion" in d
    ]
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "chart.yaml").write_text(rendered)
    (manifests / "examples.yaml").write_text(yaml.safe_dump_all(examples))
    kinds = _kinds(rendered) | {(d["apiVersion"], d["kind"]) for d in examples}
    assert ("apiextensions.k8s.io/v1", "CustomResourceDefinition") in kinds
    kinds.discard(("monitoring.coreos.com/v1", "ServiceMonitor"))
    schemas = tmp_path / "schemas"
    _write_schemas(k8s_cluster, kinds, schemas)
    result = _run(
        "kubeconform",
        "-strict",
        "-summary",
        "-output",
        "json",
        # ServiceMonitor's CRD (Prometheus Operator) is not part of the test cluster.
        "-skip",
        "ServiceMonitor",
        "-schema-location",
        str(schemas) + "/{{ .ResourceKind }}{{ .KindSuffix }}.json",
        str(manifests),
    )
    report = json.loads(result.stdout)
    assert result.returncode == 0, json.dumps(report, indent=1)[:4000]
    summary = report["summary"]
    assert summary["invalid"] == 0 and summary["errors"] == 0
    assert summary["valid"] >= len(kinds) + 4
    # The same schemas do catch a typo (strict: unknown fields are errors).
    broken = yaml.safe_load((ROOT / "examples" / "cachepolicy.yaml").read_text())
    broken["spec"]["semantic"]["treshold"] = 0.9
    (manifests / "examples.yaml").write_text(yaml.safe_dump(broken))
    (manifests / "chart.yaml").unlink()
    bad = _run(
        "kubeconform",
        "-strict",
        "-summary",
        "-output",
        "json",
        "-schema-location",
        str(schemas) + "/{{ .ResourceKind }}{{ .KindSuffix }}.json",
        str(manifests),
    )
    assert bad.returncode != 0 and json.loads(bad.stdout)["summary"]["invalid"] == 1
