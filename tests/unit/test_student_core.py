"""Student pieces in core: redaction, capture records, artifact versions, classifier head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from thrifty_core.student.artifact import (
    ArtifactManifest,
    list_versions,
    next_version,
    resolve_version,
    write_manifest,
)
from thrifty_core.student.capture import (
    CaptureRecord,
    build_record,
    label_index,
    match_label,
    normalise_label,
    student_input,
)
from thrifty_core.student.classifier import ClassifierHead, load_head, save_head, softmax
from thrifty_core.student.redact import luhn_ok, redact
from thrifty_core.student.store import FileDatasetStore


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+x@mail.example.com today", "write to [EMAIL] today"),
        ("card 4111 1111 1111 1111 was charged", "card [CARD] was charged"),
        ("card 4111-1111-1111-1112 fails luhn", "card 4111-1111-1111-1112 fails luhn"),
        ("call +44 20 7946 0958 please", "call [PHONE] please"),
        ("or (555) 123-4567", "or [PHONE]"),
        ("paid 25 EUR on 2024-01-05 for 3 items", "paid 25 EUR on 2024-01-05 for 3 items"),
        ("order 12345 is late", "order 12345 is late"),
    ],
)
def test_redaction(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_luhn() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")


def completion(text: str, logprobs: bool = False) -> dict[str, object]:
    choice: dict[str, object] = {"index": 0, "message": {"role": "assistant", "content": text}}
    if logprobs:
        choice["logprobs"] = {
            "content": [
                {
                    "token": "card",
                    "logprob": -0.1,
                    "top_logprobs": [{"token": "card", "logprob": -0.1}],
                }
            ]
        }
    return {"choices": [choice]}


def test_build_record_redacts_and_keeps_logprobs() -> None:
    messages = [
        {"role": "system", "content": "Answer one of: a, b"},
        {"role": "user", "content": "my email is a@b.io"},
    ]
    record = build_record(
        request_id="r1",
        ts=1.0,
        route="intent",
        student="s",
        model="gpt-4o",
        messages=messages,
        completion=completion("card_arrival", logprobs=True),
        prompt_tokens=10,
        completion_tokens=2,
        cost_usd=0.001,
        keep_logprobs=True,
    )
    assert record is not None
    assert record.input == "my email is [EMAIL]"
    assert record.messages[1]["content"] == "my email is [EMAIL]"
    assert record.logprobs is not None and record.logprobs[0].top[0].token == "card"
    again = CaptureRecord.model_validate_json(record.model_dump_json())
    assert again == record
    tool = {"choices": [{"message": {"content": None, "tool_calls": [{"id": "x"}]}}]}
    assert (
        build_record(
            request_id="r2",
            ts=1.0,
            route="intent",
            student="s",
            model="m",
            messages=messages,
            completion=tool,
            prompt_tokens=1,
            completion_tokens=1,
            cost_usd=0,
        )
        is None
    )


def test_labels_normalise() -> None:
    assert normalise_label(" Card arrival. ") == "card_arrival"
    assert normalise_label("CARD-ARRIVAL") == "card_arrival"
    index = label_index(["card_arrival", "exchange_rate"])
    assert match_label("Exchange rate", index) == "exchange_rate"
    assert match_label("something else", index) is None
    assert (
        student_input([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "b"
    )


def manifest(version: str, passed: bool, promoted: bool) -> ArtifactManifest:
    return ArtifactManifest(
        version=version, kind="classifier", labels=["a", "b"], gate_passed=passed, promoted=promoted
    )


def test_versions_resolve_to_newest_promoted_or_the_pin(tmp_path: Path) -> None:
    assert resolve_version(tmp_path) is None
    assert next_version(tmp_path) == "v0001"
    write_manifest(tmp_path / "v0001", manifest("v0001", True, True))
    write_manifest(tmp_path / "v0002", manifest("v0002", True, True))
    write_manifest(tmp_path / "v0003", manifest("v0003", False, False))  # failed its gate
    assert [m.version for m in list_versions(tmp_path)] == ["v0001", "v0002", "v0003"]
    assert next_version(tmp_path) == "v0004"
    active = resolve_version(tmp_path)
    assert active is not None and active.version == "v0002"
    pinned = resolve_version(tmp_path, "v0001")  # rollback = pin serving.version
    assert pinned is not None and pinned.version == "v0001"
    with pytest.raises(LookupError, match="never passed"):
        resolve_version(tmp_path, "v0003")
    with pytest.raises(LookupError, match="does not exist"):
        resolve_version(tmp_path, "v0009")


def test_head_roundtrip_and_calibrated_proba(tmp_path: Path) -> None:
    weights = np.array([[2.0, -2.0], [0.0, 0.0]], dtype=np.float32)
    head = ClassifierHead(weights, np.zeros(2, dtype=np.float32), ("a", "b"), temperature=2.0)
    write_manifest(tmp_path, manifest("v0001", True, True))
    save_head(tmp_path, head)
    loaded = load_head(tmp_path)
    x = np.array([[1.0, 0.0]], dtype=np.float32)
    (pred,) = loaded.predict(x)
    assert pred.label == "a"
    assert pred.confidence == pytest.approx(float(softmax(np.array([[2.0, -2.0]]), 2.0)[0, 0]))
    assert pred.confidence < float(softmax(np.array([[2.0, -2.0]]), 1.0)[0, 0])


def test_file_store_appends_rotates_and_counts(tmp_path: Path) -> None:
    store = FileDatasetStore(tmp_path, shard_records=2, writer="w1")
    store.append([b'{"a":1}', b'{"a":2}'])
    store.append([b'{"a":3}'])
    assert store.count() == 3
    assert len(store.shards()) == 2
    with (tmp_path / store.shards()[-1]).open("ab") as fh:
        fh.write(b'{"partial"')  # a torn last line
    lines = [line for shard in store.shards() for line in store.read(shard)]
    assert lines == [b'{"a":1}', b'{"a":2}', b'{"a":3}']
    # a new writer process counts what is there and never appends to another's shard
    other = FileDatasetStore(tmp_path, shard_records=2, writer="w1")
    other.append([b'{"a":4}'])
    assert other.count() == 4
    assert len(other.shards()) == 3


def test_nothing_is_captured_without_a_user_turn_a_student_could_read() -> None:
    """A request whose user turn has no text (no user turn, an image only, blanks) gives the
    student nothing to learn from: no record, whatever the teacher answered."""
    for messages in (
        [{"role": "system", "content": "Answer one of: a, b"}],
        [{"role": "user", "content": "   "}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    ):
        record = build_record(
            request_id="r",
            ts=1.0,
            route="intent",
            student="s",
            model="m",
            messages=messages,
            completion=completion("card_arrival"),
            prompt_tokens=1,
            completion_tokens=1,
            cost_usd=0.0,
        )
        assert record is None, messages


def test_versions_named_after_runs_are_listed_in_creation_order(tmp_path: Path) -> None:
    """The operator's runs name their versions (v + 8 hex digits): listed, oldest first."""
    from thrifty_core.student.artifact import is_version

    assert is_version("v0001") and is_version("vdeadbeef") and not is_version("snapshot")
    write_manifest(
        tmp_path / "vdeadbeef",
        manifest("vdeadbeef", True, True).model_copy(update={"created": "2026-01-02T00:00:00Z"}),
    )
    write_manifest(
        tmp_path / "v0a1b2c3d",
        manifest("v0a1b2c3d", True, True).model_copy(update={"created": "2026-01-03T00:00:00Z"}),
    )
    assert [m.version for m in list_versions(tmp_path)] == ["vdeadbeef", "v0a1b2c3d"]
    active = resolve_version(tmp_path)
    assert active is not None and active.version == "v0a1b2c3d"


def test_vllm_probes_wait_for_the_model_to_load() -> None:
    from thrifty_core.student.serving import vllm_args, vllm_probes

    probes = vllm_probes("http", 1800)
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    assert {"livenessProbe", "readinessProbe"} <= set(probes)
    with pytest.raises(ValueError):
        vllm_probes("http", 1)
    args = vllm_args("base", "/a", "s", tensor_parallel_size=4)
    assert args[args.index("--tensor-parallel-size") + 1] == "4"
