"""How a semantic cache collection is laid out in a Qdrant server: the gateways that write and
search it and the operator's collection Job that creates it agree on this.

Every search stays inside one partition (a tenant scope with one request context, the payload
field `PARTITION_FIELD`, indexed as the tenant key), so the collection keeps no graph over all
its points (`m=0`): Qdrant links each partition too large to scan exactly into a graph of its own
(`payload_m`). With one graph over all points and the tenant as a filter, a tenant holding a
quarter of the points lost its nearest entry in about one search of five on real embeddings
(bench/RESULTS.md, "One partition per search, and search recall"; the Qdrant server numbers are
in "The same layout on a Qdrant server").

Only servers from `LAYOUT_SINCE` on can keep graphs off the other payload indexes
(`enable_hnsw: false`, ignored by older ones). With `m=0`, an older server would link a graph
for every large value of every indexed field (a keyspace or a model holds all points: about
ten graphs over the whole collection instead of one), so on those the collection keeps
Qdrant's default graph and searches still filter on the partition alone.
"""

from __future__ import annotations

PARTITION_FIELD = "partition"
HNSW_M = 0
PAYLOAD_M = 16
LAYOUT_SINCE = (1, 17)


def layout_supported(version: str) -> bool:
    """Whether a server of `version` (as its `GET /` reports it) gets the per-partition layout.
    A version that does not read as `[v]MAJOR.MINOR...` (none, behind a proxy) does not: the
    default graph costs recall on large tenants, the layout on an old server costs a graph per
    large value of every index."""
    try:
        major, minor = (int(part) for part in version.strip().removeprefix("v").split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= LAYOUT_SINCE


def hnsw_layout() -> dict[str, int]:
    """The collection's `hnsw_config` (REST field names)."""
    return {"m": HNSW_M, "payload_m": PAYLOAD_M}
