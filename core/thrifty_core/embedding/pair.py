"""A pair scorer (cross-encoder) on CPU: does the cached question answer the query?

The model is the packaged all-MiniLM-L6-v2 encoder plus a small adapter trained for this job
(`bench/train_pair_verifier.py`): LoRA deltas for the dense layers, a token-type table and a
logistic head over mean pooling, about 1.4 MB of float16 in `adapters/`. The adapter is merged
into the base weights in memory and the encoder graph is built by `onnx_graph.build_pair_onnx`,
cached on disk like the embedder's and run by onnxruntime; the logistic head runs in numpy.

Two precisions (`PairVerifier.precision`). `int8` (the default): the embedder's int8 recipe
(`local.INT8_SUFFIX`: dense layers after the first in int8, 7-bit weights); about 40% less
time than the float graph. Dynamic quantisation
scales the activations per run, so a candidate scored in one batch with others would get a
score that depends on them; a cache decision must not, so int8 scores each pair in its own run.
`float32`: the float graph, one batch per lookup (its scores do not depend on the batch),
matching torch to 5e-5.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..api.cachepolicy import Precision
from .local import cached_graph, cpu_session, default_cache_dir
from .onnx_graph import GRAPH_VERSION, build_pair_onnx
from .weights import BertFiles, load_minilm

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

ADAPTER_DIR = Path(__file__).with_name("adapters")
DEFAULT_ADAPTER = "minilm-pair-qqp"
PAIR_MAX_TOKENS = 128  # query + cached question; longer pairs are truncated (longest first)
PAIR_GRAPH_VERSION = "2"  # with the encoder's GRAPH_VERSION, keys the on-disk graph


def packaged_adapter(model: str) -> Path:
    """Where the packaged adapter `model` lives."""
    return ADAPTER_DIR / f"{model}.safetensors"


@dataclass(frozen=True)
class PairAdapter:
    """What training produced: LoRA deltas, replaced tables and the head."""

    deltas: dict[str, npt.NDArray[np.float32]]  # base weight name -> delta to add
    tables: dict[str, npt.NDArray[np.float32]]  # base weight name -> replacement
    head_weight: npt.NDArray[np.float32]
    head_bias: float
    base_digest: str
    digest: str
    metadata: dict[str, str]


def load_adapter(path: Path) -> PairAdapter:
    """Read an adapter file written by `bench/train_pair_verifier.py`."""
    import numpy as np
    from safetensors.numpy import load

    # One read serves the digest and the tensors, so both describe the same bytes even if the
    # file is replaced meanwhile. `safetensors.numpy.load` drops the header's metadata; the
    # format puts it in the JSON header after an 8-byte little-endian length.
    blob = path.read_bytes()
    header_len = int.from_bytes(blob[:8], "little")
    meta: dict[str, str] = json.loads(blob[8 : 8 + header_len]).get("__metadata__") or {}
    tensors = {k: v.astype(np.float32) for k, v in load(blob).items()}
    scale = float(meta.get("scale", "1"))
    deltas: dict[str, npt.NDArray[np.float32]] = {}
    for key in [k for k in tensors if k.startswith("lora.") and k.endswith(".A")]:
        name = key.removeprefix("lora.").removesuffix(".A")
        a, b = tensors[key], tensors[f"lora.{name}.B"]
        deltas[name] = (scale * (b @ a)).astype(np.float32)
    tables = {k: v for k, v in tensors.items() if k.startswith("embeddings.")}
    return PairAdapter(
        deltas=deltas,
        tables=tables,
        head_weight=tensors["head.weight"],
        head_bias=float(tensors["head.bias"].reshape(-1)[0]),
        base_digest=meta.get("base", ""),
        digest=hashlib.sha256(blob).hexdigest()[:16],
        metadata=dict(meta),
    )


def merged_weights(files: BertFiles, adapter: PairAdapter) -> dict[str, npt.NDArray[np.float32]]:
    """Base weights with the adapter's deltas added and its tables swapped in."""
    if adapter.base_digest and adapter.base_digest != files.digest:
        raise ValueError(
            f"pair adapter was trained on base weights {adapter.base_digest}, "
            f"not on the installed {files.digest}"
        )
    unknown = sorted(set(adapter.deltas) - set(files.weights))
    if unknown:
        raise ValueError(f"pair adapter names weights the base model lacks: {unknown[:3]}")
    weights = dict(files.weights)
    for name, delta in adapter.deltas.items():
        weights[name] = weights[name] + delta
    weights.update(adapter.tables)
    return weights


class PairScorer:
    """Scores (query, candidate) pairs in [0, 1]: one onnxruntime run per lookup (float32) or
    per pair (int8)."""

    def __init__(
        self,
        adapter_path: Path | None = None,
        *,
        files: BertFiles | None = None,
        cache_dir: Path | None = None,
        threads: int = 1,
        precision: Precision = "int8",
    ) -> None:
        import numpy as np
        from tokenizers import Tokenizer

        files = files or load_minilm()
        adapter_path = adapter_path or packaged_adapter(DEFAULT_ADAPTER)
        adapter = load_adapter(adapter_path)
        stem = f"pair-{files.digest}-{adapter.digest}-g{GRAPH_VERSION}p{PAIR_GRAPH_VERSION}"
        path = cached_graph(
            stem,
            lambda: build_pair_onnx(files.config, merged_weights(files, adapter)),
            cache_dir or default_cache_dir(),
            precision,
        )
        self.precision = precision
        self._head_weight = adapter.head_weight.astype(np.float32)
        self._head_bias = np.float32(adapter.head_bias)
        self._session = cpu_session(path, threads)
        tokenizer = Tokenizer.from_str(files.tokenizer_json)
        tokenizer.enable_truncation(max_length=PAIR_MAX_TOKENS)
        tokenizer.enable_padding()
        self._tokenizer = tokenizer
        self.name = f"{adapter_path.stem}-{adapter.digest}"
        self.metadata = adapter.metadata  # how it was trained (written by the training script)

    def score(self, query: str, candidates: Sequence[str]) -> npt.NDArray[np.float32]:
        """Probability, per candidate, that it asks the same thing as `query`."""
        import numpy as np

        if not candidates:
            return np.zeros(0, dtype=np.float32)
        if self.precision == "int8":  # one run per pair: see the module's docstring
            return np.concatenate([self._score([(query, c)]) for c in candidates])
        return self._score([(query, c) for c in candidates])

    def _score(self, pairs: list[tuple[str, str]]) -> npt.NDArray[np.float32]:
        import numpy as np

        encodings = self._tokenizer.encode_batch(pairs)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        (pooled,) = self._session.run(
            ["pooled"], {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
        )
        logits = np.asarray(pooled, dtype=np.float32) @ self._head_weight + self._head_bias
        result: npt.NDArray[np.float32] = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        return result
