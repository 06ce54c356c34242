"""Generate CustomResourceDefinitions from the API types: the one source of truth.

Pydantic emits JSON Schema (draft 2020-12 with $defs, anyOf for optionals, numeric
exclusive bounds); Kubernetes wants a structural OpenAPI v3.0 schema. This module converts one
into the other: it inlines references, turns optionals into non-required fields, maps enums and
bounds, keeps descriptions, CEL rules and list-map markers, and drops what the API server
rejects (titles, $defs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .api import GROUP, RESOURCES, VERSION, Resource
from .api.base import AGE_COLUMN, NAME_RULE, READY_COLUMNS

JsonSchema = dict[str, Any]

_KEEP = {
    "type",
    "description",
    "enum",
    "default",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "format",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


def _resolve(schema: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**_resolve(target, defs), **{k: v for k, v in schema.items() if k != "$ref"}}
        return merged
    return schema


def _strip_null(schema: JsonSchema) -> JsonSchema:
    variants = schema.get("anyOf")
    if variants is None:
        return schema
    non_null = [v for v in variants if v.get("type") != "null"]
    if len(non_null) != 1:
        raise ValueError(f"unsupported union in API types: {variants}")
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    return {**non_null[0], **rest}


def to_structural(
    schema: JsonSchema, defs: dict[str, JsonSchema], inherited: str = ""
) -> JsonSchema:
    """Convert one pydantic JSON schema node into a structural OpenAPI v3 node.

    Array items and map values without a description of their own inherit their parent's.
    """
    node = _strip_null(_resolve(schema, defs))
    node = _strip_null(_resolve(node, defs))
    out: JsonSchema = {k: v for k, v in node.items() if k in _KEEP}
    out.setdefault("description", inherited)
    if "const" in node:
        out["enum"] = [node["const"]]
        out.setdefault("type", "string")
    if "exclusiveMinimum" in node:
        out["minimum"] = node["exclusiveMinimum"]
        out["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node:
        out["maximum"] = node["exclusiveMaximum"]
        out["exclusiveMaximum"] = True
    if out.get("default") is None:
        out.pop("default", None)
    kind = node.get("type")
    if kind == "object" or "properties" in node:
        out["type"] = "object"
        props = node.get("properties", {})
        if props:
            out["properties"] = {k: to_structural(v, defs) for k, v in props.items()}
            required = [r for r in node.get("required", []) if r in props]
            if required:
                out["required"] = required
            # Nested objects with defaults get their leaf defaults spelled out (the API server
            # checks CEL rules against the default itself, so `{}` would fail them).
            # Optional objects (default None) stay absent so CEL `has()` means "set by the user".
            for name, prop in out["properties"].items():
                optional = "default" in props[name] and props[name]["default"] is None
                nested = prop.get("type") == "object" and "properties" in prop
                if nested and name not in required and not optional and _has_defaults(prop):
                    prop["default"] = {
                        k: v["default"] for k, v in prop["properties"].items() if "default" in v
                    }
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = to_structural(extra, defs, out["description"])
    elif kind == "array":
        out["items"] = to_structural(node["items"], defs, out["description"])
        if "default" in out and out["default"] == []:
            out.pop("default")
    elif "default" in out and isinstance(out["default"], (dict, list)):
        out.pop("default")
    if not out["description"]:
        raise ValueError(f"schema node without description: {node}")
    return out


def _has_defaults(schema: JsonSchema) -> bool:
    return any(
        "default" in p or (p.get("type") == "object" and _has_defaults(p))
        for p in schema.get("properties", {}).values()
    )


def schema_for(resource: type[Resource]) -> JsonSchema:
    """The openAPIV3Schema of one resource."""
    raw = resource.model_json_schema(by_alias=True, mode="validation")
    defs: dict[str, JsonSchema] = raw.get("$defs", {})
    props = raw["properties"]
    spec = to_structural(props["spec"], defs)
    status = to_structural(props["status"], defs)
    spec.pop("default", None)
    status.pop("default", None)
    root: JsonSchema = {
        "type": "object",
        "description": resource.description,
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of the resource."},
            "kind": {"type": "string", "description": "Kind of the resource."},
            # The API server allows nothing but the type here (not even a description).
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if "spec" in raw.get("required", []):
        root["required"] = ["spec"]
    root["x-kubernetes-validations"] = [NAME_RULE]
    return root


def build_crd(resource: type[Resource]) -> dict[str, Any]:
    """The CustomResourceDefinition manifest of one resource."""
    columns = [*READY_COLUMNS, *resource.extra_columns, AGE_COLUMN]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{resource.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "thrifty"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": resource.kind_name,
                "listKind": f"{resource.kind_name}List",
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": ["thrifty"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        c.model_dump(by_alias=True, exclude_defaults=True) for c in columns
                    ],
                    "schema": {"openAPIV3Schema": schema_for(resource)},
                }
            ],
        },
    }


def crd_filename(resource: type[Resource]) -> str:
    return f"{GROUP}_{resource.plural}.yaml"


def render_all() -> dict[str, str]:
    """File name -> YAML text for every CRD."""
    header = "# Generated by `thrifty crds generate` from thrifty_core.api. Do not edit.\n"
    return {
        crd_filename(r): header + yaml.safe_dump(build_crd(r), sort_keys=False, width=100)
        for r in RESOURCES
    }


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def check_all(directory: Path) -> list[str]:
    """Names of files that are missing or differ from what the types generate."""
    drift = []
    for name, text in render_all().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            drift.append(name)
    return drift
