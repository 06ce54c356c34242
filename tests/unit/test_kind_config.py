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


def test_kind_holds_no_host_port_the_quickstart_needs() -> None:
    """The README reaches the gateway with `kubectl port-forward ... 8080:8080`; a kind port
    mapping on host port 8080 (to a NodePort nothing creates) would hold that port."""
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    held = [m["hostPort"] for n in config["nodes"] for m in n.get("extraPortMappings", ())]
    assert 8080 not in held
