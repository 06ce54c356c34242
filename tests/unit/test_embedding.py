"""The local embedding runtime: graph vs numpy reference, semantics, remote backend."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thrifty_core.api.cachepolicy import EmbeddingModel
from thrifty_core.embedding import Embedder, create_embedder
from thrifty_core.embedding.local import (
    STALE_GRAPH_SECONDS,
    LocalEmbedder,
    cached_graph,
    prune_stale_graphs,
)
from thrifty_core.embedding.reference import reference_forward
from thrifty_core.embedding.remote import EmbeddingError, OpenAIEmbedder
from thrifty_core.embedding.weights import BertFiles, load_minilm


@pytest.fixture(scope="module")
def files() -> BertFiles:
    return load_minilm()


@pytest.fixture(scope="module")
def embedder(files: BertFiles, tmp_path_factory: pytest.TempPathFactory) -> LocalEmbedder:
    return LocalEmbedder(files, cache_dir=tmp_path_factory.mktemp("cache"))


def test_graph_matches_numpy_reference(embedder: LocalEmbedder, files: BertFiles) -> None:
    texts = [
        "How do I reset my password?",
        "a",
        "The quick brown fox jumps over the lazy dog, twice, in 2014 and again in 2018.",
    ]
    ids, mask = embedder.tokenize(texts)
    assert mask[1].sum() < mask[2].sum()  # padding is exercised
    expected = reference_forward(files.config, files.weights, ids, mask)
    got = embedder.embed(texts)
    assert got.dtype == np.float32
    assert got.shape == (3, 384)
    cosines = (got.astype(np.float64) * expected).sum(axis=1)
    assert cosines.min() > 0.9999


def test_vectors_are_unit_and_batch_independent(embedder: LocalEmbedder) -> None:
    texts = ["short", "a somewhat longer sentence about caching answers of language models"]
    batch = embedder.embed(texts)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    alone = embedder.embed([texts[0]])
    assert float(alone[0] @ batch[0]) > 0.9999
    assert embedder.embed([]).shape == (0, 384)


def test_paraphrase_scores_higher_than_unrelated(embedder: LocalEmbedder) -> None:
    v = embedder.embed(
        [
            "How do I reset my password?",
            "How can I change my password?",
            "What is the capital of France?",
        ]
    )
    assert float(v[0] @ v[1]) > 0.75
    assert float(v[0] @ v[2]) < 0.3


def test_long_input_is_truncated(embedder: LocalEmbedder) -> None:
    ids, _ = embedder.tokenize(["word " * 1000])
    assert ids.shape[1] == 256
    assert embedder.embed(["word " * 1000]).shape == (1, 384)


def test_onnx_file_is_cached(files: BertFiles, tmp_path: Path) -> None:
    LocalEmbedder(files, cache_dir=tmp_path)
    built = list((tmp_path / "embedding").glob("*.onnx"))
    assert len(built) == 1
    assert files.digest in built[0].name
    before = built[0].stat()
    LocalEmbedder(files, cache_dir=tmp_path)
    after = built[0].stat()
    assert after.st_ino == before.st_ino  # loaded, not rebuilt (a rebuild renames a new file in)


def test_graphs_unused_for_a_week_are_pruned_when_a_new_one_is_built(
    files: BertFiles, tmp_path: Path
) -> None:
    folder = tmp_path / "embedding"
    folder.mkdir()
    week_ago = time.time() - STALE_GRAPH_SECONDS - 60
    old_graph, old_tmp = folder / "pair-old-g2p1-int8pc.onnx", folder / ".x.onnx.abc.tmp"
    recent = folder / "minilm-other-g3.onnx"
    for path in (old_graph, old_tmp, recent):
        path.write_bytes(b"graph")
    for path in (old_graph, old_tmp):
        os.utime(path, (week_ago, week_ago))
    LocalEmbedder(files, cache_dir=tmp_path)  # builds its graph: prunes what nobody used
    assert not old_graph.exists() and not old_tmp.exists()
    assert recent.exists()  # used within the week: kept
    assert len([p for p in folder.glob("*.onnx") if files.digest in p.name]) == 1
    # Loading (not building) prunes nothing and marks the loaded graph used: a week-old graph
    # that is loaded again is not pruned afterwards, the unused one is.
    (own,) = [p for p in folder.glob("*.onnx") if files.digest in p.name]
    for path in (own, recent):
        os.utime(path, (week_ago, week_ago))
    LocalEmbedder(files, cache_dir=tmp_path)
    assert recent.exists()
    assert own.stat().st_mtime > time.time() - 60
    assert prune_stale_graphs(folder) == [recent]
    assert own.exists()


def test_factory_builds_local_and_checks_dimensions(tmp_path: Path) -> None:
    embedder = create_embedder(EmbeddingModel(), cache_dir=tmp_path)
    assert isinstance(embedder, Embedder)
    assert embedder.dim == 384
    with pytest.raises(ValueError, match="dimensions"):
        create_embedder(EmbeddingModel(dimensions=768), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="not packaged"):
        create_embedder(EmbeddingModel(model="bge-large"), cache_dir=tmp_path)


class _EmbeddingsHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != "Bearer k":
            self.send_response(401)
            self.end_headers()
            return
        data = [
            {"index": i, "embedding": [float(len(t))] + [0.0] * 7}
            for i, t in enumerate(body["input"])
        ][::-1]
        payload = json.dumps({"data": data, "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        del format, args


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _EmbeddingsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_remote_embedder_orders_and_normalises(endpoint: str) -> None:
    spec = EmbeddingModel(backend="openai", endpoint=endpoint, model="emb", dimensions=8)
    embedder = create_embedder(spec, api_key="k")
    out = embedder.embed(["ab", "abcd"])
    assert out.shape == (2, 8)
    assert np.allclose(out[:, 0], 1.0)
    assert isinstance(embedder, OpenAIEmbedder)
    embedder.close()


def test_remote_embedder_errors_are_typed(endpoint: str) -> None:
    bad_key = OpenAIEmbedder(endpoint, "emb", 8, api_key="wrong")
    with pytest.raises(EmbeddingError):
        bad_key.embed(["x"])
    bad_dim = OpenAIEmbedder(endpoint, "emb", 16, api_key="k")
    with pytest.raises(EmbeddingError, match="shape"):
        bad_dim.embed(["x"])
    bad_key.close()
    bad_dim.close()


def test_unusable_cache_dir_falls_back_to_temp(files: BertFiles, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    embedder = LocalEmbedder(files, cache_dir=blocker)
    assert embedder.embed(["hello"]).shape == (1, 384)
    fallback = Path(tempfile.gettempdir()) / "thrifty" / "embedding"
    assert any(files.digest in p.name for p in fallback.glob("*.onnx"))


def _matmul_chain(layers: int = 12, width: int = 1024) -> Any:
    """A graph of `layers` MatMuls named like the encoder's ("l<i>_q_mm"), 48 MB of weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = f"w{i}"
        inits.append(numpy_helper.from_array(rng.standard_normal((width, width), np.float32), w))
        nodes.append(helper.make_node("MatMul", [x, w], [f"y{i}"], name=f"l{i}_q_mm_{i}"))
        x = f"y{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", width])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _build_int8(folder: str, start: Any) -> str:
    import onnxruntime.quantization  # noqa: F401 - imported before the start line, not after

    start.wait()  # all at once, as workers that start together
    return cached_graph("chain", _matmul_chain, Path(folder), "int8").name


