"""kind-config.yaml is a valid kind Cluster config with a GPU-labelled node."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_kind_config() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [n["role"] for n in config["nodes"]]
    assert roles.count("control-plane") == 1 and "worker" in roles
    gpu = [n for n in config["nodes"] if n.get("labels", {}).get("thrifty.dev/gpu") == "true"]
    assert gpu, "a worker must be labelled for GPU workloads"
    assert "nvidia.com/gpu" in gpu[0]["kubeadmConfigPatches"][0]
