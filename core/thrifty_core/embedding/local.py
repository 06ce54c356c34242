"""The local embedder: a BERT sentence encoder run by onnxruntime on CPU.

The ONNX graph is generated from the packaged weights on first use (`onnx_graph`) and cached
under `<cache_dir>/embedding/<model>-<weights digest>-g<graph version>[<int8 suffix>].onnx`
(see `cached_graph`), so
later starts only load it; graphs no process loaded for a week are deleted when a new one is
built. `intra_op_num_threads=1` by default: per-request latency on one core matters more to the
gateway than batch throughput, and several workers share the CPUs.

`precision="int8"` applies onnxruntime's dynamic int8 quantisation to the MatMul weights of
the layers after the first, with 7-bit weights (`INT8_SUFFIX`'s recipe; about twice as fast
on one core, a few percent
fewer semantic hits: bench/RESULTS.md, Cache), and embeds one text per run so that a vector
never depends on its batch mates. The semantic cache uses it by default (`EmbeddingModel.
precision`); the classifier students keep the float graph (`LocalEmbedder`'s default) they were
measured with. The pair verifier's graph is built the same way (`pair.py`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..api.cachepolicy import Precision
from .onnx_graph import GRAPH_VERSION, build_bert_onnx, layer_nodes
from .weights import MAX_TOKENS, MINILM_NAME, BertFiles, load_minilm

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

logger = logging.getLogger(__name__)

# A graph no process has loaded for this long belongs to an older weights digest, adapter or
# graph version (or to a setting no longer used, such as another precision): it is deleted when a
# new graph is built, so upgrades do not pile up 20-90 MB files. A process that still wants it
# rebuilds it at its next start (a running one holds its graph in memory). Not a lock: a start
# that loads a week-old graph in the very moment another process prunes it fails (onnxruntime
# finds no file) and the next start rebuilds the graph.
STALE_GRAPH_SECONDS = 7 * 24 * 3600


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/thrifty` or `~/.cache/thrifty`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "thrifty"


# The int8 graph, one recipe for the embedder and the pair verifier: the dense layers' weights
# in int8, per channel and in 7 bits (`reduce_range`: CPUs without VNNI, whose uint8 x int8
# products saturate 16-bit sums, compute what CPUs with it do), except the first layer's, which
# stay float (quantising them too lost the most semantic hits: bench/RESULTS.md, Cache).
FLOAT_LAYERS_IN_INT8 = (layer_nodes(0),)
INT8_SUFFIX = "-int8pc-rr" + "".join(f"-f{p.rstrip('_')}" for p in FLOAT_LAYERS_IN_INT8)


def ensure_onnx_file(files: BertFiles, name: str, cache_dir: Path, precision: Precision) -> Path:
    """Build (once) and return the path of the cached ONNX graph for `files`."""
    return cached_graph(
        f"{name}-{files.digest}-g{GRAPH_VERSION}",
        lambda: build_bert_onnx(files.config, files.weights),
        cache_dir,
        precision,
    )


def cached_graph(
    stem: str, build: Callable[[], Any], cache_dir: Path, precision: Precision
) -> Path:
    """`<cache_dir>/embedding/<stem>.onnx` (float32) or `<stem>-int8pc-rr-fl0.onnx` (int8, the
    recipe above, quantised from the float one), built by `build()` the first time.

    Files are written under a temporary name and renamed, so concurrent workers never read a
    half-written graph; a read-only cache dir (containers) falls back to the temp dir.
    """
    import onnx

    folder = cache_dir / "embedding"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(str(folder))
    except OSError:
        folder = Path(tempfile.gettempdir()) / "thrifty" / "embedding"
        folder.mkdir(parents=True, exist_ok=True)
        logger.warning("embedding cache dir not writable; using %s", folder)
    plain = folder / f"{stem}.onnx"
    _mark_used(plain)  # first, so that a concurrent build's pruning sees it as used
    if not plain.exists():
        logger.info("building ONNX graph %s", plain)
        tmp = _temp_path(folder, plain.name)
        onnx.save_model(build(), str(tmp))
        tmp.replace(plain)
        prune_stale_graphs(folder)
    if precision == "float32":
        return plain
    quant = folder / f"{stem}{INT8_SUFFIX}.onnx"
    _mark_used(quant)
    if not quant.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # onnxruntime writes a scratch file named after its input next to it
        # (`<input>-inferred<suffix>`) and deletes it: each build quantises its own copy, so
        # that workers building at once do not delete each other's.
        source = _temp_path(folder, plain.name)
        inferred = source.with_name(f"{source.stem}-inferred{source.suffix}")
        tmp = _temp_path(folder, quant.name)
        try:
            shutil.copyfile(plain, source)
            excluded = [
                node.name
                for node in onnx.load(str(source)).graph.node
                if node.op_type == "MatMul" and node.name.startswith(FLOAT_LAYERS_IN_INT8)
            ]
            if not excluded:
                raise ValueError(
                    f"no MatMul node of {plain.name} starts with {FLOAT_LAYERS_IN_INT8}"
                )
            # Weights of the dense layers only (the embedding tables stay float).
            quantize_dynamic(
                str(source),
                str(tmp),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                reduce_range=True,
                nodes_to_exclude=excluded,
            )
            tmp.replace(quant)
        finally:
            for leftover in (source, inferred, tmp):
                leftover.unlink(missing_ok=True)
    return quant


def _temp_path(folder: Path, name: str) -> Path:
    """A fresh file name next to the target: unique even across pods sharing the folder."""
    fd, raw = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    return Path(raw)


def _mark_used(path: Path) -> None:
    """Record a load in the file's mtime (a read-only cache dir keeps its files anyway)."""
    try:
        os.utime(path)
    except OSError:
        pass


