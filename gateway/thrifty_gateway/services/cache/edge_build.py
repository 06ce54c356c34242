"""Build the HNSW index of an embedded semantic shard, in a process of its own.

`python -m thrifty_gateway.services.cache.edge_build <shard dir> <dim> <search threads>`:
`EdgeIndex` runs it on a copy of its shard, because qdrant-edge holds the GIL while it builds
(see `EdgeIndex`).
"""

from __future__ import annotations

import sys

from .semantic import edge_config


def main(argv: list[str]) -> int:
    import qdrant_edge as qe

    path, dim, threads = argv[0], int(argv[1]), int(argv[2])
    shard = qe.EdgeShard.load(path, edge_config(qe, dim, threads))
    shard.optimize()
    shard.flush()
    shard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
