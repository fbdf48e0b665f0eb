"""A durable, budgeted store of kept samples: one SQLite file, one row per sample.

Each row holds the sample's tensor as a BLOB with its shape and dtype, its label, its DRIP score,
the time it was stored and an optional stable ``source`` id (unique when given). The file runs in
WAL mode with ``synchronous=FULL``: when ``add`` returns, the sample survives a crash or a power
cut, and a reader in another process sees whole samples only. Every ``add`` / ``add_batch`` is one
transaction: either all of its rows (and evictions) land, or none.

Capacity counts tensor payload bytes (``capacity_bytes``) and rows (``capacity_count``); the file
itself is somewhat larger (SQLite pages, indexes). The store never holds more than either limit.
When a sample does not fit, ``when_full="reject"`` refuses it and ``"evict"`` removes the most
redundant sample (highest DRIP score) of the most represented class, unless the newcomer is itself
that sample; then nothing is evicted for it. A sample without a score counts as the least redundant.

Every fault is a ``DripStoreError`` naming the file and the cause (not a drip store, corrupt,
newer schema, read-only, disk full, locked); a failed write leaves the file as it was. A path
that exists must be an empty file or a drip store: anything else is refused and left unchanged.
"""

from .rows import StoredSample
from .sample_store import SampleStore, WhenFull
from .schema import FORMAT, SCHEMA_VERSION

__all__ = ["FORMAT", "SCHEMA_VERSION", "SampleStore", "StoredSample", "WhenFull"]
