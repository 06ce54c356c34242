"""The managed Qdrant's upgrade path (pure; the handler's steps are in
test_operator_cachepolicy_stores, the rollouts on the real control plane in the e2e tests)."""

from __future__ import annotations

import pytest

from tests.unit.test_operator_builders import example
from thrifty_core.api import CachePolicy
from thrifty_operator.builders.cache import LEGACY_QDRANT_IMAGE
from thrifty_operator.builders.defaults import Defaults
from thrifty_operator.builders.qdrant_upgrade import (
    QDRANT_STEPS,
    next_qdrant_image,
    qdrant_version,
    upgrade_message,
)

REPO = "docker.io/qdrant/qdrant"


def path(start: str, target: str) -> list[str]:
    steps, image = [], start
    while (step := next_qdrant_image(image, target)) is not None:
        steps.append(step)
        image = step
        assert len(steps) < 50
    return steps


def test_an_earlier_operators_qdrant_goes_through_the_last_patch_of_every_minor_version() -> None:
    """Qdrant's upgrade guide: one minor version at a time, each at its last patch release."""
    assert path(LEGACY_QDRANT_IMAGE, Defaults().qdrant_image) == [
        f"{REPO}:v1.13.6",
        f"{REPO}:v1.14.1",
        f"{REPO}:v1.15.5",
        f"{REPO}:v1.16.3",
        f"{REPO}:v1.17.1",
        Defaults().qdrant_image,
    ]


def test_the_steps_cover_every_minor_version_up_to_the_default() -> None:
    found = qdrant_version(Defaults().qdrant_image)
    assert found is not None
    _, (major, minor, patch) = found
    assert all((major, m) in QDRANT_STEPS for m in range(13, minor + 1))
    assert QDRANT_STEPS[(major, minor)] <= patch


@pytest.mark.parametrize(
    ("running", "target", "step"),
    [
        # a patch release, or the next minor version: the target itself
        (f"{REPO}:v1.18.1", f"{REPO}:v1.18.3", f"{REPO}:v1.18.3"),
        (f"{REPO}:v1.17.0", f"{REPO}:v1.18.3", f"{REPO}:v1.18.3"),
        # intermediate steps come from the target's repository (a mirror)
        (f"{REPO}:v1.15.0", "mirror.local:5000/qdrant:v1.18.3", "mirror.local:5000/qdrant:v1.16.3"),
        # nothing to do, never a downgrade, no other major version
        (f"{REPO}:v1.18.3", f"{REPO}:v1.18.3", None),
        (f"{REPO}:v1.19.0", f"{REPO}:v1.18.3", None),
        (f"{REPO}:v1.18.3", f"{REPO}:v2.0.0", None),
        # no release tag, no storage version to go by
        (f"{REPO}:latest", f"{REPO}:v1.18.3", None),
        (f"{REPO}:v1.16.3@sha256:{'0' * 64}", f"{REPO}:v1.18.3", None),
        (f"{REPO}:v1.16.3", f"{REPO}@sha256:{'0' * 64}", None),
        # a minor version with no known last patch stops the path before it
        (f"{REPO}:v1.18.3", f"{REPO}:v1.20.1", None),
        (f"{REPO}:v1.11.0", f"{REPO}:v1.18.3", None),
    ],
)
def test_next_step(running: str, target: str, step: str | None) -> None:
    assert next_qdrant_image(running, target) == step


def test_a_registry_port_is_not_a_tag() -> None:
    assert qdrant_version("mirror.local:5000/qdrant:v1.16.3") == (
        "mirror.local:5000/qdrant",
        (1, 16, 3),
    )
    assert qdrant_version("mirror.local:5000/qdrant") is None


def test_the_condition_says_where_the_upgrade_is_and_why_an_older_qdrant_stays() -> None:
    policy = CachePolicy.model_validate(example("cachepolicy"))
    default = Defaults().qdrant_image
    step = upgrade_message(policy, Defaults(), f"{REPO}:v1.17.1", f"{REPO}:v1.16.3")
    assert step == (
        f"qdrant: upgrading to {default} one minor version at a time, now {REPO}:v1.17.1"
        f" (from {REPO}:v1.16.3)"
    )
    last = upgrade_message(policy, Defaults(), default, f"{REPO}:v1.17.1")
    assert f"now {default} (from {REPO}:v1.17.1)" in last
    assert upgrade_message(policy, Defaults(), default, default) == ""
    assert upgrade_message(policy, Defaults(), f"{REPO}:latest", "") == ""
    new_major = Defaults(qdrant_image=f"{REPO}:v2.0.0")
    assert "no known step from it" in upgrade_message(policy, new_major, default, default)
    digest = Defaults(qdrant_image=f"{REPO}@sha256:{'0' * 64}")
    assert "is no release tag" in upgrade_message(policy, digest, default, default)
