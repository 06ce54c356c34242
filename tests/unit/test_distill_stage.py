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
from thrifty_core.student.capture import CaptureRecord, build_record, instructions_digest
from thrifty_core.student.redact import redact
from thrifty_core.student.store import FileDatasetStore
from thrifty_distill.dataset import Example, common_instructions
from thrifty_gateway.services.distill.agreement import AgreementTracker, same_answer
from thrifty_gateway.services.distill.capture import CaptureSink, opted_out
from thrifty_gateway.services.distill.predictors import EndpointPredictor, StudentError
from thrifty_gateway.services.distill.stage import canary_bucket, eligible, familiar, fits
from thrifty_gateway.services.proxy import hide_choice_fields


def test_canary_buckets_are_stable_and_spread() -> None:
    assert canary_bucket("req-1") == canary_bucket("req-1")
    buckets = [canary_bucket(f"req-{i}") for i in range(2000)]
    share = sum(b < 10 for b in buckets) / len(buckets)
    assert 0.07 < share < 0.13


def test_eligibility() -> None:
    ask = [{"role": "user", "content": "Where is my card?"}]
    system = [{"role": "system", "content": "Classify the intent."}]
    assert eligible({"messages": ask})
    assert eligible({"messages": system + ask, "response_format": {"type": "text"}})
    assert eligible({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    assert not eligible({"messages": []})  # no question
    assert not eligible({"messages": ask, "tools": [{"type": "function"}]})
    assert not eligible({"messages": ask, "n": 2})
    assert not eligible({"messages": ask, "response_format": {"type": "json_object"}})
    assert not eligible({"messages": ask, "response_format": "json_object"})  # no 500 either
    assert not eligible({"messages": ask, "logprobs": True})  # a student has none to give
    assert not eligible({"messages": ask, "top_logprobs": 3})
    # a conversation, not the one question a student was trained on
    turns = ask + [{"role": "assistant", "content": "Which card?"}, *ask]
    assert not eligible({"messages": turns})
    assert not eligible({"messages": ask + ask})
    assert not eligible({"messages": ask + [{"role": "tool", "content": "x"}]})
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}
    parts = [{"type": "text", "text": "what is this?"}, image]
    assert not eligible({"messages": [{"role": "user", "content": parts}]})


def test_a_student_serves_only_under_the_instructions_it_was_trained_under() -> None:
    """Digests of the training examples' system and developer messages, as captured
    (redacted): a request under the same instructions is familiar, redacted or not; another
    system prompt, an added developer message or none at all is not."""
    system = "Classify the intent. Escalations: ops@example.com."
    ask = {"role": "user", "content": "where is my card?"}
    record = build_record(
        request_id="1", ts=0.0, route="r", student="s", model="m",
        messages=[{"role": "system", "content": system}, ask],
        completion={"choices": [{"message": {"content": "card_arrival"}}]},
        prompt_tokens=1, completion_tokens=1, cost_usd=0.0,
    )  # fmt: skip
    assert record is not None and "ops@example.com" not in record.messages[0]["content"]
    trained = frozenset({instructions_digest(record.messages)})
    same = {"messages": [{"role": "system", "content": system}, ask]}
    assert familiar(trained, same)
    parts = [{"type": "text", "text": system}]  # the same text as content parts
    assert familiar(trained, {"messages": [{"role": "system", "content": parts}, ask]})
    assert not familiar(trained, {"messages": [{"role": "system", "content": "Translate."}, ask]})
    developer = {"role": "developer", "content": "Answer yes or no."}
    assert not familiar(trained, {"messages": [*same["messages"], developer]})
    assert not familiar(trained, {"messages": [ask]})
    assert familiar(frozenset(), {"messages": [ask]})  # a version trained before: unknown


def test_common_instructions_are_the_most_frequent_first_and_capped() -> None:
    def example(system: str) -> Example:
        return Example("q", "a", messages=[{"role": "system", "content": system}])

    examples = [example("a"), example("b"), example("b"), example("c"), example("b")]
    digest = {x: instructions_digest([{"role": "system", "content": x}]) for x in "abc"}
    assert common_instructions(examples)[0] == digest["b"]
    assert set(common_instructions(examples)) == set(digest.values())
    assert common_instructions(examples, limit=1) == [digest["b"]]


def test_a_student_answer_fits_only_within_the_request_limits() -> None:
    assert fits({}, "card_arrival", 3)
    assert not fits({"max_tokens": 2}, "card_arrival", 3)
    assert not fits({"max_completion_tokens": 2, "max_tokens": 10}, "card_arrival", 3)
    assert fits({"max_completion_tokens": 3}, "card_arrival", 3)
    assert not fits({"max_completion_tokens": None, "max_tokens": 1}, "card_arrival", 3)
    assert not fits({"stop": "_"}, "card_arrival", 3)
    assert not fits({"stop": ["\n", "arr"]}, "card_arrival", 3)
    assert fits({"stop": ["\n", ""]}, "card_arrival", 3)


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
    filtered = {"choices": [{"message": {"content": "card_arrival"}, "finish_reason": None}]}
    assert predictor.parse(filtered) is None


@pytest.mark.parametrize(
    "body",
    [
        ["not", "a", "completion"],
        {"choices": []},
        {"choices": [{"message": None, "finish_reason": "stop"}]},
        {
            "choices": [
                {
                    "message": {"content": "card_arrival"},
                    "finish_reason": "stop",
                    "logprobs": {"content": [{"token": "c", "logprob": None}]},
                }
            ]
        },
        "<html>proxy error</html>",
    ],
)
def test_endpoint_answers_that_are_no_completion_are_student_errors(body: Any) -> None:
    """A student server answering 200 with something else fails the student (the stage then
    lets the teacher answer), never the request."""
    predictor = EndpointPredictor("http://127.0.0.1:1/v1", "student", labels=["card_arrival"])
    with pytest.raises(StudentError):
        predictor.parse(body)


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
    assert opted_out({"cache-control": "no-store"})  # kept nowhere means not in training data
    assert opted_out({"cache-control": "max-age=60, No-Store"})
    assert not opted_out({"cache-control": "no-cache"})
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
        Capture(max_examples=100, when_full="stop"),
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


def test_logprobs_are_dropped_when_redaction_masked_the_answer() -> None:
    """The answer's tokens (and the teacher's alternatives) would spell out what redaction
    masked in the answer text."""
    tokens = [" jane", ".doe", "@acme", ".com"]
    lp = {
        "content": [
            {"token": t, "logprob": -0.1, "top_logprobs": [{"token": t, "logprob": -0.1}]}
            for t in tokens
        ]
    }
    leaky = {
        "choices": [
            {
                "message": {"content": "Mail jane.doe@acme.com"},
                "logprobs": lp,
                "finish_reason": "stop",
            }
        ]
    }
    args: dict[str, Any] = {
        "request_id": "r",
        "ts": 1.0,
        "route": "intent",
        "student": "s",
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "who do I mail?"}],
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "cost_usd": 0.0,
        "keep_logprobs": True,
    }
    record = build_record(completion=leaky, **args)
    assert record is not None
    assert record.answer == "Mail [EMAIL]" and record.logprobs is None
    assert "acme" not in record.model_dump_json()
    clean = {"choices": [{"message": {"content": "card_arrival"}, "logprobs": lp}]}
    kept = build_record(completion=clean, **args)
    assert kept is not None and kept.logprobs is not None and len(kept.logprobs) == 4


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("my key is sk-proj-abcDEF1234567890abcdefXYZ, thanks", "abcDEF1234567890"),
        ("use sk-ant-api03-AbCdEf0123456789AbCdEf", "AbCdEf0123456789"),
        ("AKIAIOSFODNN7EXAMPLE is the id", "IOSFODNN7"),
        ("Authorization: Bearer abcdefghijklmnop1234", "abcdefghijklmnop"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N", "eyJzdWIi"),
        ("ghp_0123456789abcdefghijABCDEFGHIJ012345 leaked", "0123456789abcdef"),
        ("password: hunter22", "hunter22"),
        ('api_key="abc123xyz"', "abc123xyz"),
        ("IBAN DE89 3704 0044 0532 0130 00 please", "3704"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----", "MIIE"),
    ],
)
def test_redaction_masks_credentials(text: str, leak: str) -> None:
    out = redact(text)
    assert leak not in out, out
    assert "[SECRET]" in out or "[IBAN]" in out


