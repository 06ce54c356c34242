"""Pure parts of the gateway's distill stage: canary buckets, eligibility, agreement and
demotion thresholds, the causal-lm student's confidence, capture sampling and opt-out."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from thrifty_core.api.distilledmodel import Capture, DistilledModel
from thrifty_core.config import StudentConfig
from thrifty_core.render import render_student
from thrifty_core.student.capture import CaptureRecord
from thrifty_core.student.store import FileDatasetStore
from thrifty_gateway.services.distill.agreement import AgreementTracker, same_answer
from thrifty_gateway.services.distill.capture import CaptureSink, opted_out
from thrifty_gateway.services.distill.predictors import EndpointPredictor
from thrifty_gateway.services.distill.stage import canary_bucket, eligible
from thrifty_gateway.services.proxy import hide_choice_fields


def test_canary_buckets_are_stable_and_spread() -> None:
    assert canary_bucket("req-1") == canary_bucket("req-1")
    buckets = [canary_bucket(f"req-{i}") for i in range(2000)]
    share = sum(b < 10 for b in buckets) / len(buckets)
    assert 0.07 < share < 0.13


def test_eligibility() -> None:
    assert eligible({"messages": []})
    assert not eligible({"tools": [{"type": "function"}]})
    assert not eligible({"n": 2})
    assert not eligible({"response_format": {"type": "json_object"}})
    assert eligible({"response_format": {"type": "text"}})


def test_agreement_tracker_needs_samples_before_demoting() -> None:
    tracker = AgreementTracker(min_agreement=0.9, window=50, min_samples=20)
    for _ in range(19):
        tracker.add(False)
    assert not tracker.below_gate  # too few samples to judge
    tracker.add(False)
    assert tracker.below_gate
    for _ in range(50):
        tracker.add(True)
    assert tracker.rate == 1.0 and not tracker.below_gate  # the window moved on
    assert tracker.total == 70
    assert same_answer("Card arrival.", "card_arrival")
    assert not same_answer("card_arrival", "card_linking")


def test_endpoint_confidence_is_the_geometric_mean_token_probability() -> None:
    predictor = EndpointPredictor(
        "http://127.0.0.1:1/v1", "student", labels=["card_arrival", "exchange_rate"]
    )
    lp = [{"token": "card", "logprob": -0.1}, {"token": "_arrival", "logprob": -0.3}]
    answer = predictor.parse(
        {
            "choices": [
                {
                    "message": {"content": "Card arrival"},
                    "logprobs": {"content": lp},
                    "finish_reason": "stop",
                }
            ]
        }
    )
    assert answer is not None
    assert answer.text == "card_arrival"
    assert math.isclose(answer.confidence, math.exp(-0.2))
    outside = {"choices": [{"message": {"content": "no idea"}, "finish_reason": "stop"}]}
    assert predictor.parse(outside) is None  # never serve an answer outside the label set
    cut = {"choices": [{"message": {"content": "card_arrival"}, "finish_reason": "length"}]}
    assert predictor.parse(cut) is None


def test_capture_sampling_opt_out_and_logprobs(tmp_path: Path) -> None:
    rolls = iter([0.1, 0.9])
    sink = CaptureSink(
        FileDatasetStore(tmp_path),
        Capture(sample_rate=0.5, logprobs=True, max_examples=100),
        route="intent",
        student="s",
        rand=lambda: next(rolls),
    )
    assert sink.wants({}, "team-a")  # 0.1 < 0.5
    assert not sink.wants({}, "team-a")  # 0.9 >= 0.5
    assert opted_out({"x-thrifty-no-capture": "1"})
    assert not opted_out({"x-thrifty-no-capture": "false"})
    assert not sink.wants({"x-thrifty-no-capture": "yes"}, "team-a")
    body: dict[str, object] = {"messages": []}
    assert sink.logprobs_request(body) == {"logprobs": True, "top_logprobs": 5}
    assert body == {"messages": []}  # the client's request (and cache key) is left alone
    assert sink.logprobs_request({"logprobs": False}) == {}  # the client's choice wins


def test_hidden_choice_fields_are_nulled_in_a_copy() -> None:
    lp = {"content": [{"token": "hi", "logprob": -0.1, "top_logprobs": []}]}
    chunk: dict[str, Any] = {
        "id": "c",
        "choices": [
            {"index": 0, "delta": {"content": "hi"}, "logprobs": lp, "finish_reason": None}
        ],
    }
    hidden = hide_choice_fields(chunk, {"logprobs"})
    assert hidden is not None
    assert hidden["choices"][0] == {
        "index": 0,
        "delta": {"content": "hi"},
        "logprobs": None,
        "finish_reason": None,
    }
    assert chunk["choices"][0]["logprobs"] == lp  # the original keeps them (for capture)
    assert hide_choice_fields(hidden, {"logprobs"}) is None  # nothing left to hide
    assert hide_choice_fields(chunk, set()) is None
    assert hide_choice_fields({"choices": [], "usage": {}}, {"logprobs"}) is None
    assert hide_choice_fields(None, {"logprobs"}) is None


async def test_capture_stops_at_the_cap(tmp_path: Path) -> None:
    sink = CaptureSink(
        FileDatasetStore(tmp_path),
        Capture(max_examples=100),
        route="intent",
        student="s",
    )
    completion = {"choices": [{"message": {"content": "card_arrival"}}]}
    for i in range(105):
        await sink.record(
            request_id=str(i),
            ts=float(i),
            tenant="team-a",
            model="gpt-4o",
            messages=[{"role": "user", "content": f"call me on +1 415 555 01{i:02d}"}],
            completion=completion,
            prompt_tokens=10,
            completion_tokens=2,
            cost_usd=0.0,
        )
    store = FileDatasetStore(tmp_path, writer="reader")
    assert store.count() == 100
    assert sink.full and not sink.wants({}, "team-a")
    first = next(store.read(store.shards()[0]))
    assert b"[PHONE]" in first and b"415" not in first


async def test_capture_records_only_the_listed_tenants_and_names_them(tmp_path: Path) -> None:
    sink = CaptureSink(
        FileDatasetStore(tmp_path),
        Capture(tenants=["team-a"], max_examples=100),
        route="intent",
        student="s",
    )
    assert sink.wants({}, "team-a")
    assert not sink.wants({}, "team-b")
    assert not sink.wants({}, "anonymous")
    everyone = CaptureSink(FileDatasetStore(tmp_path / "all"), Capture(), route="i", student="s")
    assert everyone.wants({}, "team-b") and everyone.wants({}, "anonymous")  # empty = all
    await sink.record(
        request_id="1",
        ts=1.0,
        tenant="team-a",
        model="gpt-4o",
        messages=[{"role": "user", "content": "where is my card?"}],
        completion={"choices": [{"message": {"content": "card_arrival"}}]},
        prompt_tokens=10,
        completion_tokens=2,
        cost_usd=0.0,
    )
    store = FileDatasetStore(tmp_path, writer="reader")
    (line,) = [line for shard in store.shards() for line in store.read(shard)]
    assert CaptureRecord.model_validate_json(line).tenant == "team-a"


def test_capture_tenants_reach_the_gateway_config() -> None:
    model = DistilledModel.model_validate(
        {
            "metadata": {"name": "intent", "namespace": "ml"},
            "spec": {
                "teacher": {"gatewayRef": {"name": "gw"}, "route": "intent"},
                "student": {"kind": "classifier"},
                "capture": {"tenants": ["team-a"]},
            },
        }
    )
    rendered = render_student(model)
    assert rendered.capture.tenants == ["team-a"]
    config = StudentConfig.model_validate(rendered.model_dump(by_alias=True))
    assert config.capture.tenants == ["team-a"]  # survives the ConfigMap round trip
    with pytest.raises(ValidationError):
        Capture.model_validate({"tenants": ["Not A Tenant"]})
