"""The tier rule engine: pure functions from request features to a tier."""

from __future__ import annotations

from collections.abc import Sequence

from thrifty_core.api.costcontrol import Tiering, TierRule

from .features import Features


def rule_matches(rule: TierRule, features: Features, difficulty: float | None = None) -> bool:
    """Every condition the rule sets holds (a rule with no condition matches)."""
    if rule.max_prompt_tokens is not None and features.prompt_tokens > rule.max_prompt_tokens:
        return False
    if rule.min_prompt_tokens is not None and features.prompt_tokens < rule.min_prompt_tokens:
        return False
    if rule.has_tools is not None and features.has_tools != rule.has_tools:
        return False
    if rule.has_images is not None and features.has_images != rule.has_images:
        return False
    if (
        rule.has_response_format is not None
        and features.has_response_format != rule.has_response_format
    ):
        return False
    for key, value in rule.metadata.items():
        if features.tags.get(key) != value:
            return False
    text = features.user_text
    if rule.keywords_any and not any(k.lower() in text for k in rule.keywords_any):
        return False
    if any(k.lower() in text for k in rule.keywords_none):
        return False
    if rule.max_difficulty is not None:
        # Without a score (no classifier, or it failed) the rule cannot vouch for easiness.
        if difficulty is None or difficulty > rule.max_difficulty:
            return False
    return True


def tier_matches(rules: Sequence[TierRule], features: Features, difficulty: float | None) -> bool:
    """A tier matches when any of its rules does; a tier without rules matches everything."""
    return not rules or any(rule_matches(r, features, difficulty) for r in rules)


def rule_can_take(rule: TierRule, features: Features) -> bool:
    """The rule's capability conditions hold: a prompt within `maxPromptTokens`, and no tools,
    images or JSON output where it says `false`. (What it says about easiness, keywords, tags
    or difficulty is not asked: a budget downgrade sends a request as cheap as it can go.)"""
    if rule.max_prompt_tokens is not None and features.prompt_tokens > rule.max_prompt_tokens:
        return False
    if rule.has_tools is False and features.has_tools:
        return False
    if rule.has_images is False and features.has_images:
        return False
    return not (rule.has_response_format is False and features.has_response_format)


def cheapest_able(tiering: Tiering, features: Features) -> int:
    """Index of the cheapest tier that can take the request (a tier without rules takes
    anything; else any of its rules' capability conditions must hold), or
    `len(tiering.tiers)` for the route's own targets. Never dearer than `choose_tier`."""
    for index, tier in enumerate(tiering.tiers):
        if not tier.rules or any(rule_can_take(r, features) for r in tier.rules):
            return index
    return len(tiering.tiers)


def needs_difficulty(tiering: Tiering) -> bool:
    return any(r.max_difficulty is not None for t in tiering.tiers for r in t.rules)


def choose_tier(tiering: Tiering, features: Features, difficulty: float | None = None) -> int:
    """Index of the first (cheapest) matching tier, or `len(tiering.tiers)` for the route's
    own targets (the strongest tier)."""
    for index, tier in enumerate(tiering.tiers):
        if tier_matches(tier.rules, features, difficulty):
            return index
    return len(tiering.tiers)