def test_redaction_keeps_ordinary_questions() -> None:
    for text in (
        "The password reset link is not working",
        "my password is wrong, what now?",
        "Why was my transfer of 250 EUR on 2024-01-02 declined?",
        "Where is my card? I ordered it 2 weeks ago",
    ):
        assert redact(text) == text


async def test_the_reload_loop_outlives_a_version_it_cannot_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A promoted version whose artifact cannot be loaded (any error, e.g. a KeyError from a
    malformed head) is skipped; the loop keeps running and loads the next good one."""
    import asyncio
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from thrifty_gateway.services import distill
    from thrifty_gateway.services.distill.metrics import DistillMetrics
    from thrifty_gateway.services.distill.stage import DistillStage, StudentRoute

    versions = iter(["v0001", "v0002", "v0002"])

    def promoted(root: object, pinned: object, current: str | None) -> object:
        del root, pinned
        version = next(versions)  # as version_to_load: None when it already serves
        return None if version == current else SimpleNamespace(version=version)

    monkeypatch.setattr(distill, "version_to_load", promoted)

    class Good:
        version = "v0002"

        async def predict(self, body: dict[str, Any]) -> None:
            del body

        async def aclose(self) -> None:
            return None

    def load(cfg: StudentConfig, _: Any) -> tuple[Any, float]:
        del cfg
        loads.append(1)
        if len(loads) == 1:
            raise KeyError("head")  # the malformed v0001
        return Good(), 0.9

    loads: list[int] = []
    monkeypatch.setattr(distill, "load_predictor", load)
    cfg = StudentConfig(route="r", name="s", kind="classifier", artifact_path="/nonexistent")
    sr = StudentRoute(
        config=cfg, predictor=None, capture=None, tracker=AgreementTracker(min_agreement=0.9)
    )
    stage = DistillStage({"r": sr}, SimpleNamespace(), DistillMetrics(CollectorRegistry()))  # type: ignore[arg-type]
    task = asyncio.create_task(distill.reload_loop(stage, lambda: None, 0.01))
    for _ in range(200):
        if sr.version == "v0002":
            break
        await asyncio.sleep(0.01)
    assert not task.done()  # still running after the KeyError
    task.cancel()
    assert sr.version == "v0002" and len(loads) == 2


def test_the_gateway_serves_only_what_the_operator_says_passed() -> None:
    """A pin the operator refused (not in status.passedVersions) is not rendered; with no
    active version nothing serves (not the newest version the volume still has promoted)."""

    def model(pin: str = "", **status: Any) -> DistilledModel:
        return DistilledModel.model_validate(
            {
                "metadata": {"name": "intent", "namespace": "ml"},
                "spec": {
                    "teacher": {"gatewayRef": {"name": "gw"}, "route": "intent"},
                    "student": {"kind": "classifier"},
                    "serving": {"version": pin} if pin else {},
                },
                **({"status": status} if status else {}),
            }
        )

    nothing = render_student(model())
    assert not nothing.serve and nothing.version is None
    active = render_student(model(activeVersion="v2", passedVersions=["v1", "v2"]))
    assert active.serve and active.version == "v2"
    pinned = render_student(model("v1", activeVersion="v2", passedVersions=["v1", "v2"]))
    assert pinned.version == "v1"
    refused = render_student(model("v9", activeVersion="v2", passedVersions=["v1", "v2"]))
    assert refused.version == "v2"  # the refused pin never reaches the gateway
    withdrawn = render_student(model(activeVersion="", passedVersions=["v1"]))
    assert not withdrawn.serve  # v1 passed an older gate: not served without the operator
    local = StudentConfig(route="r", name="s", kind="classifier", artifact_path="/a")
    assert local.serve and local.version is None  # a local config: newest promoted


def test_a_student_the_operator_stopped_serving_loads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from thrifty_gateway.services import distill

    def never(*_: Any) -> None:
        raise AssertionError("the volume's promoted versions must not be looked at")

    monkeypatch.setattr(distill, "resolve_version", never)
    cfg = StudentConfig(
        route="r", name="s", kind="classifier", artifact_path=str(tmp_path), serve=False
    )
    predictor, _ = distill.load_predictor(cfg, lambda: None)
    assert predictor is None


async def test_capture_rotates_at_the_cap_and_keeps_recent_traffic(tmp_path: Path) -> None:
    """The default at maxExamples: the oldest shards go, recording goes on (the next training
    run learns from recent traffic), the store stays within the cap, and a reader listing a
    shard that is dropped before it opens it reads nothing from it instead of failing."""
    sink = CaptureSink.to_directory(
        str(tmp_path), Capture(max_examples=1000), route="intent", student="s"
    )
    completion = {"choices": [{"message": {"content": "card_arrival"}, "finish_reason": "stop"}]}
    for i in range(2500):
        assert await sink.record(
            request_id=str(i),
            ts=float(i),
            tenant="team-a",
            model="gpt-4o",
            messages=[{"role": "user", "content": f"question {i}"}],
            completion=completion,
            prompt_tokens=10,
            completion_tokens=2,
            cost_usd=0.0,
        )
    reader = FileDatasetStore(tmp_path, writer="reader")
    ids = [CaptureRecord.model_validate_json(x).id for s in reader.shards() for x in reader.read(s)]
    assert 900 <= len(ids) <= 1000 and "2499" in ids and "0" not in ids
    assert not sink.full and sink.wants({}, "team-a")
    assert list(reader.read("capture-gone-000000.jsonl")) == []


def test_rotation_keeps_the_cap_across_writers_sharing_the_volume(tmp_path: Path) -> None:
    """Three gateway replicas capture into one directory with a cap of 1,000: each counts what
    is on disk (an incremental read of what others appended) before it rotates, so the
    directory stays near the cap, and a replica that starts later drops only the excess
    (it used to see 2,800 records and drop most of the others' shards)."""
    import asyncio

    spec = Capture(max_examples=1000)
    completion = {"choices": [{"message": {"content": "card_arrival"}, "finish_reason": "stop"}]}

    def sink(name: str) -> CaptureSink:
        store = FileDatasetStore(tmp_path, shard_records=100, writer=name)
        out = CaptureSink(store, spec, route="intent", student="s")
        out._refreshed = float("inf")  # only at the cap: the worst case for counting
        return out

    async def capture(s: CaptureSink, i: int) -> None:
        await s.record(
            request_id=str(i), ts=float(i), tenant="t", model="gpt-4o",
            messages=[{"role": "user", "content": f"q {i}"}], completion=completion,
            prompt_tokens=1, completion_tokens=1, cost_usd=0.0,
        )  # fmt: skip

    async def run() -> None:
        writers = [sink(f"gw{i}") for i in range(3)]
        for i in range(6000):
            await capture(writers[i % 3], i)
        on_disk = FileDatasetStore(tmp_path, writer="reader").refresh()
        assert 900 <= on_disk <= 1000 + 3 * 100, on_disk
        late = sink("gw-late")
        await capture(late, 6000)
        after = FileDatasetStore(tmp_path, writer="reader").refresh()
        assert after >= 900, after  # the late replica dropped the excess only

    asyncio.run(run())


def test_a_shard_dropped_and_made_again_under_its_name_is_counted_afresh(
    tmp_path: Path,
) -> None:
    """Another replica drops an idle writer's shard (the oldest); the idle writer's next
    append makes a new file with the same name. Counts go by the file, not its name."""
    import os
    import time

    b = FileDatasetStore(tmp_path, shard_records=1000, writer="b")
    a = FileDatasetStore(tmp_path, shard_records=1000, writer="a")
    c = FileDatasetStore(tmp_path, shard_records=1000, writer="c")
    b.append([b"{}"] * 40)
    (shard,) = b.shards()
    os.utime(tmp_path / shard, (time.time() - 60, time.time() - 60))  # b went idle
    a.append([b"{}"] * 10)
    assert c.refresh() == 50 and b.refresh() == 50
    assert a.drop_oldest() == 40  # b's shard
    b.append([b"{}"] * 3)  # the same name, a new file
    assert b.refresh() == 13 and c.refresh() == 13
    assert FileDatasetStore(tmp_path, writer="fresh").refresh() == 13
