"""A plain numpy forward pass of the BERT sentence encoder (the graph's numerical reference).

Slow (float64, no fusion, `math.erf` per element) and only used to check `onnx_graph`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .weights import BertConfig

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


def _layer_norm(
    x: npt.NDArray[np.float64], g: npt.NDArray[np.float32], b: npt.NDArray[np.float32], eps: float
) -> npt.NDArray[np.float64]:
    import numpy as np

    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    out: npt.NDArray[np.float64] = (x - mu) / np.sqrt(var + eps) * g + b
    return out


def _softmax(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    import numpy as np

    e = np.exp(x - x.max(-1, keepdims=True))
    out: npt.NDArray[np.float64] = e / e.sum(-1, keepdims=True)
    return out


def reference_forward(
    config: BertConfig,
    weights: dict[str, npt.NDArray[np.float32]],
    input_ids: npt.NDArray[np.int64],
    attention_mask: npt.NDArray[np.int64],
    token_type_ids: npt.NDArray[np.int64] | None = None,
    normalize: bool = True,
) -> npt.NDArray[np.float64]:
    """Mean-pooled sentence embeddings computed in float64 with numpy, L2-normalised unless
    `normalize` is false (the pair scorer's head reads the raw mean)."""
    import numpy as np

    w = {k: v.astype(np.float64) for k, v in weights.items()}
    batch, seq = input_ids.shape
    heads, hd = config.heads, config.head_dim
    erf = np.vectorize(math.erf)

    def lin(x: npt.NDArray[np.float64], name: str) -> npt.NDArray[np.float64]:
        out: npt.NDArray[np.float64] = x @ w[name + ".weight"].T + w[name + ".bias"]
        return out

    x = (
        w["embeddings.word_embeddings.weight"][input_ids]
        + w["embeddings.position_embeddings.weight"][:seq][None]
        + w["embeddings.token_type_embeddings.weight"][
            token_type_ids if token_type_ids is not None else np.zeros_like(input_ids)
        ]
    )
    x = _layer_norm(
        x, weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"], 1e-12
    )
    bias = (1.0 - attention_mask.astype(np.float64))[:, None, None, :] * -1e4
    for i in range(config.layers):
        p = f"encoder.layer.{i}."

        def heads_of(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            return t.reshape(batch, seq, heads, hd).transpose(0, 2, 1, 3)

        q = heads_of(lin(x, p + "attention.self.query"))
        k = heads_of(lin(x, p + "attention.self.key"))
        v = heads_of(lin(x, p + "attention.self.value"))
        probs = _softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, config.hidden)
        x = _layer_norm(
            lin(ctx, p + "attention.output.dense") + x,
            weights[p + "attention.output.LayerNorm.weight"],
            weights[p + "attention.output.LayerNorm.bias"],
            config.layer_norm_eps,
        )
        h = lin(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
        x = _layer_norm(
            lin(h, p + "output.dense") + x,
            weights[p + "output.LayerNorm.weight"],
            weights[p + "output.LayerNorm.bias"],
            config.layer_norm_eps,
        )
    m = attention_mask.astype(np.float64)[:, :, None]
    mean: npt.NDArray[np.float64] = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    if not normalize:
        return mean
    out: npt.NDArray[np.float64] = mean / np.maximum(
        np.linalg.norm(mean, axis=1, keepdims=True), 1e-12
    )
    return out
