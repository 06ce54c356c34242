"""Operator reconcile cost without an API server: what one gateway sync computes (render the
config, hash it, build every child manifest) and what a CachePolicy edit costs when N gateways
use the policy. JSON from `main()`; run with `python -m bench operator`."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import yaml

from thrifty_core.api import BatchQueue, CachePolicy, DistilledModel, LLMGateway
from thrifty_core.config import dump_config
from thrifty_core.render import render_gateway_config
from thrifty_operator.builders import batch, cache, distill
from thrifty_operator.builders import gateway as gw
from thrifty_operator.builders.common import Owner, short_hash
from thrifty_operator.builders.defaults import Defaults
from thrifty_operator.builders.secrets import gateway_secret_refs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEFAULTS = Defaults()


def _load(kind: str, name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{kind}.yaml").read_text())
    if name:
        body["metadata"]["name"] = name
    body["metadata"].update(namespace="bench", uid=f"uid-{body['metadata']['name']}")
    return body


def sync_gateway(
    gbody: dict[str, Any], policy: CachePolicy, queue: BatchQueue, student: DistilledModel
) -> int:
    """Everything `handlers.gateway.sync` computes for one gateway (no API calls)."""
    gateway = LLMGateway.model_validate(gbody)
    owner = Owner.from_body(gbody)
    config = render_gateway_config(gateway, {policy.metadata.name: policy}, queue, [student])
    text = dump_config(config)
    digest = short_hash(text)
    refs = gateway_secret_refs(gateway, [policy])
    mounts = gw.GatewayMounts(refs, queue.metadata.name, [student.metadata.name])
    manifests = [
        gw.build_config_map(owner, text, digest),
        gw.build_deployment(gateway, owner, digest, mounts, DEFAULTS),
        gw.build_service(owner),
        gw.build_hpa(gateway, owner),
        gw.build_pdb(gateway, owner),
    ]
    return len(manifests)


def _timed(fn: Any, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - start) / rounds


def main() -> dict[str, Any]:
    rounds = int(os.environ.get("THRIFTY_BENCH_ROUNDS", "300"))
    fleet = int(os.environ.get("THRIFTY_BENCH_GATEWAYS", "100"))
    pbody, qbody, dbody = _load("cachepolicy"), _load("batchqueue"), _load("distilledmodel")
    policy = CachePolicy.model_validate(pbody)
    queue = BatchQueue.model_validate(qbody)
    student = DistilledModel.model_validate(dbody)
    gbody = _load("llmgateway")
    per_gateway = _timed(lambda: sync_gateway(gbody, policy, queue, student), rounds)
    per_policy = _timed(
        lambda: [
            *cache.build_stores(policy, Owner.from_body(pbody), DEFAULTS),
            cache.build_collection_job(policy, Owner.from_body(pbody), DEFAULTS),
        ],
        rounds,
    )
    per_model = _timed(
        lambda: [
            distill.build_train_job(student, Owner.from_body(dbody), "v1", DEFAULTS),
            distill.build_eval_job(student, Owner.from_body(dbody), "v1", DEFAULTS),
            *batch.build_queue_stores(queue, Owner.from_body(qbody), DEFAULTS),
        ],
        rounds,
    )
    gateways = [_load("llmgateway", f"gw-{i}") for i in range(fleet)]
    edited = copy.deepcopy(pbody)
    edited["spec"]["semantic"]["threshold"] = 0.95
    edited_policy = CachePolicy.model_validate(edited)
    start = time.perf_counter()
    for body in gateways:
        sync_gateway(body, edited_policy, queue, student)
    fleet_s = time.perf_counter() - start
    return {
        "gateway_sync_cpu_us": round(per_gateway * 1e6, 1),
        "cachepolicy_build_cpu_us": round(per_policy * 1e6, 1),
        "distill_and_batch_build_cpu_us": round(per_model * 1e6, 1),
        "policy_edit_rerender_gateways": fleet,
        "policy_edit_rerender_cpu_ms": round(fleet_s * 1e3, 1),
        "rounds": rounds,
    }
