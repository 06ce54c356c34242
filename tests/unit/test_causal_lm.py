"""The causal-lm student trains a few LoRA steps on CPU with a tiny random model, saves an
adapter that peft can load back, and answers with a confidence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thrifty_core.student.serving import vllm_args
from thrifty_distill.dataset import Example
from thrifty_distill.lm import (
    TINY,
    LmTrainConfig,
    distillation_loss,
    load_student,
    predict_labels,
    train_lora,
)

LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate"]
TEXTS = {
    "card_arrival": ["where is my new card", "my card has not arrived yet", "card still not here"],
    "lost_or_stolen_card": ["someone stole my card", "i lost my card", "my card is missing"],
    "exchange_rate": ["what rate do you use", "exchange rate for euros", "how much is a dollar"],
}


def examples() -> list[Example]:
    out = []
    for label, texts in TEXTS.items():
        for text in texts:
            out.append(
                Example(
                    text=text,
                    answer=label,
                    label=label,
                    soft={label: 0.8, LABELS[(LABELS.index(label) + 1) % 3]: 0.2},
                    messages=[
                        {"role": "system", "content": "Answer one of: " + ", ".join(LABELS)},
                        {"role": "user", "content": text},
                    ],
                )
            )
    return out


def test_lora_trains_on_cpu_and_saves_an_adapter(tmp_path: Path) -> None:
    config = LmTrainConfig(base_model=TINY, epochs=3, max_steps=6, batch_size=4, learning_rate=5e-3)
    info = train_lora(examples(), tmp_path, config)
    assert info["device"] == "cpu"
    assert info["steps"] == 6
    assert info["trainable_parameters"] > 0
    adapter = tmp_path / "adapter"
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["peft_type"] == "LORA"
    assert set(cfg["target_modules"]) >= {"q_proj", "v_proj"}

    # the adapter loads back onto the saved base with its trained (non-zero) LoRA B matrices
    model, _ = load_student(tmp_path)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.abs().sum()) > 0 for p in lora_b)

    answers, confidences = predict_labels(tmp_path, ["where is my new card"], LABELS)
    assert len(answers) == 1
    assert 0.0 < confidences[0] <= 1.0


def test_distillation_loss_is_zero_for_a_matching_student() -> None:
    import torch

    logits = torch.full((1, 3, 5), -30.0)
    logits[0, 1, 2] = 30.0  # the student puts everything on token 2 at the first answer slot
    same = distillation_loss(logits, [2], [{2: 1.0}])
    other = distillation_loss(logits, [2], [{3: 1.0}])
    assert float(same) == pytest.approx(0.0, abs=1e-4)
    assert float(other) > 10


def test_vllm_args_serve_the_adapter() -> None:
    args = vllm_args("Qwen/Qwen2.5-0.5B-Instruct", "/artifacts/v0003/adapter", "intent-v0003")
    assert args[:2] == ["serve", "Qwen/Qwen2.5-0.5B-Instruct"]
    assert "--enable-lora" in args
    assert args[args.index("--lora-modules") + 1] == "intent-v0003=/artifacts/v0003/adapter"
    assert args[args.index("--port") + 1] == "8000"
    with pytest.raises(ValueError):
        vllm_args("", "/a", "b")
