"""The images' Dockerfiles build on pinned bases (they cannot be built here: no Docker)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "images").glob("*.Dockerfile"))
PINNED = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+[\w.-]*$")  # name:MAJOR.MINOR.PATCH[-variant]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_base_image_is_pinned_to_a_patch_release(path: Path) -> None:
    text = path.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    assert bases
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), base)
        assert PINNED.match(image), f"{path.name}: FROM {base} -> {image} is not pinned"


def test_there_are_three_images() -> None:
    assert [p.name for p in DOCKERFILES] == [
        "distill.Dockerfile",
        "gateway.Dockerfile",
        "operator.Dockerfile",
    ]
