"""The capacity policy: whether a sample fits, and which sample ``when_full="evict"`` removes for it.

A store never holds more than ``capacity_count`` rows or ``capacity_bytes`` of tensor payload.
When a sample does not fit, ``"reject"`` refuses it; ``"evict"`` removes the most redundant sample
(highest DRIP score) of the most represented class, counting the newcomer, until it fits, unless
the newcomer is itself that sample: then the evictions made for it are undone and it is refused.
A sample without a score counts as the least redundant. These functions run inside the store's
write transaction (``SampleStore.add_batch``), which makes each sample's evictions and its insert
one all-or-nothing step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .rows import _Encoded

if TYPE_CHECKING:
    from .sample_store import SampleStore


def make_room(store: SampleStore, row: _Encoded) -> list[int] | None:
    """Room for ``row`` in ``store``: the ids evicted for it (none when it fits as it is), or None
    when it is not held (larger than ``capacity_bytes``, refused, or itself the one to evict)."""
    nbytes = len(row.data)
    if store.capacity_bytes is not None and nbytes > store.capacity_bytes:
        return None
    if _fits(store, nbytes):
        return []
    if store.when_full == "reject":
        return None
    # Evictions for a newcomer that is refused after all must not happen: undo them.
    store._conn.execute("SAVEPOINT make_room")
    victims: list[int] = []
    while not _fits(store, nbytes):
        victim = _evict_for(store, row)
        if victim is None:
            store._conn.execute("ROLLBACK TO make_room")
            store._conn.execute("RELEASE make_room")
            return None
        victims.append(victim)
    store._conn.execute("RELEASE make_room")
    return victims


def _fits(store: SampleStore, nbytes: int) -> bool:
    if store.capacity_count is None and store.capacity_bytes is None:
        return True
    count, used = store._totals()
    if store.capacity_count is not None and count + 1 > store.capacity_count:
        return False
    return store.capacity_bytes is None or used + nbytes <= store.capacity_bytes


def _evict_for(store: SampleStore, row: _Encoded) -> int | None:
    """Remove the highest-score sample of the largest class; its id, or None if the newcomer is it."""
    counts = store.class_counts()
    counts[row.label] = counts.get(row.label, 0) + 1
    largest = max(counts.values())
    # Ties between classes go to the lowest label, so eviction is deterministic.
    label = min(c for c, n in counts.items() if n == largest)
    victim = store._conn.execute(
        "SELECT id, score FROM samples WHERE label = ? ORDER BY score IS NULL, score DESC, id LIMIT 1",
        (label,),
    ).fetchone()
    newcomer_scores_higher = victim is not None and (
        victim[1] is None or (row.score is not None and row.score >= victim[1])
    )
    if victim is None or (label == row.label and newcomer_scores_higher):
        return None
    store._conn.execute("DELETE FROM samples WHERE id = ?", (victim[0],))
    return int(victim[0])