def prune_stale_graphs(folder: Path, now: float | None = None) -> list[Path]:
    """Delete graphs (and leftover temp files of interrupted builds) unused for
    STALE_GRAPH_SECONDS; returns what was deleted."""
    cutoff = (time.time() if now is None else now) - STALE_GRAPH_SECONDS
    removed: list[Path] = []
    for path in [*folder.glob("*.onnx"), *folder.glob(".*.tmp")]:
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except OSError:  # gone already (another worker pruned it) or not ours to delete
            continue
    if removed:
        logger.info("removed %d unused ONNX graph files from %s", len(removed), folder)
    return removed


def cpu_session(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session with `threads` intra-op threads and full graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class LocalEmbedder:
    """all-MiniLM-L6-v2 (or another packaged BERT encoder) on CPU through onnxruntime."""

    def __init__(
        self,
        files: BertFiles | None = None,
        *,
        name: str = MINILM_NAME,
        cache_dir: Path | None = None,
        threads: int = 1,
        precision: Precision = "float32",
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        from tokenizers import Tokenizer

        files = files or load_minilm()
        self._dim = files.config.hidden
        self.precision = precision
        path = ensure_onnx_file(files, name, cache_dir or default_cache_dir(), precision)
        self._session = cpu_session(path, threads)
        tokenizer = Tokenizer.from_str(files.tokenizer_json)
        tokenizer.enable_truncation(max_length=max_tokens)
        tokenizer.no_padding()
        self._tokenizer = tokenizer

    @property
    def dim(self) -> int:
        return self._dim

    def tokenize(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Token ids and attention mask, right-padded to the longest text of the batch."""
        import numpy as np

        encodings = self._tokenizer.encode_batch(list(texts))
        width = max((len(e.ids) for e in encodings), default=0)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return ids, mask

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text).ids)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        import numpy as np

        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        if self.precision == "int8" and len(texts) > 1:
            # One text per run: int8 activations are scaled per run, so a text's vector would
            # depend on its batch mates (and a cached entry on what was embedded beside it).
            return np.concatenate([self.embed([text]) for text in texts])
        ids, mask = self.tokenize(texts)
        (out,) = self._session.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})
        result: npt.NDArray[np.float32] = np.ascontiguousarray(out, dtype=np.float32)
        return result
