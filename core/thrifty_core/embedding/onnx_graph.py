"""Build the ONNX graph of a BERT sentence encoder straight from its safetensors weights.

Why build the graph here: the weights package ships safetensors only, and exporting through
torch would pull gigabytes of code into the gateway image to run a 22M-parameter model. The
encoder is small and fixed (embeddings -> N x [self-attention, feed-forward] -> mean pooling ->
L2 norm), so it is written once with `onnx.helper` and run by onnxruntime, which fuses
LayerNorm/GELU/MatMul+Add itself and runs it on one core in a few milliseconds. A numpy
reference forward pass (`reference.py`) checks the graph numerically in the unit tests.

The sentence graph takes `input_ids` and `attention_mask` (int64, [batch, seq]) and returns
`embeddings` (float32, [batch, hidden]), mean-pooled over unmasked tokens and L2-normalised.
Token type ids are always 0 for single sentences, so the type-0 row is folded into the
position table. The query projection is pre-scaled by 1/sqrt(head_dim).

The pair graph (`build_pair_onnx`, the semantic cache's verifier) is the same encoder over a
sentence pair with `token_type_ids` and mean pooling; its logistic head runs in numpy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .weights import BertConfig

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

OPSET = 17
GRAPH_VERSION = "4"  # bump when the graph changes, node names included (it keys the on-disk cache)
MASK_NEG = -1e4
LAYER_PREFIX = "l"  # dense-layer node names start with "l<layer index>_"


def layer_nodes(index: int) -> str:
    """The name prefix of the dense (MatMul) nodes of encoder layer `index`."""
    return f"{LAYER_PREFIX}{index}_"


class _Builder:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, hint: str, array: npt.NDArray[Any]) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(array, name=name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "", **attrs: Any) -> str:
        from onnx import helper

        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def linear(self, x: str, weight: npt.NDArray[Any], bias: npt.NDArray[Any], hint: str) -> str:
        # torch Linear stores [out, in]; MatMul wants [in, out].
        w = self.const(f"{hint}_w", weight.T.copy())
        b = self.const(f"{hint}_b", bias)
        # The MatMul is named after its layer ("l0_q_mm_7"), so that quantisation can keep
        # chosen layers in float (`local.cached_graph`).
        return self.op("Add", [self.op("MatMul", [x, w], f"{hint}_mm"), b], hint)

    def layer_norm(
        self, x: str, gamma: npt.NDArray[Any], beta: npt.NDArray[Any], eps: float
    ) -> str:
        g = self.const("ln_g", gamma)
        b = self.const("ln_b", beta)
        return self.op("LayerNormalization", [x, g, b], "ln", axis=-1, epsilon=eps)


def _encoder(
    g: _Builder,
    config: BertConfig,
    weights: dict[str, npt.NDArray[np.float32]],
    segments: bool,
) -> tuple[str, str]:
    """The BERT encoder; returns (last hidden state, float attention mask).

    With `segments`, a `token_type_ids` input selects rows of the token-type table (sentence
    pairs); without it the type-0 row is folded into the position table.
    """
    import numpy as np
    from onnx import TensorProto

    f32 = np.float32
    i64 = np.int64
    hd = config.head_dim
    scale = 1.0 / math.sqrt(hd)

    # Embeddings: word[ids] + (position + type)[:seq], then LayerNorm.
    word = g.const("word_emb", weights["embeddings.word_embeddings.weight"])
    types = weights["embeddings.token_type_embeddings.weight"]
    pos_table = weights["embeddings.position_embeddings.weight"]
    if not segments:
        pos_table = pos_table + types[0:1]
    pos = g.const("pos_emb", pos_table.astype(f32))
    shape = g.op("Shape", ["input_ids"])
    seq = g.op(
        "Slice", [shape, g.const("one", np.array([1], i64)), g.const("two", np.array([2], i64))]
    )
    pos_rows = g.op(
        "Slice", [pos, g.const("zero", np.array([0], i64)), seq, g.const("ax0", np.array([0], i64))]
    )
    emb = g.op("Add", [g.op("Gather", [word, "input_ids"], axis=0), pos_rows])
    if segments:
        table = g.const("type_emb", types.astype(f32))
        emb = g.op("Add", [emb, g.op("Gather", [table, "token_type_ids"], axis=0)])
    x = g.layer_norm(
        emb,
        weights["embeddings.LayerNorm.weight"],
        weights["embeddings.LayerNorm.bias"],
        config.layer_norm_eps,
    )

    # Additive attention bias [batch, 1, 1, seq]: 0 for tokens, MASK_NEG for padding.
    maskf = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    inv = g.op("Sub", [g.const("onef", np.array(1.0, f32)), maskf])
    bias = g.op("Mul", [inv, g.const("neg", np.array(MASK_NEG, f32))])
    bias4 = g.op("Unsqueeze", [bias, g.const("ax12", np.array([1, 2], i64))])

    split_shape = g.const("split_shape", np.array([0, 0, config.heads, hd], i64))
    merge_shape = g.const("merge_shape", np.array([0, 0, config.hidden], i64))
    for i in range(config.layers):
        p = f"encoder.layer.{i}."
        a = p + "attention.self."
        n = layer_nodes(i)
        q = g.linear(
            x, weights[a + "query.weight"] * scale, weights[a + "query.bias"] * scale, n + "q"
        )
        k = g.linear(x, weights[a + "key.weight"], weights[a + "key.bias"], n + "k")
        v = g.linear(x, weights[a + "value.weight"], weights[a + "value.bias"], n + "v")
        qh = g.op("Transpose", [g.op("Reshape", [q, split_shape])], perm=[0, 2, 1, 3])
        kh = g.op("Transpose", [g.op("Reshape", [k, split_shape])], perm=[0, 2, 3, 1])
        vh = g.op("Transpose", [g.op("Reshape", [v, split_shape])], perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("MatMul", [qh, kh]), bias4])
        probs = g.op("Softmax", [scores], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, vh])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_shape])
        o = p + "attention.output."
        attn = g.linear(ctx, weights[o + "dense.weight"], weights[o + "dense.bias"], n + "attn_out")
        x = g.layer_norm(
            g.op("Add", [attn, x]),
            weights[o + "LayerNorm.weight"],
            weights[o + "LayerNorm.bias"],
            config.layer_norm_eps,
        )
        h = g.linear(
            x,
            weights[p + "intermediate.dense.weight"],
            weights[p + "intermediate.dense.bias"],
            n + "ffn_in",
        )
        # Exact GELU: 0.5 * h * (1 + erf(h / sqrt(2))); onnxruntime fuses this pattern.
        erf = g.op("Erf", [g.op("Div", [h, g.const("sqrt2", np.array(math.sqrt(2.0), f32))])])
        gelu = g.op(
            "Mul",
            [
                g.op("Mul", [h, g.op("Add", [erf, g.const("onef", np.array(1.0, f32))])]),
                g.const("half", np.array(0.5, f32)),
            ],
        )
        out = g.linear(
            gelu,
            weights[p + "output.dense.weight"],
            weights[p + "output.dense.bias"],
            n + "ffn_out",
        )
        x = g.layer_norm(
            g.op("Add", [out, x]),
            weights[p + "output.LayerNorm.weight"],
            weights[p + "output.LayerNorm.bias"],
            config.layer_norm_eps,
        )

    return x, maskf


def _pool(g: _Builder, x: str, maskf: str) -> str:
    """Mean of the hidden states over unmasked tokens."""
    import numpy as np

    i64 = np.int64
    m3 = g.op("Unsqueeze", [maskf, g.const("ax2", np.array([2], i64))])
    summed = g.op(
        "ReduceSum", [g.op("Mul", [x, m3]), g.const("ax1", np.array([1], i64))], keepdims=0
    )
    count = g.op("ReduceSum", [m3, g.const("ax1", np.array([1], i64))], keepdims=0)
    count = g.op("Max", [count, g.const("tiny", np.array(1e-9, np.float32))])
    return g.op("Div", [summed, count])


def _model(g: _Builder, name: str, inputs: list[Any], outputs: list[Any]) -> Any:
    from onnx import checker, helper

    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="thrifty"
    )
    model.ir_version = 8
    checker.check_model(model)
    return model


def build_bert_onnx(config: BertConfig, weights: dict[str, npt.NDArray[np.float32]]) -> Any:
    """Return an `onnx.ModelProto` of the encoder + mean pooling + L2 normalisation."""
    import numpy as np
    from onnx import TensorProto, helper

    g = _Builder()
    x, maskf = _encoder(g, config, weights, segments=False)
    mean = _pool(g, x, maskf)
    norm = g.op("ReduceL2", [mean], axes=[1], keepdims=1)  # axes is an attribute before 18
    norm = g.op("Max", [norm, g.const("tiny12", np.array(1e-12, np.float32))])
    g.nodes.append(helper.make_node("Div", [mean, norm], ["embeddings"], name="l2norm"))
    ids, mask = _int_inputs("input_ids", "attention_mask")
    return _model(
        g,
        "bert_sentence_encoder",
        [ids, mask],
        [
            helper.make_tensor_value_info(
                "embeddings", TensorProto.FLOAT, ["batch", config.hidden]
            ),
        ],
    )


def build_pair_onnx(config: BertConfig, weights: dict[str, npt.NDArray[np.float32]]) -> Any:
    """A cross-encoder body: the encoder over "[CLS] a [SEP] b [SEP]" with segment ids and
    mean pooling. Inputs `input_ids`, `token_type_ids`, `attention_mask`; output `pooled`
    (float32, [batch, hidden]). The logistic head stays outside the graph (one dot product in
    numpy), so int8 quantisation of the graph never touches it."""
    from onnx import TensorProto, helper

    g = _Builder()
    x, maskf = _encoder(g, config, weights, segments=True)
    g.nodes.append(helper.make_node("Identity", [_pool(g, x, maskf)], ["pooled"], name="pooled"))
    return _model(
        g,
        "bert_pair_encoder",
        list(_int_inputs("input_ids", "token_type_ids", "attention_mask")),
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", config.hidden])],
    )


def _int_inputs(*names: str) -> tuple[Any, ...]:
    from onnx import TensorProto, helper

    return tuple(
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in names
    )
