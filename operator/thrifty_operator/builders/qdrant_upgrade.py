"""Stepwise upgrades of a managed Qdrant towards the operator's default image.

Qdrant keeps its storage compatible across one minor version only: an upgrade over several
goes through every minor version in between, each at its last patch release (Qdrant's
upgrade guide; Qdrant Cloud steps its clusters the same way). `managed_qdrant_image` keeps a
Qdrant that has data on the image it runs; with `stores.qdrant.upgrade: Automatic` the
operator moves it one such step each time the previous step has rolled out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from thrifty_core.api import CachePolicy

from .defaults import Defaults

# The last patch release of each minor version a managed Qdrant is stepped through, from the
# qdrant/qdrant release tags. A minor version missing here stops automatic upgrades before it
# (a test checks that it covers every one up to the operator's default).
QDRANT_STEPS: Mapping[tuple[int, int], int] = {
    (1, 13): 6,
    (1, 14): 1,
    (1, 15): 5,
    (1, 16): 3,
    (1, 17): 1,
    (1, 18): 3,
}

# repository:vMAJOR.MINOR.PATCH; the repository may name a registry with a port. A digest, a
# moving tag (latest) or a build of one's own says nothing about its storage version.
_RELEASE = re.compile(r"^(?P<repo>[^@\s]+):v(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)$")

Version = tuple[int, int, int]


def qdrant_version(image: str) -> tuple[str, Version] | None:
    """(repository, version) of an image tagged as a Qdrant release, else None."""
    found = _RELEASE.match(image)
    if found is None:
        return None
    version = (int(found["major"]), int(found["minor"]), int(found["patch"]))
    return found["repo"], version


def next_qdrant_image(running: str, target: str) -> str | None:
    """The next image on the way from the `running` one to `target`: `target` itself when it
    is a patch release of the same minor version or of the next one, else the last patch of
    the next minor version, from `target`'s repository (a mirror the operator is configured
    with). None when there is no step to take: already there, newer (never downgraded),
    another major version, an image that is not a release tag, or a minor version with no
    known last patch."""
    have, want = qdrant_version(running), qdrant_version(target)
    if have is None or want is None:
        return None
    (_, current), (repo, goal) = have, want
    if current >= goal or current[0] != goal[0]:
        return None
    major, minor = current[0], current[1] + 1
    if current[1] == goal[1] or minor == goal[1]:
        return target
    patch = QDRANT_STEPS.get((major, minor))
    return None if patch is None else f"{repo}:v{major}.{minor}.{patch}"


def upgrading(policy: CachePolicy) -> bool:
    """The operator moves the policy's managed Qdrant to its default image: upgrades are
    automatic and the policy does not name an image of its own."""
    qdrant = policy.spec.stores.qdrant
    return qdrant.upgrade == "Automatic" and not qdrant.image


def qdrant_upgrade_step(
    policy: CachePolicy, defaults: Defaults, *, running: str, rolled_out: bool, recorded: str
) -> str | None:
    """The image to move the managed Qdrant to now, or None to keep the one it runs. A step
    is taken only once the StatefulSet runs `running` on every replica, ready (the previous
    step has rolled out and Qdrant has opened its storage with it), and its volume claim
    records it (`recorded`: the handler records each step there before it applies it, so the
    claim never names an older Qdrant than the one that wrote the data)."""
    if not upgrading(policy) or not running or not rolled_out or recorded != running:
        return None
    return next_qdrant_image(running, defaults.qdrant_image)


def upgrade_pending(policy: CachePolicy, defaults: Defaults, image: str) -> bool:
    """A step is still to come after `image`: the store is not ready, whatever its StatefulSet
    says (a pass may read it rolled out only after it chose the image, and take the step in the
    next pass)."""
    return upgrading(policy) and next_qdrant_image(image, defaults.qdrant_image) is not None


def upgrade_message(policy: CachePolicy, defaults: Defaults, image: str, running: str) -> str:
    """What the StoreReady condition says of the managed Qdrant's version when the operator
    applies `image` to a StatefulSet that ran `running` ('' when none existed): the upgrade
    under way, or that it is older than the default and why it stays ('' when neither). (An
    upgrade under way never leaves the store ready: `upgrade_pending`.)"""
    target = defaults.qdrant_image
    stepping = bool(running) and running != image
    if upgrading(policy) and (stepping or next_qdrant_image(image, target) is not None):
        since = f" (from {running})" if stepping else ""
        return f"qdrant: upgrading to {target} one minor version at a time, now {image}{since}"
    have, want = qdrant_version(image), qdrant_version(target)
    if have is None or image == target:
        return ""
    if want is None:
        return f"qdrant: runs {image}; the operator's default {target} is no release tag (vX.Y.Z)"
    if have[1] >= want[1]:
        return ""
    qdrant = policy.spec.stores.qdrant
    why = (
        "stores.qdrant.image names it"
        if qdrant.image
        else "upgrade: Manual, step it with stores.qdrant.image"
        if qdrant.upgrade == "Manual"
        else "no known step from it, step it with stores.qdrant.image"
    )
    return f"qdrant: runs {image}, older than the operator's default {target} ({why})"
