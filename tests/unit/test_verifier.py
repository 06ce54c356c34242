"""Token-level embeddings and the (experimental) learned verifier built on them."""

from __future__ import annotations

import numpy as np
import pytest

from thrifty_core.embedding import TokenEmbedder
from thrifty_core.embedding.local import LocalEmbedder
from thrifty_gateway.services.cache.verifier import (
    FEATURES,
    Verifier,
    VerifierModel,
    alignment,
    decode_tokens,
    encode_tokens,
    load_model,
    pair_features,
)


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> LocalEmbedder:
    return LocalEmbedder(cache_dir=tmp_path_factory.mktemp("cache"))


def test_token_vectors_come_with_the_sentence_vectors(embedder: LocalEmbedder) -> None:
    texts = ["How do I reset my password?", "a", "The quick brown fox jumps over the lazy dog."]
    assert isinstance(embedder, TokenEmbedder)
    vectors, tokens = embedder.embed_with_tokens(texts)
    np.testing.assert_allclose(vectors, embedder.embed(texts), atol=1e-5)
    for text, t in zip(texts, tokens, strict=True):
        assert t.shape == (embedder.count_tokens(text) - 2, embedder.dim)  # no [CLS]/[SEP]
        np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    # Padding in a batch does not change a text's token vectors.
    _, alone = embedder.embed_with_tokens([texts[1]])
    np.testing.assert_allclose(alone[0], tokens[1], atol=1e-4)
    empty_vectors, empty_tokens = embedder.embed_with_tokens([])
    assert empty_vectors.shape == (0, embedder.dim) and empty_tokens == []


def test_int8_payload_encoding_round_trips() -> None:
    rng = np.random.default_rng(7)
    t = rng.normal(size=(12, 384)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    encoded = encode_tokens(t)
    assert len(encoded) < 12 * 390 * 4 / 3 + 8  # ~dim + 2 bytes a token, base64
    back = decode_tokens(encoded, 384)
    assert back.shape == t.shape
    assert float((back * t).sum(axis=1).min()) > 0.999
    with pytest.raises(ValueError, match="embedding size"):
        decode_tokens(encoded, 383)


def test_alignment_of_a_text_with_itself_is_perfect(embedder: LocalEmbedder) -> None:
    _, (t,) = embedder.embed_with_tokens(["How can I learn to play the guitar?"])
    p, r, f1, worst_q, worst_c = alignment(t, t)
    assert p == pytest.approx(1.0, abs=1e-5) and r == pytest.approx(1.0, abs=1e-5)
    assert f1 == pytest.approx(1.0, abs=1e-5) and min(worst_q, worst_c) > 0.999
    assert alignment(t[:0], t) == (0.0, 0.0, 0.0, 0.0, 0.0)


def test_a_substituted_word_is_the_worst_aligned_token(embedder: LocalEmbedder) -> None:
    texts = ["How do I learn Python quickly?", "How do I learn Java quickly?"]
    _, (a, b) = embedder.embed_with_tokens(texts)
    best = (a @ b.T).max(axis=1)
    # Word pieces: how do i learn python quickly ?  The swapped entity matches nothing well.
    assert int(best.argmin()) == 4
    _, _, _, worst_q, _ = alignment(a, b)
    assert worst_q == pytest.approx(float(best.min()))


def test_the_shipped_model_loads_and_ranks_paraphrases_above_neighbours(
    embedder: LocalEmbedder,
) -> None:
    model = load_model()
    assert len(model.coef) == len(FEATURES)
    query = "How can I improve my English speaking skills?"
    para = "What can I do to improve my spoken English?"
    other = "How can I improve my French writing skills?"
    vectors, tokens = embedder.embed_with_tokens([query, para, other])
    verifier = Verifier(model, threshold=0.5, dim=embedder.dim)
    probs = [
        verifier.probability(query, text, float(vectors[0] @ vectors[i]), tokens[0], encoded)
        for i, text, encoded in (
            (1, para, encode_tokens(tokens[1])),
            (2, other, encode_tokens(tokens[2])),
        )
    ]
    assert probs[0] > probs[1]
    assert verifier.accepts(query, query, 1.0, tokens[0], encode_tokens(tokens[0]))


def test_model_json_is_validated() -> None:
    data = load_model().to_json()
    assert VerifierModel.from_json(data) == load_model()
    with pytest.raises(ValueError, match="features"):
        VerifierModel.from_json({**data, "features": ["cosine"]})
    with pytest.raises(ValueError, match="coef"):
        VerifierModel.from_json({**data, "coef": [1.0]})


def test_features_are_in_the_declared_order(embedder: LocalEmbedder) -> None:
    texts = ["Where is the Eiffel tower?", "Where is the Eiffel tower located in Paris?"]
    vectors, tokens = embedder.embed_with_tokens(texts)
    x = pair_features(texts[0], texts[1], 0.9, tokens[0], tokens[1])
    assert len(x) == len(FEATURES)
    assert x[0] == 0.9
    assert 0 < x[FEATURES.index("length_ratio")] < 1
    assert 0 < x[FEATURES.index("overlap")] < 1
