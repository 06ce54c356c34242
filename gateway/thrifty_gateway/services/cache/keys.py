"""Cache keys: a canonical form of every answer-changing field, hashed with SHA-256.

Exact key = SHA-256(keyspace, scope, canonical request). The canonical request is the body
with the model replaced by the model the route resolved to and with the fields that cannot
change the answer removed (`IGNORED_FIELDS`); every other field, unknown ones included, is part
of the key. Numbers are normalised (1 == 1.0), dict keys sorted, a content list holding one text
part becomes that text, a top-level null is an absent field, and `max_tokens` alone is keyed
as `max_completion_tokens`.

The semantic layer splits the same request in two: the final user turn (embedded) and the
*context* (everything else: model, system prompt, earlier turns, tools, sampling fields),
whose hash is an exact payload filter. The scope (tenant or shared) is a separate hard filter.

Keys are never sent to clients.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

# Fields that do not change the answer (transport, accounting, observability, the provider's
# own prompt cache).
IGNORED_FIELDS = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "model",
    }
)
# A field's deprecated name, keyed as the current one when only it is sent: the same request.
ALIASES = {"max_tokens": "max_completion_tokens"}


def normalise(value: Any) -> Any:
    """Canonical JSON value: sorted dict keys (by orjson), integral floats as ints."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        # 1.0 and 1 are the same JSON number; only within 64 bits, which orjson can write.
        return int(value) if value.is_integer() and abs(value) < 2**63 else value
    if isinstance(value, Mapping):
        return {str(k): normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    return str(value)


def _normalise_message(message: Any) -> Any:
    if not isinstance(message, Mapping):
        return normalise(message)
    out = {str(k): normalise(v) for k, v in message.items()}
    content = out.get("content")
    if (
        isinstance(content, list)
        and len(content) == 1
        and isinstance(content[0], dict)
        and content[0].get("type") == "text"
        and isinstance(content[0].get("text"), str)
    ):
        out["content"] = content[0]["text"]
    return out


def canonical_request(body: Mapping[str, Any], resolved_model: str) -> dict[str, Any]:
    """The answer-changing part of a chat request, normalised: a field sent as null is absent
    (the API's own reading), and a deprecated name is its current one."""
    out: dict[str, Any] = {
        (ALIASES[k] if k in ALIASES and ALIASES[k] not in body else k): normalise(v)
        for k, v in body.items()
        if k not in IGNORED_FIELDS and v is not None
    }
    if "messages" in body and isinstance(body["messages"], list):
        out["messages"] = [_normalise_message(m) for m in body["messages"]]
    out["model"] = resolved_model
    return out


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def scope_of(tenant: str, scope: str, gateway: str = "") -> str:
    """The isolation scope: the tenant's own, or `shared` when the policy allows sharing;
    within the gateway (`namespace/name`, as the operator renders `ledger.gateway`) when it
    names one, so that gateways sharing a policy never share entries: their tenants, and
    their providers, of the same name may be others."""
    base = "shared" if scope == "shared" else f"tenant:{tenant}"
    return f"gateway:{gateway}:{base}" if gateway else base


def policy_ident(name: str, owner: str) -> str:
    """Whose entries: `namespace/name` when the operator renders the namespace (`owner`), the
    policy's name otherwise (the `policy` field of its Qdrant points)."""
    return f"{owner}/{name}" if owner else name


def policy_keyspace(name: str, owner: str, version: str) -> str:
    """A policy's keyspace: its ident and the version its generation bumps."""
    return f"{policy_ident(name, owner)}/{version}"


def route_keyspace(keyspace: str, route: str) -> str:
    """The keyspace of one route's entries: routes on the same model do not share them, so a
    purge by route leaves that route nothing of what it served before."""
    return f"{keyspace}/route:{route}"


def exact_key(canonical: Mapping[str, Any], keyspace: str, scope: str) -> str:
    """Hex SHA-256 over keyspace + scope + canonical request."""
    blob = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    return _digest(b"thrifty-exact-v1", keyspace.encode(), scope.encode(), blob)


def text_of(content: Any) -> str | None:
    """The text of a message content (string, or a list of text parts); None otherwise."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for part in content:
            if not (isinstance(part, Mapping) and part.get("type") == "text"):
                return None  # images, audio, files: no semantic reuse
            text = part.get("text")
            if not isinstance(text, str):
                return None
            texts.append(text)
        return "\n".join(texts)
    return None


@dataclass(frozen=True, slots=True)
class SemanticKey:
    """The final user turn (to embed) and the hash of everything else (exact filter)."""

    query: str
    context: str


def semantic_key(canonical: Mapping[str, Any], keyspace: str) -> SemanticKey | None:
    """Split a canonical request for the semantic layer; None when it has no final user turn
    made of text (tool results, images, assistant prefill ...)."""
    messages = canonical.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, Mapping) or last.get("role") != "user":
        return None
    extra = {k: v for k, v in last.items() if k not in ("role", "content")}
    if extra:  # a user turn with a name or other fields: keep it exact-only
        return None
    query = text_of(last.get("content"))
    if query is None or not query.strip():
        return None
    context = dict(canonical)
    context["messages"] = messages[:-1]
    blob = orjson.dumps(context, option=orjson.OPT_SORT_KEYS)
    return SemanticKey(query=query, context=_digest(b"thrifty-ctx-v1", keyspace.encode(), blob))
