"""The embedding runtime shared by the semantic cache and the classifier student.

`Embedder` is the contract; `create_embedder(spec)` picks the implementation from a
`CachePolicy` `EmbeddingModel` spec: `local` runs all-MiniLM-L6-v2 through onnxruntime on CPU
(`LocalEmbedder`), `openai` calls an OpenAI-compatible embeddings endpoint (`OpenAIEmbedder`).
`create_pair_scorer(model)` builds the semantic cache's pair verifier (`pair.PairScorer`), a
cross-encoder on the same packaged encoder.
Heavy dependencies (numpy, onnxruntime, onnx, tokenizers, safetensors; httpx for `openai`) are
imported inside the implementations, behind the `embed` extra.
"""

from __future__ import annotations

from pathlib import Path

from ..api.cachepolicy import EmbeddingModel, PairModel, Precision
from .protocol import Embedder, PairScoring
from .weights import BertFiles

__all__ = ["Embedder", "PairScoring", "create_embedder", "create_pair_scorer"]

LOCAL_MODELS = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})


def create_embedder(
    spec: EmbeddingModel,
    *,
    files: BertFiles | None = None,
    api_key: str | None = None,
    cache_dir: Path | None = None,
    threads: int = 1,
    timeout: float = 5.0,
) -> Embedder:
    """Build the embedder a spec declares (the API key is resolved by the caller)."""
    if spec.backend == "openai":
        from .remote import OpenAIEmbedder

        if spec.endpoint is None:
            raise ValueError("an openai embedding backend needs an endpoint")
        return OpenAIEmbedder(
            spec.endpoint, spec.model, spec.dimensions, api_key=api_key, timeout=timeout
        )
    if spec.model not in LOCAL_MODELS:
        raise ValueError(
            f"local embedding model {spec.model!r} is not packaged; "
            f"available: {', '.join(sorted(LOCAL_MODELS))}"
        )
    from .local import LocalEmbedder

    embedder = LocalEmbedder(files, cache_dir=cache_dir, threads=threads, precision=spec.precision)
    if embedder.dim != spec.dimensions:
        raise ValueError(
            f"{spec.model} has {embedder.dim} dimensions, the spec says {spec.dimensions}"
        )
    return embedder


def create_pair_scorer(
    model: PairModel,
    *,
    precision: Precision = "int8",
    files: BertFiles | None = None,
    cache_dir: Path | None = None,
    threads: int = 1,
) -> PairScoring:
    """The packaged pair verifier `model` at `precision` (its graph built once and cached on
    disk); `files` are the base encoder's, read from the package when not given."""
    from .pair import PairScorer, packaged_adapter

    path = packaged_adapter(model)
    if not path.exists():
        raise ValueError(f"pair verifier {model!r} is not packaged ({path} is missing)")
    return PairScorer(path, files=files, cache_dir=cache_dir, threads=threads, precision=precision)
