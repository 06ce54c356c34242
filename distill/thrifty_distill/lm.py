"""The causal-lm student: LoRA fine-tuning of a small chat model on captured pairs.

transformers + peft (the `distill-lm` extra), device chosen automatically (CUDA when
present, else CPU). Real runs name a chat model (`spec.student.baseModel`, loaded with
`from_pretrained`, on GPUs); `tiny-random-llama` builds a randomly initialised two-layer
Llama and a word-level tokenizer fitted on the examples, so the same code runs on CPU in
tests without downloading anything.

Loss: cross-entropy on the answer tokens (the teacher's answer), plus, when the teacher's
logprobs gave a soft label, the KL divergence between the teacher's distribution over the
labels' first tokens and the student's (a distillation loss on the decisive token).
The adapter (`<version>/adapter`) is what vLLM serves (`thrifty_core.student.serving`).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thrifty_core.student.artifact import ADAPTER
from thrifty_core.student.capture import label_index, match_label

from .dataset import Example

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TINY = "tiny-random-llama"
BASE = "base"  # where a tiny base model is saved next to its adapter
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


@dataclass(frozen=True, slots=True)
class LmTrainConfig:
    base_model: str
    epochs: int = 1
    learning_rate: float = 1e-3
    max_steps: int | None = None
    batch_size: int = 8
    max_length: int = 256
    lora_rank: int = 8
    lora_alpha: int = 16
    soft_weight: float = 0.5
    seed: int = 0


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def prompt_text(example: Example, tokenizer: Any) -> str:
    """The prompt the student sees: the chat template when the tokenizer has one."""
    messages = example.messages or [{"role": "user", "content": example.text}]
    if getattr(tokenizer, "chat_template", None):
        text: str = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return text
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def tiny_tokenizer(texts: Sequence[str]) -> Any:
    """A word-level tokenizer fitted on `texts` (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    fast: Any = PreTrainedTokenizerFast
    return fast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def tiny_model(vocab_size: int, seed: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    return LlamaForCausalLM(config)


def load_base(config: LmTrainConfig, examples: Sequence[Example]) -> tuple[Any, Any]:
    """(model, tokenizer) for the configured base model."""
    if config.base_model == TINY:
        corpus = [
            prompt_text(e, None) + " " + e.answer for e in examples
        ]  # prompts and answers share one vocabulary
        tokenizer = tiny_tokenizer(corpus)
        return tiny_model(len(tokenizer), config.seed), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(config.base_model, dtype="auto")
    return model, tokenizer


def encode(example: Example, tokenizer: Any, max_length: int) -> tuple[list[int], list[int], int]:
    """Token ids, labels (-100 on the prompt) and the index of the first answer token."""
    prompt: list[int] = tokenizer(prompt_text(example, tokenizer), add_special_tokens=False)[
        "input_ids"
    ]
    answer: list[int] = tokenizer(" " + example.answer, add_special_tokens=False)["input_ids"]
    answer = [*answer, tokenizer.eos_token_id]
    keep = max_length - len(answer)
    prompt = prompt[-keep:] if keep > 0 else []
    ids = prompt + answer
    labels = [-100] * len(prompt) + answer
    return ids, labels, len(prompt)


def first_token_targets(example: Example, tokenizer: Any) -> dict[int, float] | None:
    """The teacher's soft label as a distribution over the labels' first answer tokens."""
    if not example.soft:
        return None
    out: dict[int, float] = {}
    for label, p in example.soft.items():
        ids = tokenizer(" " + label, add_special_tokens=False)["input_ids"]
        if ids:
            out[ids[0]] = out.get(ids[0], 0.0) + p
    return out or None


def _batch(
    rows: Sequence[tuple[list[int], list[int], int, dict[int, float] | None]],
    pad_id: int,
    dev: str,
) -> dict[str, torch.Tensor | list[Any]]:
    import torch

    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (tok, lab, _, _) in enumerate(rows):
        ids[i, : len(tok)] = torch.tensor(tok)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(tok)] = 1
    return {
        "input_ids": ids.to(dev),
        "labels": labels.to(dev),
        "attention_mask": mask.to(dev),
        "first": [r[2] for r in rows],
        "soft": [r[3] for r in rows],
    }


def distillation_loss(logits: torch.Tensor, first: list[int], soft: list[Any]) -> torch.Tensor:
    """Mean KL(teacher || student) over the first answer token of examples with soft labels."""
    import torch

    terms = []
    for row, (pos, target) in enumerate(zip(first, soft, strict=True)):
        if not target or pos < 1:
            continue
        logp = torch.log_softmax(logits[row, pos - 1].float(), dim=-1)
        ids = torch.tensor(list(target.keys()), device=logits.device)
        p = torch.tensor(list(target.values()), device=logits.device, dtype=torch.float32)
        p = p / p.sum()
        terms.append((p * (torch.log(p.clamp_min(1e-9)) - logp[ids])).sum())
    if not terms:
        return logits.new_zeros((), dtype=torch.float32)
    return torch.stack(terms).mean()


def train_lora(
    examples: Sequence[Example], directory: Path, config: LmTrainConfig
) -> dict[str, Any]:
    """Fine-tune a LoRA adapter and save it under `directory/adapter`."""
    import random

    import torch
    from peft import LoraConfig, get_peft_model

    if not examples:
        raise ValueError("no training examples")
    started = time.perf_counter()
    dev = device()
    torch.manual_seed(config.seed)
    base, tokenizer = load_base(config, examples)
    if config.base_model == TINY:  # nothing to download it from later: keep it (before LoRA)
        base.save_pretrained(str(directory / BASE))
        tokenizer.save_pretrained(str(directory / BASE))
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft still reads transformers' deprecated `is_gradient_checkpointing` alias
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        model: Any = get_peft_model(base, lora).to(dev)
    model.train()
    rows = [
        (*encode(e, tokenizer, config.max_length), first_token_targets(e, tokenizer))
        for e in examples
    ]
    optim = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate
    )
    rng = random.Random(config.seed)
    steps = 0
    losses: list[float] = []
    total_steps = config.epochs * math.ceil(len(rows) / config.batch_size)
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    while steps < total_steps:
        rng.shuffle(rows)
        for start in range(0, len(rows), config.batch_size):
            if steps >= total_steps:
                break
            batch = _batch(rows[start : start + config.batch_size], tokenizer.pad_token_id, dev)
            out = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
            )
            loss = out.loss
            if config.soft_weight:
                loss = loss + config.soft_weight * distillation_loss(
                    out.logits, list(batch["first"]), list(batch["soft"])
                )
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(float(loss.detach()))
            steps += 1
    adapter = directory / ADAPTER
    model.save_pretrained(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    seconds = time.perf_counter() - started
    log.info("trained LoRA adapter for %d steps on %s in %.1fs", steps, dev, seconds)
    return {
        "device": dev,
        "steps": steps,
        "examples": len(rows),
        "seconds": round(seconds, 3),
        "first_loss": round(losses[0], 4) if losses else None,
        "last_loss": round(losses[-1], 4) if losses else None,
        "trainable_parameters": trainable,
        "lora_rank": config.lora_rank,
        "adapter": ADAPTER,
    }


def load_student(directory: Path, base_model: str | None = None) -> tuple[Any, Any]:
    """(model with adapter, tokenizer) of a trained version."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = directory / ADAPTER
    base_path = directory / BASE if (directory / BASE).is_dir() else base_model
    if base_path is None:
        raise ValueError(f"{directory}: no saved base model and no base_model given")
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    base = AutoModelForCausalLM.from_pretrained(str(base_path))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        model = PeftModel.from_pretrained(base, str(adapter)).to(device())
    model.eval()
    return model, tokenizer


def predict_labels(
    directory: Path,
    texts: Sequence[str],
    labels: Sequence[str],
    base_model: str | None = None,
    max_new_tokens: int = 8,
) -> tuple[list[str], list[float]]:
    """Greedy answers and confidences (exp of the mean token log-probability)."""
    import torch

    model, tokenizer = load_student(directory, base_model)
    index = label_index(labels)
    answers: list[str] = []
    confidences: list[float] = []
    for text in texts:
        prompt = prompt_text(Example(text=text, answer=""), tokenizer)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=torch.ones_like(ids).to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out.sequences[0, ids.shape[1] :]
        logps = [
            float(torch.log_softmax(score[0].float(), dim=-1)[tok])
            for score, tok in zip(out.scores, new, strict=False)
            if tok != tokenizer.eos_token_id
        ]
        answer = tokenizer.decode(new, skip_special_tokens=True).strip()
        answers.append(match_label(answer, index) or answer)
        confidences.append(math.exp(sum(logps) / len(logps)) if logps else 0.0)
    return answers, confidences
