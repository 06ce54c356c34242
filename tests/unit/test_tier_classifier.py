"""The difficulty classifier: a classifier student trained by the distill pipeline on easy/hard
labels, loaded by the tiering stage, drives `maxDifficulty` rules."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from thrifty_core.api.costcontrol import DifficultyClassifier, Tiering
from thrifty_core.embedding.local import LocalEmbedder
from thrifty_core.student.artifact import ArtifactManifest, write_manifest
from thrifty_core.student.classifier import save_head
from thrifty_distill.classifier import train_classifier
from thrifty_distill.dataset import Example
from thrifty_gateway.services.tiering.classifier import DifficultyScorer, load_classifier
from thrifty_gateway.services.tiering.features import extract_features
from thrifty_gateway.services.tiering.rules import choose_tier

EASY = [
    "what are your opening hours",
    "thanks a lot",
    "hello there",
    "where is my parcel",
    "how do I reset my password",
    "what is the capital of France",
    "can I change my delivery address",
    "is the shop open on sunday",
    "how much does shipping cost",
    "good morning",
]
MEDIUM = [
    "summarise this article about solar panels in three bullet points",
    "translate this paragraph about our refund policy into German",
    "write a polite email declining the meeting invitation",
    "list the pros and cons of renting versus buying a flat",
    "rewrite this product description to sound friendlier",
    "draft a short cover letter for a junior developer job",
    "explain how compound interest works with an example",
    "give me a weekly meal plan for a vegetarian",
    "suggest five names for a coffee shop",
    "outline a presentation about remote work",
]
HARD = [
    "prove that there are infinitely many primes and discuss the proof's history",
    "derive the closed form of the integral of x squared times e to the x",
    "analyse the legal implications of this merger clause under EU competition law",
    "design a distributed consensus protocol tolerant to byzantine faults",
    "explain the proof of Fermat's last theorem at graduate level",
    "compare the asymptotic complexity of these three graph algorithms rigorously",
    "write a formal verification of this concurrent lock-free queue",
    "estimate the macroeconomic effects of a carbon tax on developing economies",
    "derive the Black-Scholes equation from first principles",
    "refactor this compiler's register allocator to use graph colouring",
]


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder(threads=1)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory, embedder: LocalEmbedder) -> Path:
    """A promoted difficulty classifier, version v0001, under the returned root."""
    examples = [Example(text=t, answer="easy", label="easy") for t in EASY]
    examples += [Example(text=t, answer="medium", label="medium") for t in MEDIUM]
    examples += [Example(text=t, answer="hard", label="hard") for t in HARD]
    # Three levels; difficulty is P(hard). (A two-label head trips a binary-case bug in
    # thrifty_distill.classifier.fit_head: reported to the lead.)
    result = train_classifier(examples, ["easy", "medium", "hard"], embedder)
    root = tmp_path_factory.mktemp("difficulty")
    save_head(root / "v0001", result.head)
    manifest = ArtifactManifest(
        version="v0001",
        kind="classifier",
        student="difficulty",
        labels=["easy", "medium", "hard"],
        dim=embedder.dim,
        evaluated=True,
        gate_passed=True,
        promoted=True,
    )
    write_manifest(root / "v0001", manifest)
    return root


@pytest.fixture(scope="module")
def scorer(artifact: Path, embedder: LocalEmbedder) -> DifficultyScorer:
    loaded = load_classifier(DifficultyClassifier(artifact_path=str(artifact)), embedder)
    assert loaded is not None
    return loaded


def test_difficulty_separates_easy_from_hard(scorer: DifficultyScorer) -> None:
    easy = scorer.difficulty("when do you open tomorrow")
    hard = scorer.difficulty("prove the convergence of this stochastic gradient method")
    assert 0.0 <= easy < 0.5 < hard <= 1.0


def test_max_difficulty_rule_routes_by_the_score(scorer: DifficultyScorer) -> None:
    tiering = Tiering.model_validate(
        {
            "tiers": [
                {
                    "name": "cheap",
                    "targets": [{"provider": "p", "model": "mini"}],
                    "rules": [{"maxDifficulty": 0.5}],
                }
            ],
            "classifier": {"artifactPath": "unused"},
        }
    )
    for text, tier in (
        ("is the shop open on saturday", 0),
        ("derive the closed form of this recurrence relation rigorously", 1),
    ):
        features = extract_features({"messages": [{"role": "user", "content": text}]}, {})
        assert choose_tier(tiering, features, scorer.difficulty(features.user_text)) == tier


def test_no_promoted_version_means_no_scorer(tmp_path: Path) -> None:
    assert load_classifier(DifficultyClassifier(artifact_path=str(tmp_path)), _NoEmbedder()) is None


class _NoEmbedder:
    dim = 384

    def embed(self, texts: Sequence[str]) -> Any:
        del texts
        raise AssertionError("not called without a version")


async def test_a_classifier_promoted_after_start_is_picked_up(
    artifact: Path, embedder: LocalEmbedder, tmp_path: Path
) -> None:
    """A gateway started before the first promotion: its `maxDifficulty` rules start working
    once a version is promoted, without a restart (and nothing is reloaded while the version
    stays the same)."""
    import shutil

    from prometheus_client import CollectorRegistry

    from thrifty_gateway.services.pipeline import Target
    from thrifty_gateway.services.tiering.reload import reload_scorers
    from thrifty_gateway.services.tiering.stage import TierMetrics, TierStage, build_plan

    root = tmp_path / "difficulty"
    root.mkdir()
    tiering = Tiering.model_validate(
        {
            "tiers": [
                {
                    "name": "cheap",
                    "targets": [{"provider": "p", "model": "mini"}],
                    "rules": [{"maxDifficulty": 0.5}],
                }
            ],
            "classifier": {"artifactPath": str(root)},
        }
    )
    plan = build_plan(tiering, (Target("p", "big"),))
    stage = TierStage({"smart": plan}, None, TierMetrics(CollectorRegistry()))
    assert await reload_scorers(stage, lambda: embedder) == []
    assert stage.plans["smart"].scorer is None

    shutil.copytree(artifact / "v0001", root / "v0001")
    assert await reload_scorers(stage, lambda: embedder) == ["smart"]
    scorer = stage.plans["smart"].scorer
    assert scorer is not None and getattr(scorer, "version", None) == "v0001"
    assert scorer.difficulty("is the shop open on saturday") < 0.5
    assert await reload_scorers(stage, lambda: embedder) == []
