"""An embedder that calls an OpenAI-compatible `/embeddings` endpoint (backend `openai`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


class EmbeddingError(RuntimeError):
    """The remote endpoint failed or answered with an unexpected shape."""


class OpenAIEmbedder:
    """POST {endpoint}/embeddings with httpx; vectors are re-normalised locally."""

    def __init__(
        self,
        endpoint: str,
        model: str,
        dim: int,
        *,
        api_key: str | None = None,
        timeout: float = 5.0,
        client: Any | None = None,
    ) -> None:
        import httpx

        self._url = endpoint.rstrip("/") + "/embeddings"
        self._model = model
        self._dim = dim
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.Client = client or httpx.Client(timeout=timeout, headers=headers)

    @property
    def dim(self) -> int:
        return self._dim

    def close(self) -> None:
        self._client.close()

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        import httpx
        import numpy as np

        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        try:
            response = self._client.post(
                self._url, json={"model": self._model, "input": list(texts)}
            )
            response.raise_for_status()
            data = sorted(response.json()["data"], key=lambda item: item["index"])
        except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            raise EmbeddingError(f"embedding endpoint failed: {type(exc).__name__}") from exc
        vectors = np.asarray([item["embedding"] for item in data], dtype=np.float32)
        if vectors.shape != (len(texts), self._dim):
            raise EmbeddingError(
                f"embedding endpoint returned shape {vectors.shape}, "
                f"expected {(len(texts), self._dim)}"
            )
        norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        result: npt.NDArray[np.float32] = (vectors / norms).astype(np.float32)
        return result
