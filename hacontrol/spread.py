"""Where in a period a cluster's periodic work falls: a point drawn from the cluster's name.

The clusters of one process are spread over each period instead of all doing the same work in
the same moment (measured at 1,000 nodes in 300 clusters: the 300 ``cluster_summary`` lines
written in the same second made probes late; bench/README.md). The point is the same on every
start, so a cluster keeps its place across restarts.
"""

from __future__ import annotations

import zlib


def fraction_of(name: str) -> float:
    """A point in [0, 1) drawn from ``name`` (CRC-32): spread evenly over many names."""
    return zlib.crc32(name.encode()) / 2**32
