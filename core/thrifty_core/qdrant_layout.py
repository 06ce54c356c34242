"""How a semantic cache collection is laid out in a Qdrant server: the gateways that write and
search it and the operator's collection Job that creates it agree on this.

Every search stays inside one partition (a tenant scope with one request context, the payload
field `PARTITION_FIELD`, indexed as the tenant key), so the collection keeps no graph over all
its points (`m=0`): Qdrant links each partition too large to scan exactly into a graph of its own
(`payload_m`). With one graph over all points and the tenant as a filter, a tenant holding a
quarter of the points lost its nearest entry in about one search of five on real embeddings
(bench/RESULTS.md, "One partition per search, and search recall"; the Qdrant server numbers are
in "The same layout on a Qdrant server").
"""

from __future__ import annotations

PARTITION_FIELD = "partition"
HNSW_M = 0
PAYLOAD_M = 16


def hnsw_layout() -> dict[str, int]:
    """The collection's `hnsw_config` (REST field names)."""
    return {"m": HNSW_M, "payload_m": PAYLOAD_M}
