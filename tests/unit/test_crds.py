"""Generated CRDs: in sync with the types, structural, described, with the expected columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from thrifty_core.api import RESOURCES, Resource
from thrifty_core.crdgen import build_crd, check_all

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crds_match_types() -> None:
    assert check_all(ROOT / "crds") == []


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, child in node.get("properties", {}).items():
        out.extend(_walk(child, f"{path}.{name}"))
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out.extend(_walk(node[key], f"{path}[{key}]"))
    return out


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind_name)
def test_schema_is_structural_and_described(resource: type[Resource]) -> None:
    schema = build_crd(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        # .metadata is the API server's own: a CRD may only declare its type.
        assert node.get("description") or path == ".metadata", f"{resource.kind_name}{path}"
        assert "type" in node, f"{resource.kind_name}{path} has no type"
        assert not {"$ref", "anyOf", "title", "$defs"} & set(node), path


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind_name)
def test_crd_metadata(resource: type[Resource]) -> None:
    crd = build_crd(resource)
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["categories"] == ["thrifty"]
    assert crd["spec"]["names"]["shortNames"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:2] == ["Ready", "Reason"] and columns[-1] == "Age"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"observedGeneration", "conditions"} <= set(status)
    condition = status["conditions"]["items"]["properties"]
    assert {
        "type",
        "status",
        "reason",
        "message",
        "observedGeneration",
        "lastTransitionTime",
    } <= set(condition)


def test_cel_rules_present() -> None:
    text = "\n".join(yaml.safe_dump(build_crd(r)) for r in RESOURCES)
    assert "self.minReplicas <= self.maxReplicas" in text
    assert "has(self.semantic.embedding)" in text


def test_chart_uses_generated_crds() -> None:
    chart_crds = ROOT / "charts" / "thrifty" / "crds"
    assert (
        chart_crds.is_symlink()
        or not chart_crds.exists()
        or all(
            (chart_crds / p.name).read_text() == p.read_text()
            for p in (ROOT / "crds").glob("*.yaml")
        )
    )
