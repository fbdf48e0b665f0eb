"""``SampleStore``: a store's writes (each ``add_batch`` one transaction) and reads, over one connection.

How the file is laid out and opened is ``schema.py``'s, how a sample becomes a row and back is
``rows.py``'s, and what a full store keeps is ``capacity.py``'s; this class runs them in
transactions, inserts rows (in a few statements when no capacity is set) and reads them back.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import TensorDataset

from ..errors import DripInputError, DripStoreError
from .capacity import make_room
from .rows import StoredSample, _as_list, _checkpoints, _decode, _encode, _encode_batch, _Encoded
from .schema import _CHECKPOINT, _cause, connect

WhenFull = Literal["reject", "evict"]

# Well below SQLite's smallest limit on bound variables in one statement (999 before 3.32).
_SQL_VARIABLES = 500
# The last id AUTOINCREMENT handed out: its counter, or the largest id if the counter was lost.
_LAST_ID = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'samples'), 0), "
    "coalesce((SELECT max(id) FROM samples), 0))"
)


class SampleStore:
    """Kept samples in an SQLite file; see ``drip.store`` for the guarantees.

    ``durable=False`` relaxes fsync to SQLite's ``synchronous=NORMAL`` (safe against a process
    crash, not against a power cut), for benchmarks or hosts with a battery-backed disk.
    ``read_only=True`` opens an existing store for reading only (e.g. a retraining process beside
    the writer): every write raises ``DripStoreError``. A reader never sees a half-written sample
    and, in WAL mode, does not block the writer.

    Example::

        with SampleStore("kept.sqlite", capacity_count=5000) as store:
            store.add(x, label=3, score=0.12)
            train_set = store.as_dataset()
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        capacity_bytes: int | None = None,
        capacity_count: int | None = None,
        when_full: WhenFull = "reject",
        *,
        durable: bool = True,
        read_only: bool = False,
    ) -> None:
        for name, value in (("capacity_bytes", capacity_bytes), ("capacity_count", capacity_count)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise DripInputError(f"{name}: expected a non-negative integer or None, got {value!r}")
        if when_full not in ("reject", "evict"):
            raise DripInputError(f"when_full: expected 'reject' or 'evict', got {when_full!r}")
        self.path = Path(path)
        self.capacity_bytes = capacity_bytes
        self.capacity_count = capacity_count
        self.when_full = when_full
        self.read_only = read_only
        self._conn = self._open(durable)
        try:
            count, used = self._totals()
        except DripStoreError:
            self._conn.close()
            raise
        if (capacity_count is not None and count > capacity_count) or (
            capacity_bytes is not None and used > capacity_bytes
        ):
            self._conn.close()
            raise DripStoreError(
                f"{self.path}: holds {count} samples / {used} bytes, above the capacity asked for "
                f"({capacity_count} samples / {capacity_bytes} bytes); nothing was removed"
            )

    def _open(self, durable: bool) -> sqlite3.Connection:
        return connect(self.path, self.read_only, durable)

    # -- writing ---------------------------------------------------------------------------

    def add(self, x: Any, label: int, score: float | None = None, source: str | None = None) -> int | None:
        """Store one sample; its row id, or None when it does not fit (``when_full="reject"``)."""
        return self.add_batch([x], [label], [score], [source])[0]

    def add_batch(
        self,
        xs: Sequence[Any] | torch.Tensor,
        labels: Sequence[int] | torch.Tensor,
        scores: Sequence[float | None] | torch.Tensor | None = None,
        sources: Sequence[str | None] | None = None,
        *,
        checkpoint: tuple[str, str] | Sequence[tuple[str, str]] | None = None,
        remove: Sequence[int] = (),
    ) -> list[int | None]:
        """Store samples in one transaction; per sample its row id, or None if it is not held.

        A sample is not held when it did not fit, or when a later sample of the same batch evicted
        it. A sample whose ``source`` is already stored is not stored again; its existing row id is
        returned, which makes replaying a stream after a crash idempotent. ``checkpoint=(name,
        value)`` is written in the same transaction (read it back with ``checkpoint(name)``): a
        stream reader records how far it got, atomically with what it stored. A list of such
        pairs writes each of them (e.g. a reader's position and the state of adaptive thresholds).
        ``remove``: ids of stored samples deleted first, in the same transaction (a caller that
        chooses its own victims, e.g. a reservoir); an id not held is an error and changes nothing.
        """
        remove = list(dict.fromkeys(remove))
        if any(isinstance(i, bool) or not isinstance(i, int) for i in remove):
            raise DripInputError(f"remove: expected row ids (integers), got {remove[:5]!r}")
        batch_tensor = isinstance(xs, torch.Tensor) and xs.dim() > 0
        fast = batch_tensor and xs.layout == torch.strided and not xs.is_quantized
        xs_list = None if fast else _as_list(xs, "xs")
        count = len(xs) if fast else len(xs_list)
        labels_list = _as_list(labels, "labels")
        scores_list = [None] * count if scores is None else _as_list(scores, "scores")
        sources_list = [None] * count if sources is None else _as_list(sources, "sources")
        if not (len(labels_list) == len(scores_list) == len(sources_list) == count):
            raise DripInputError(
                f"add_batch: got {count} samples, {len(labels_list)} labels, "
                f"{len(scores_list)} scores and {len(sources_list)} sources"
            )
        checkpoints = _checkpoints(checkpoint)
        if fast and count:
            rows = _encode_batch(xs, labels_list, scores_list, sources_list)
        else:
            rows = [
                _encode(x, lab, sc, src, f"sample {i}: " if count > 1 else "")
                for i, (x, lab, sc, src) in enumerate(
                    zip(xs_list or [], labels_list, scores_list, sources_list)
                )
            ]
        evicted: set[int] = set()
        with self._transaction():
            self._delete(remove)
            if self.capacity_count is None and self.capacity_bytes is None:
                ids: list[int | None] = list(self._insert_all(rows))
            else:
                ids = [self._insert(row, evicted) for row in rows]
            self._write_checkpoints(checkpoints)
        return [None if row_id in evicted else row_id for row_id in ids]

    def rescore(
        self,
        scores: Mapping[int, float],
        *,
        checkpoint: tuple[str, str] | Sequence[tuple[str, str]] | None = None,
    ) -> None:
        """Replace the scores of stored samples (row id -> score) in one transaction, with
        ``checkpoint`` as ``add_batch`` writes it.

        Every held sample must get a score: the model that scored them was replaced (a device
        retrained), and eviction compares scores, so old and new ones must not mix.
        """
        checkpoints = _checkpoints(checkpoint)
        values = []
        for row_id, score in scores.items():
            if isinstance(row_id, bool) or not isinstance(row_id, int):
                raise DripInputError(f"rescore: row ids must be integers, got {row_id!r}")
            if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
                raise DripInputError(f"rescore: sample {row_id}: expected a finite score, got {score!r}")
            values.append((float(score), row_id))
        with self._transaction():
            held = {row[0] for row in self._conn.execute("SELECT id FROM samples")}
            if held != set(scores):
                missing, unknown = sorted(held - set(scores)), sorted(set(scores) - held)
                raise DripInputError(
                    f"rescore: every stored sample needs a new score and no other: "
                    f"missing ids {missing[:5]}, unknown ids {unknown[:5]}; nothing changed"
                )
            self._conn.executemany("UPDATE samples SET score = ? WHERE id = ?", values)
            self._write_checkpoints(checkpoints)

    def _delete(self, ids: list[int]) -> None:
        for start in range(0, len(ids), _SQL_VARIABLES):
            chunk = ids[start : start + _SQL_VARIABLES]
            marks = ",".join("?" * len(chunk))
            deleted = self._conn.execute(f"DELETE FROM samples WHERE id IN ({marks})", chunk).rowcount
            if deleted != len(set(chunk)):
                raise DripInputError(f"remove: some of the ids {chunk[:5]} are not stored; nothing changed")

    def _write_checkpoints(self, checkpoints: list[tuple[str, str]]) -> None:
        for name, value in checkpoints:
            self._conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_CHECKPOINT + name, value),
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        if self.read_only:
            raise DripStoreError(f"{self.path}: opened read-only, cannot write")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise DripStoreError(f"{self.path}: cannot write, nothing stored: {_cause(err)}") from None
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException as err:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            if isinstance(err, sqlite3.Error):
                raise DripStoreError(f"{self.path}: write failed, nothing stored: {_cause(err)}") from None
            raise

    def _insert_all(self, rows: list[_Encoded]) -> list[int]:
        """Insert ``rows`` in a few statements, not two per row (no capacity, so nothing is refused
        or evicted; a batch of 64 small samples took 1.2 ms the row-by-row way, 9 us a statement).
        A row whose source is already stored, or earlier in the batch, gets that row's id."""
        sources = list({row.source for row in rows if row.source is not None})
        held: dict[str, int] = {}
        for start in range(0, len(sources), _SQL_VARIABLES):
            chunk = sources[start : start + _SQL_VARIABLES]
            marks = ",".join("?" * len(chunk))
            held.update(
                self._conn.execute(f"SELECT source, id FROM samples WHERE source IN ({marks})", chunk)
            )
        # Ids given explicitly, as AUTOINCREMENT would give them (never reused), so that each row's
        # id is known without a statement per row; the write lock is held, nobody else inserts.
        (last_id,) = self._conn.execute(_LAST_ID).fetchone()
        ids, values, now = [], [], time.time()
        for row in rows:
            if row.source is not None and row.source in held:
                ids.append(held[row.source])
                continue
            last_id += 1
            if row.source is not None:
                held[row.source] = last_id
            ids.append(last_id)
            values.append(
                (
                    last_id,
                    row.label,
                    row.score,
                    row.shape,
                    row.dtype,
                    len(row.data),
                    row.data,
                    now,
                    row.source,
                )
            )
        self._conn.executemany(
            "INSERT INTO samples (id, label, score, shape, dtype, nbytes, data, created_at, source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )
        return ids

    def _insert(self, row: _Encoded, evicted: set[int]) -> int | None:
        if row.source is not None:
            found = self._conn.execute("SELECT id FROM samples WHERE source = ?", (row.source,)).fetchone()
            if found:
                return int(found[0])
        victims = make_room(self, row)
        if victims is None:
            return None
        evicted.update(victims)
        cursor = self._conn.execute(
            "INSERT INTO samples (label, score, shape, dtype, nbytes, data, created_at, source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row.label, row.score, row.shape, row.dtype, len(row.data), row.data, time.time(), row.source),
        )
        return int(cursor.lastrowid)

    # -- reading ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as err:
            raise DripStoreError(f"{self.path}: cannot read: {_cause(err)}") from None

    def _totals(self) -> tuple[int, int]:
        with self._reading():
            count, used = self._conn.execute(
                "SELECT COALESCE(SUM(count), 0), COALESCE(SUM(bytes), 0) FROM usage"
            ).fetchone()
        return int(count), int(used)

    def __len__(self) -> int:
        return self._totals()[0]

    @property
    def bytes_used(self) -> int:
        """Tensor payload bytes held (what ``capacity_bytes`` limits)."""
        return self._totals()[1]

    def class_counts(self) -> dict[int, int]:
        """Samples held per label (labels with none are absent)."""
        with self._reading():
            rows = self._conn.execute("SELECT label, count FROM usage WHERE count > 0").fetchall()
        return {int(label): int(count) for label, count in rows}

    def class_bytes(self) -> dict[int, int]:
        """Tensor payload bytes held per label (labels with none are absent)."""
        with self._reading():
            rows = self._conn.execute("SELECT label, bytes FROM usage WHERE count > 0").fetchall()
        return {int(label): int(used) for label, used in rows}

    def sources(self) -> list[str]:
        """The sources of the stored samples that have one, in id order."""
        with self._reading():
            rows = self._conn.execute("SELECT source FROM samples WHERE source IS NOT NULL ORDER BY id")
            return [row[0] for row in rows]

    def ids_by_label(self) -> dict[int, list[int]]:
        """Row ids held per label, in id order (labels with none are absent)."""
        members: dict[int, list[int]] = {}
        with self._reading():
            for row_id, label in self._conn.execute("SELECT id, label FROM samples ORDER BY id"):
                members.setdefault(int(label), []).append(int(row_id))
        return members

    def top_scores(self) -> dict[int, float]:
        """The highest score held per label (what eviction removes first of that label); labels
        with no scored sample are absent."""
        with self._reading():
            labels = [row[0] for row in self._conn.execute("SELECT label FROM usage WHERE count > 0")]
            tops = {
                label: self._conn.execute(
                    "SELECT max(score) FROM samples WHERE label = ?", (label,)
                ).fetchone()[0]
                for label in labels
            }
        return {int(label): float(top) for label, top in tops.items() if top is not None}

    def checkpoint(self, name: str) -> str | None:
        """The value last committed by ``add_batch(..., checkpoint=(name, value))``, or None."""
        with self._reading():
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (_CHECKPOINT + name,)).fetchone()
        return None if row is None else str(row[0])

    def __iter__(self) -> Iterator[StoredSample]:
        """Every sample in insertion order, from one consistent snapshot."""
        with self._reading():
            cursor = self._conn.execute(
                "SELECT id, label, score, shape, dtype, data, created_at, source FROM samples ORDER BY id"
            )
            for row_id, label, score, shape, dtype, data, created_at, source in cursor:
                yield StoredSample(
                    id=row_id,
                    x=_decode(row_id, label, score, shape, dtype, data, self.path),
                    label=label,
                    score=score,
                    created_at=created_at,
                    source=source,
                )

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All samples stacked: ``x: (N, ...)``, ``labels: (N,)``, ``scores: (N,)`` (NaN if none)."""
        samples = list(self)
        if not samples:
            return torch.empty(0), torch.empty(0, dtype=torch.int64), torch.empty(0)
        shapes = {(s.x.shape, s.x.dtype) for s in samples}
        if len(shapes) > 1:
            raise DripStoreError(
                f"{self.path}: samples differ in shape or dtype: {sorted(map(str, shapes))[:4]}"
            )
        x = torch.stack([s.x for s in samples])
        labels = torch.tensor([s.label for s in samples], dtype=torch.int64)
        scores = torch.tensor([float("nan") if s.score is None else s.score for s in samples])
        return x, labels, scores

    def as_dataset(self) -> TensorDataset:
        """A ``TensorDataset(x, labels)`` of every stored sample, for retraining."""
        x, labels, _ = self.tensors()
        return TensorDataset(x, labels)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
