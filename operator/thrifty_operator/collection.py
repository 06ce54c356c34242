"""The semantic collection's lifecycle, run by the collection Jobs (`thrifty operator
ensure-collection|delete-collection`): Qdrant's REST API through aiohttp (a kopf dependency).
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from thrifty_core.qdrant_layout import hnsw_layout, layout_supported

logger = logging.getLogger(__name__)


def collection_body(size: int, *, laid_out: bool) -> dict[str, Any]:
    """Cosine vectors of the embedding size and, where the server supports it (`laid_out`), a
    graph per partition and none over all entries (`thrifty_core.qdrant_layout`); payload kept
    on disk for large collections."""
    body: dict[str, Any] = {"vectors": {"size": size, "distance": "Cosine"}}
    if laid_out:
        body["hnsw_config"] = hnsw_layout()
    return {**body, "on_disk_payload": True}


def tenant_index_body(field: str) -> dict[str, Any]:
    """A keyword payload index marked as the tenant key (Qdrant co-locates a tenant's points)."""
    return {"field_name": field, "field_schema": {"type": "keyword", "is_tenant": True}}


class CollectionMismatch(Exception):
    """The collection exists with another vector size and is not a Thrifty cache: refuse to
    touch it."""


# Payload indexes every gateway creates on its semantic collection.
CACHE_FIELDS = frozenset({"scope", "keyspace"})


def is_cache_collection(info: dict[str, Any]) -> bool:
    """The collection holds Thrifty cache entries (its payload indexes say so)."""
    schema = info["result"].get("payload_schema") or {}
    return CACHE_FIELDS <= set(schema)


async def ensure_collection(
    url: str,
    name: str,
    size: int,
    tenant_field: str,
    api_key: str | None = None,
    *,
    recreate: bool = False,
    policy: str | None = None,
) -> bool:
    """Create the collection and its tenant index when missing; True when it was created.
    A collection made before the per-partition layout is switched by the gateways, which own
    the other payload indexes (they re-make them without graphs first).
    With `recreate`, a Thrifty cache collection of another vector size is dropped and made
    again (only for a policy's own collection: a named one may hold other policies' entries),
    unless it holds entries of a policy other than `policy` (two namespaces' default names
    can coincide)."""
    headers = {"api-key": api_key} if api_key else {}
    base = url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
        async with http.get(f"{base}/") as resp:
            resp.raise_for_status()
            version = str((await resp.json()).get("version", ""))
        laid_out = layout_supported(version)
        if not laid_out:
            logger.warning(
                "qdrant %s cannot keep graphs off payload indexes: collection %s keeps one graph "
                "over all entries (upgrade Qdrant to get a graph per partition)",
                version,
                name,
            )
        async with http.get(f"{base}/collections/{name}") as resp:
            if resp.status == 200:
                info = await resp.json()
                vectors = info["result"]["config"]["params"]["vectors"]
                found = int(vectors.get("size", size))
                created = found != size
                if created and not (recreate and is_cache_collection(info)):
                    why = (
                        "is not a Thrifty cache collection"
                        if recreate
                        else "may be shared (stores.qdrant.collection names it)"
                    )
                    raise CollectionMismatch(
                        f"collection {name} has vector size {found}, want {size}, and {why}: "
                        "left as it is"
                    )
                if created and policy is not None:
                    filter_ = policy_filter(policy, others=True)
                    others = await _count(http, f"{base}/collections/{name}", filter_)
                    if others:
                        raise CollectionMismatch(
                            f"collection {name} has vector size {found}, want {size}, and holds "
                            f"{others} entries of other policies: left as it is"
                        )
                if created:
                    # The embedding model changed: every entry was made by the old one (and the
                    # keyspace moved on with it), so the cache starts afresh at the new size.
                    logger.warning(
                        "collection %s has vector size %d, want %d: recreating it",
                        name,
                        found,
                        size,
                    )
                    async with http.delete(f"{base}/collections/{name}") as gone:
                        if gone.status != 404:
                            gone.raise_for_status()
            elif resp.status == 404:
                created = True
            else:
                resp.raise_for_status()
        if created:
            async with http.put(
                f"{base}/collections/{name}", json=collection_body(size, laid_out=laid_out)
            ) as resp:
                resp.raise_for_status()
        async with http.put(
            f"{base}/collections/{name}/index?wait=true", json=tenant_index_body(tenant_field)
        ) as resp:
            resp.raise_for_status()
    logger.info("collection %s ready (size %d, created=%s)", name, size, created)
    return created


def policy_filter(policy: str, *, others: bool = False) -> dict[str, Any]:
    """Points of one policy (its `policy` payload field, `namespace/name`), or of every other."""
    condition = {"key": "policy", "match": {"value": policy}}
    return {"must_not": [condition]} if others else {"must": [condition]}


async def _count(
    http: aiohttp.ClientSession, collection_url: str, filter_: dict[str, Any] | None = None
) -> int | None:
    """The exact number of points (matching `filter_`); None when the collection is missing."""
    body: dict[str, Any] = {"exact": True, **({"filter": filter_} if filter_ else {})}
    async with http.post(f"{collection_url}/points/count", json=body) as resp:
        if resp.status == 404:
            return None
        resp.raise_for_status()
        return int((await resp.json())["result"]["count"])


async def delete_collection(
    url: str, name: str, api_key: str | None = None, *, policy: str | None = None
) -> bool:
    """Drop a policy's semantic data; True when the collection itself was dropped (missing is
    fine). Without `policy`, the collection is dropped. With it, the collection is dropped only
    when it holds no other policy's entries (a collection can be shared: several policies may
    name it, and default names of two namespaces can coincide); otherwise only this policy's
    points are deleted. An entry another policy writes between the count and the drop is lost
    with the collection: a cache miss, not wrong data."""
    headers = {"api-key": api_key} if api_key else {}
    timeout = aiohttp.ClientTimeout(total=60)
    base = f"{url.rstrip('/')}/collections/{name}"
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
        if policy is not None:
            others = await _count(http, base, policy_filter(policy, others=True))
            if others is None:
                logger.info("collection %s is already gone", name)
                return False
            if others:
                body = {"filter": policy_filter(policy)}
                async with http.post(f"{base}/points/delete?wait=true", json=body) as resp:
                    resp.raise_for_status()
                # The others may have gone meanwhile (policies deleted together, as with their
                # namespace): the last to look drops what is empty.
                left = await _count(http, base)
                if left:
                    logger.info(
                        "collection %s kept (%d entries of other policies); %s's deleted",
                        name,
                        left,
                        policy,
                    )
                    return False
        async with http.delete(base) as resp:
            if resp.status != 404:
                resp.raise_for_status()
    logger.info("collection %s deleted", name)
    return True