def test_workers_quantising_the_same_graph_at_once_all_get_it(tmp_path: Path) -> None:
    """onnxruntime's quantiser writes and deletes a scratch file named after its input: workers
    starting together (uvicorn workers, pods sharing a cache) each quantise their own copy."""
    import multiprocessing

    import onnx

    cached_graph("chain", _matmul_chain, tmp_path, "float32")  # the float graph exists already
    spawn = multiprocessing.get_context("spawn")
    with spawn.Manager() as manager, spawn.Pool(4) as pool:
        start = manager.Barrier(4)
        names = pool.starmap(_build_int8, [(str(tmp_path), start)] * 4)
    assert names == ["chain-int8pc-rr-fl0.onnx"] * 4
    folder = tmp_path / "embedding"
    assert sorted(p.name for p in folder.iterdir()) == ["chain-int8pc-rr-fl0.onnx", "chain.onnx"]
    nodes = onnx.load(str(folder / "chain-int8pc-rr-fl0.onnx")).graph.node
    kept = [n for n in nodes if n.op_type == "MatMul"]
    assert [n.name for n in kept] == ["l0_q_mm_0"]  # the first layer stays float, the rest int8
    assert len(nodes) > len(kept) + 1  # quantised nodes replaced the other MatMuls


@pytest.fixture(scope="module")
def int8_embedder(files: BertFiles, tmp_path_factory: pytest.TempPathFactory) -> LocalEmbedder:
    return LocalEmbedder(files, cache_dir=tmp_path_factory.mktemp("int8"), precision="int8")


def test_int8_embeddings_track_float_ones_and_never_depend_on_the_batch(
    embedder: LocalEmbedder, int8_embedder: LocalEmbedder
) -> None:
    """The semantic cache's default (`EmbeddingModel.precision`): int8 activations are scaled
    per run, so each text gets a run of its own and its vector is the same whatever it is
    embedded with."""
    texts = [
        "How do I reset my online banking password?",
        "a",
        "The quick brown fox jumps over the lazy dog, twice, in 2014 and again in 2018.",
    ]
    batch = int8_embedder.embed(texts)
    for i, text in enumerate(texts):
        assert np.array_equal(batch[i], int8_embedder.embed([text])[0])
    exact = embedder.embed(texts)
    cosines = (batch * exact).sum(axis=1)
    assert cosines.min() > 0.98 and not np.allclose(batch, exact, atol=1e-6)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    # What one run over the batch would give: another vector for the same text.
    ids, mask = int8_embedder.tokenize(texts)
    (joint,) = int8_embedder._session.run(
        ["embeddings"], {"input_ids": ids, "attention_mask": mask}
    )
    assert not np.allclose(joint[0], batch[0], atol=1e-4)


def test_the_factory_builds_the_declared_precision(files: BertFiles, tmp_path: Path) -> None:
    default = create_embedder(EmbeddingModel(), files=files, cache_dir=tmp_path)
    exact = create_embedder(EmbeddingModel(precision="float32"), files=files, cache_dir=tmp_path)
    assert isinstance(default, LocalEmbedder) and isinstance(exact, LocalEmbedder)
    assert (default.precision, exact.precision) == ("int8", "float32")
    graphs = sorted(p.name for p in (tmp_path / "embedding").glob("*.onnx"))
    assert len(graphs) == 2 and any(g.endswith("-int8pc-rr-fl0.onnx") for g in graphs)
