"""The semantic cache's pair verifier: graph vs numpy reference, adapter loading, behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from thrifty_core.api.cachepolicy import CachePolicySpec, PairVerifier
from thrifty_core.embedding import PairScoring, create_pair_scorer
from thrifty_core.embedding.pair import (
    DEFAULT_ADAPTER,
    PairScorer,
    load_adapter,
    merged_weights,
    packaged_adapter,
)
from thrifty_core.embedding.reference import reference_forward
from thrifty_core.embedding.weights import BertFiles, load_minilm

ADAPTER = packaged_adapter(DEFAULT_ADAPTER)


@pytest.fixture(scope="module")
def files() -> BertFiles:
    return load_minilm()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pair")


@pytest.fixture(scope="module")
def scorer(files: BertFiles, cache_dir: Path) -> PairScorer:
    """The default: the float graph the gateway serves."""
    return PairScorer(files=files, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def int8_scorer(files: BertFiles, cache_dir: Path) -> PairScorer:
    return PairScorer(files=files, cache_dir=cache_dir, quantize=True)


def test_adapter_is_small_and_merges_into_every_dense_layer(files: BertFiles) -> None:
    assert ADAPTER.stat().st_size < 3_000_000  # lives in git and in the wheel
    adapter = load_adapter(ADAPTER)
    assert adapter.base_digest == files.digest
    dense = {k for k in files.weights if k.startswith("encoder.") and k.endswith("dense.weight")}
    dense |= {
        k for k in files.weights if k.endswith(("query.weight", "key.weight", "value.weight"))
    }
    assert set(adapter.deltas) == dense
    merged = merged_weights(files, adapter)
    name = "encoder.layer.0.attention.self.query.weight"
    assert not np.allclose(merged[name], files.weights[name])
    assert merged[name].shape == files.weights[name].shape


def test_adapter_for_other_base_weights_is_refused(files: BertFiles) -> None:
    adapter = load_adapter(ADAPTER)
    other = BertFiles(files.weights, files.tokenizer_json, files.config, "0" * 16)
    with pytest.raises(ValueError, match="trained on base weights"):
        merged_weights(other, adapter)


def test_pair_graph_matches_numpy_reference(files: BertFiles, scorer: PairScorer) -> None:
    from tokenizers import Tokenizer

    query = "How do I reset my password?"
    candidates = ["How can I change the password of my bank account today?", "Capital of France?"]
    tok = Tokenizer.from_str(files.tokenizer_json)
    tok.enable_padding()
    enc = tok.encode_batch([(query, c) for c in candidates])
    ids = np.array([e.ids for e in enc])
    types = np.array([e.type_ids for e in enc])
    mask = np.array([e.attention_mask for e in enc])
    assert types.max() == 1 and mask.min() == 0  # segments and padding are exercised
    adapter = load_adapter(ADAPTER)
    mean = reference_forward(
        files.config, merged_weights(files, adapter), ids, mask, types, normalize=False
    )
    expected = 1.0 / (1.0 + np.exp(-(mean @ adapter.head_weight + adapter.head_bias)))
    got = scorer.score(query, candidates)
    assert got.shape == (2,)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_int8_graph_tracks_the_float_graph(scorer: PairScorer, int8_scorer: PairScorer) -> None:
    query = "What is the best way to learn Python?"
    cands = [
        "How should I learn Python?",
        "What is the best way to learn Java?",
        "How do I cook rice?",
    ]
    # int8 dense layers move scores by up to ~0.15 (p99 0.095 over 300 QQP pairs) ...
    np.testing.assert_allclose(
        int8_scorer.score(query, cands), scorer.score(query, cands), atol=0.2
    )
    assert int8_scorer.score(query, []).shape == (0,)


def test_a_candidates_float_score_does_not_depend_on_its_batch(
    scorer: PairScorer, int8_scorer: PairScorer
) -> None:
    """... and, quantising activations per batch, make a candidate's int8 score depend on the
    candidates scored with it; the float graph the gateway serves does not."""
    query = "How do I make pizza dough at home?"
    cand = "How do I make bread dough at home?"
    others = ["What is the capital of France and why is it famous for its museums and food?"]
    alone, batched = scorer.score(query, [cand])[0], scorer.score(query, [cand, *others])[0]
    assert abs(float(alone) - float(batched)) < 1e-4
    drift = abs(
        float(int8_scorer.score(query, [cand])[0])
        - float(int8_scorer.score(query, [cand, *others])[0])
    )
    assert drift > 1e-4


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        (
            "How do I reset my online banking password?",
            "How can I reset my online banking password?",
        ),
        ("Explain recursion to a beginner", "Explain recursion to a beginner, please"),
        ("Give me tips to sleep better", "Give me some tips to sleep better"),
        # The same instruction on both sides (templated prompts) keeps a paraphrase one.
        (
            "How do I reset my online banking password? Answer briefly.",
            "How can I reset my online banking password? Answer briefly.",
        ),
    ],
)
def test_close_paraphrases_pass_the_default(scorer: PairScorer, query: str, cached: str) -> None:
    assert float(scorer.score(query, [cached])[0]) >= PairVerifier().min_score


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("How can I learn to play the guitar?", "How can I learn to play the piano?"),
        ("What is the best laptop for programming?", "What is the best laptop for gaming?"),
        ("How do I become a data scientist?", "What does a data scientist do?"),
        ("How do I make pizza dough?", "How do I make bread dough?"),
    ],
)
def test_topical_neighbours_are_rejected(scorer: PairScorer, query: str, cached: str) -> None:
    assert float(scorer.score(query, [cached])[0]) < PairVerifier().min_score


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        (
            "How do I make pizza dough at home? Answer in one paragraph.",
            "How do I make bread dough at home? Answer in one paragraph.",
        ),
        (
            "How do I make pizza dough at home? ref 3fa9c2",
            "How do I make bread dough at home? ref 3fa9c2",
        ),
    ],
)
def test_shared_boilerplate_does_not_make_two_questions_the_same(
    scorer: PairScorer, query: str, cached: str
) -> None:
    """Templated prompts share instructions or tags; the adapter's second stage trained on
    shared affixes (before it these pairs scored 0.98, a hair under the default minScore)."""
    assert float(scorer.score(query, [cached])[0]) < 0.5


def test_factory_builds_the_declared_model(scorer: PairScorer, cache_dir: Path) -> None:
    spec = CachePolicySpec.model_validate({"semantic": {"enabled": False}})
    built = create_pair_scorer(spec.semantic.guard.verifier.model, cache_dir=cache_dir)
    assert isinstance(built, PairScoring)
    assert built.name == scorer.name and built.name.startswith(DEFAULT_ADAPTER)
    assert [p.name for p in cache_dir.glob("embedding/*.tmp")] == []  # renamed into place
    graphs = [p.name for p in cache_dir.glob("embedding/pair-*.onnx")]
    assert len([g for g in graphs if not g.endswith("-int8pc.onnx")]) == 1


def test_adapter_records_how_it_was_trained(scorer: PairScorer) -> None:
    assert int(scorer.metadata["bench_pairs_excluded"]) >= 1000  # the semantic bench's QQP slice
    assert "QQP" in scorer.metadata["trained_on"]
    # Two stages, both on record: the second (shared affixes) started from the first.
    assert float(scorer.metadata["affix_share"]) > 0
    stage1 = json.loads(scorer.metadata["init_metadata"])
    assert float(stage1["epochs"]) == 2 and stage1["base"] == scorer.metadata["base"]
