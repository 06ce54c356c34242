"""The semantic cache's pair verifier: graph vs numpy reference, adapter loading, behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from thrifty_core.api.cachepolicy import CachePolicySpec, PairVerifier
from thrifty_core.embedding import PairScoring, create_pair_scorer
from thrifty_core.embedding.onnx_graph import layer_nodes
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
    """The default: int8 dense layers after the first, one run per pair."""
    return PairScorer(files=files, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def float_scorer(files: BertFiles, cache_dir: Path) -> PairScorer:
    return PairScorer(files=files, cache_dir=cache_dir, precision="float32")


@pytest.fixture(params=["int8", "float32"])
def any_scorer(
    request: pytest.FixtureRequest, scorer: PairScorer, float_scorer: PairScorer
) -> PairScorer:
    """Each precision a policy may choose: the behaviour tests hold for both."""
    return scorer if request.param == "int8" else float_scorer


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


def test_pair_graph_matches_numpy_reference(files: BertFiles, float_scorer: PairScorer) -> None:
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
    got = float_scorer.score(query, candidates)
    assert got.shape == (2,)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_int8_graph_tracks_the_float_graph(scorer: PairScorer, float_scorer: PairScorer) -> None:
    assert scorer.precision == PairVerifier().precision == "int8"  # the default
    query = "What is the best way to learn Python?"
    cands = [
        "How should I learn Python?",
        "What is the best way to learn Java?",
        "How do I cook rice?",
    ]
    got, exact = scorer.score(query, cands), float_scorer.score(query, cands)
    assert not np.allclose(got, exact, atol=1e-6)  # it is another graph ...
    np.testing.assert_allclose(got, exact, atol=0.1)  # ... that tracks the float one
    assert scorer.score(query, []).shape == (0,)


def test_the_int8_graph_keeps_the_first_layer_in_float(scorer: PairScorer, cache_dir: Path) -> None:
    """Quantising the first layer too lost the most hits (bench/RESULTS.md, Cache)."""
    import onnx

    assert scorer.precision == "int8"  # built the graph below

    (path,) = cache_dir.glob("embedding/pair-*-int8pc-rr-fl0.onnx")
    nodes = onnx.load(str(path)).graph.node
    first = [n for n in nodes if n.name.startswith(layer_nodes(0))]
    assert {n.op_type for n in first if "_mm" in n.name} == {"MatMul"}
    assert len([n for n in first if n.op_type == "MatMul"]) == 6  # q, k, v, out, ffn in/out
    later = [n for n in nodes if n.name.startswith(layer_nodes(1)) and "_mm" in n.name]
    assert later and all(n.op_type != "MatMul" for n in later)  # quantised


def test_a_candidates_score_does_not_depend_on_its_batch(
    scorer: PairScorer, float_scorer: PairScorer
) -> None:
    """int8 quantises activations per run, so it scores each pair in its own run; the float
    graph scores a lookup's candidates in one batch, where padding does not move a score."""
    query = "How do I make pizza dough at home?"
    cand = "How do I make bread dough at home?"
    others = ["What is the capital of France and why is it famous for its museums and food?"]
    for s, tolerance in ((scorer, 0.0), (float_scorer, 1e-4)):
        alone, batched = s.score(query, [cand])[0], s.score(query, [cand, *others])[0]
        assert abs(float(alone) - float(batched)) <= tolerance
    # What the int8 graph would do with a batch: the scale of the padded run moves the score.
    both = scorer._score([(query, cand), (query, others[0])])[0]
    assert abs(float(both) - float(scorer.score(query, [cand])[0])) > 1e-4


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
def test_close_paraphrases_pass_the_default(
    any_scorer: PairScorer, query: str, cached: str
) -> None:
    assert float(any_scorer.score(query, [cached])[0]) >= PairVerifier().min_score


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("How can I learn to play the guitar?", "How can I learn to play the piano?"),
        ("What is the best laptop for programming?", "What is the best laptop for gaming?"),
        ("How do I become a data scientist?", "What does a data scientist do?"),
        ("How do I make pizza dough?", "How do I make bread dough?"),
    ],
)
def test_topical_neighbours_are_rejected(any_scorer: PairScorer, query: str, cached: str) -> None:
    assert float(any_scorer.score(query, [cached])[0]) < PairVerifier().min_score


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
    any_scorer: PairScorer, query: str, cached: str
) -> None:
    """Templated prompts share instructions or tags; the adapter's second stage trained on
    shared affixes (before it these pairs scored 0.98, a hair under the default minScore)."""
    assert float(any_scorer.score(query, [cached])[0]) < 0.5


def test_factory_builds_the_declared_model(scorer: PairScorer, cache_dir: Path) -> None:
    spec = CachePolicySpec.model_validate({"semantic": {"enabled": False}})
    verifier = spec.semantic.guard.verifier
    built = create_pair_scorer(verifier.model, precision=verifier.precision, cache_dir=cache_dir)
    assert isinstance(built, PairScoring) and isinstance(built, PairScorer)
    assert built.name == scorer.name and built.name.startswith(DEFAULT_ADAPTER)
    assert built.precision == "int8"
    assert [p.name for p in cache_dir.glob("embedding/*.tmp")] == []  # renamed into place
    graphs = [p.name for p in cache_dir.glob("embedding/pair-*.onnx")]
    assert len([g for g in graphs if "-int8pc" not in g]) == 1


def test_adapter_records_how_it_was_trained(scorer: PairScorer) -> None:
    assert int(scorer.metadata["bench_pairs_excluded"]) >= 1000  # the semantic bench's QQP slice
    assert "QQP" in scorer.metadata["trained_on"]
    # Two stages, both on record: the second (shared affixes) started from the first.
    assert float(scorer.metadata["affix_share"]) > 0
    stage1 = json.loads(scorer.metadata["init_metadata"])
    assert float(stage1["epochs"]) == 2 and stage1["base"] == scorer.metadata["base"]


async def test_gateway_policies_share_a_verifier_per_model_and_precision() -> None:
    """The precision a policy declares is the one its lookups run; policies declaring the
    same verifier share one scorer."""
    from thrifty_gateway.services.cache.runtime import SharedModels

    models = SharedModels()
    default = await models.verifier(PairVerifier())
    exact = await models.verifier(PairVerifier(precision="float32"))
    assert isinstance(default, PairScorer) and isinstance(exact, PairScorer)
    assert (default.precision, exact.precision) == ("int8", "float32")
    assert await models.verifier(PairVerifier(min_score=0.9)) is default
    assert len(models.verifiers) == 2
