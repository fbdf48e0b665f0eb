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
that sample.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .errors import DripInputError, DripStoreError
from .validation import as_tensor

FORMAT = "drip-store"
SCHEMA_VERSION = 1
WhenFull = Literal["reject", "evict"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    label INTEGER NOT NULL,
    score REAL,
    shape TEXT NOT NULL,
    dtype TEXT NOT NULL,
    nbytes INTEGER NOT NULL,
    data BLOB NOT NULL,
    created_at REAL NOT NULL,
    source TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS samples_label_score ON samples (label, score);
CREATE TABLE IF NOT EXISTS usage (label INTEGER PRIMARY KEY, count INTEGER NOT NULL, bytes INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS samples_added AFTER INSERT ON samples BEGIN
    INSERT INTO usage (label, count, bytes) VALUES (NEW.label, 1, NEW.nbytes)
    ON CONFLICT (label) DO UPDATE SET count = count + 1, bytes = bytes + NEW.nbytes;
END;
CREATE TRIGGER IF NOT EXISTS samples_removed AFTER DELETE ON samples BEGIN
    UPDATE usage SET count = count - 1, bytes = bytes - OLD.nbytes WHERE label = OLD.label;
END;
"""


@dataclass(frozen=True)
class StoredSample:
    """One row of the store."""

    id: int
    x: torch.Tensor
    label: int
    score: float | None
    created_at: float
    source: str | None


@dataclass(frozen=True)
class _Encoded:
    label: int
    score: float | None
    shape: str
    dtype: str
    data: bytes
    source: str | None


def _scalar(value: Any) -> Any:
    """A one-element tensor or array as a Python number; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.item()
    return value


def _encode(x: Any, label: Any, score: Any, source: Any, where: str) -> _Encoded:
    tensor = as_tensor(x, f"{where}x")
    if tensor.is_complex() or tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise DripInputError(f"{where}x: dtype {tensor.dtype} cannot be stored")
    label = _scalar(label)
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise DripInputError(f"{where}label: expected a non-negative integer, got {label!r}")
    label = operator.index(label)
    if label < 0:
        raise DripInputError(f"{where}label: expected a non-negative integer, got {label}")
    score = _scalar(score)
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, (int, float)) or score != score:
            raise DripInputError(f"{where}score: expected a finite number or None, got {score!r}")
        score = float(score)
        if score in (float("inf"), float("-inf")):
            raise DripInputError(f"{where}score: expected a finite number or None, got {score}")
    if source is not None and not isinstance(source, str):
        raise DripInputError(f"{where}source: expected a string or None, got {type(source).__name__}")
    data = tensor.detach().cpu().contiguous().reshape(-1)
    return _Encoded(
        label=label,
        score=score,
        shape=json.dumps(list(tensor.shape)),
        dtype=str(tensor.dtype).removeprefix("torch."),
        data=data.view(torch.uint8).numpy().tobytes() if data.numel() else b"",
        source=source,
    )


def _decode(shape: str, dtype: str, data: bytes) -> torch.Tensor:
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise DripStoreError(f"unknown dtype {dtype!r} in store")
    dims = json.loads(shape)
    if not data:
        return torch.empty(dims, dtype=torch_dtype)
    return torch.frombuffer(bytearray(data), dtype=torch_dtype).reshape(dims)


class SampleStore:
    """Kept samples in an SQLite file; see the module docstring for the guarantees.

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
        count, used = self._totals()
        if (capacity_count is not None and count > capacity_count) or (
            capacity_bytes is not None and used > capacity_bytes
        ):
            self._conn.close()
            raise DripStoreError(
                f"{self.path}: holds {count} samples / {used} bytes, above the capacity asked for "
                f"({capacity_count} samples / {capacity_bytes} bytes); nothing was removed"
            )

    def _open(self, durable: bool) -> sqlite3.Connection:
        if self.path.is_dir():
            raise DripStoreError(f"{self.path}: is a directory, expected a store file")
        try:
            if self.read_only:
                conn = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0, isolation_level=None
                )
            else:
                conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as err:
            raise DripStoreError(f"{self.path}: cannot open store: {err}") from None
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            if not tables and self.read_only:
                raise DripStoreError(f"{self.path}: empty file, not a drip store")
            if not tables:
                conn.execute("PRAGMA journal_mode=WAL")
                self._create(conn)
            else:
                self._check_format(conn, tables)
                if not self.read_only:
                    conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        except sqlite3.OperationalError as err:
            conn.close()
            raise DripStoreError(f"{self.path}: cannot open store: {err}") from None
        except sqlite3.DatabaseError as err:
            conn.close()
            raise DripStoreError(f"{self.path}: not a drip store ({err})") from None
        except DripStoreError:
            conn.close()
            raise
        return conn

    @staticmethod
    def _create(conn: sqlite3.Connection) -> None:
        # Idempotent (IF NOT EXISTS / OR IGNORE) so two processes creating one file both succeed.
        meta = [("format", FORMAT), ("schema_version", str(SCHEMA_VERSION))]
        inserts = "".join(f"INSERT OR IGNORE INTO meta VALUES ('{k}', '{v}');" for k, v in meta)
        try:
            conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}{inserts}COMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _check_format(self, conn: sqlite3.Connection, tables: set[str]) -> None:
        if "meta" not in tables:
            raise DripStoreError(f"{self.path}: an SQLite file, but not a drip store (no meta table)")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != FORMAT:
            raise DripStoreError(f"{self.path}: an SQLite file, but not a drip store")
        version = int(meta.get("schema_version", "0"))
        if version > SCHEMA_VERSION:
            raise DripStoreError(
                f"{self.path}: store schema version {version} is newer than this drip reads "
                f"({SCHEMA_VERSION}); upgrade drip"
            )

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
    ) -> list[int | None]:
        """Store samples in one transaction; per sample its row id or None (did not fit).

        A sample whose ``source`` is already stored is not stored again; its existing row id is
        returned, which makes replaying a stream after a crash idempotent.
        """
        count = len(xs)
        scores_list = [None] * count if scores is None else list(scores)
        sources_list = [None] * count if sources is None else list(sources)
        labels_list = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
        if not (len(labels_list) == len(scores_list) == len(sources_list) == count):
            raise DripInputError(
                f"add_batch: got {count} samples, {len(labels_list)} labels, "
                f"{len(scores_list)} scores and {len(sources_list)} sources"
            )
        rows = [
            _encode(x, lab, sc, src, f"sample {i}: " if count > 1 else "")
            for i, (x, lab, sc, src) in enumerate(zip(xs, labels_list, scores_list, sources_list))
        ]
        with self._transaction():
            return [self._insert(row) for row in rows]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        if self.read_only:
            raise DripStoreError(f"{self.path}: opened read-only, cannot write")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise DripStoreError(f"{self.path}: cannot write: {err}") from None
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException as err:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            if isinstance(err, sqlite3.Error):
                raise DripStoreError(f"{self.path}: write failed, nothing stored: {err}") from None
            raise

    def _insert(self, row: _Encoded) -> int | None:
        if row.source is not None:
            found = self._conn.execute("SELECT id FROM samples WHERE source = ?", (row.source,)).fetchone()
            if found:
                return int(found[0])
        nbytes = len(row.data)
        if self.capacity_bytes is not None and nbytes > self.capacity_bytes:
            return None
        while not self._fits(nbytes):
            if self.when_full == "reject" or not self._evict_for(row):
                return None
        cursor = self._conn.execute(
            "INSERT INTO samples (label, score, shape, dtype, nbytes, data, created_at, source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row.label, row.score, row.shape, row.dtype, nbytes, row.data, time.time(), row.source),
        )
        return int(cursor.lastrowid)

    def _fits(self, nbytes: int) -> bool:
        count, used = self._totals()
        if self.capacity_count is not None and count + 1 > self.capacity_count:
            return False
        return self.capacity_bytes is None or used + nbytes <= self.capacity_bytes

    def _evict_for(self, row: _Encoded) -> bool:
        """Remove the highest-score sample of the largest class; False if the newcomer is it."""
        counts = self.class_counts()
        counts[row.label] = counts.get(row.label, 0) + 1
        largest = max(counts.values())
        tied = [c for c, n in counts.items() if n == largest]
        # Among equally large classes prefer the newcomer's own (a replacement keeps the balance),
        # then the lowest label, so eviction is deterministic.
        label = row.label if row.label in tied else min(tied)
        victim = self._conn.execute(
            "SELECT id, score FROM samples WHERE label = ? ORDER BY score IS NULL, score DESC, id LIMIT 1",
            (label,),
        ).fetchone()
        newcomer_scores_higher = victim is not None and (
            victim[1] is None or (row.score is not None and row.score >= victim[1])
        )
        if victim is None or (label == row.label and newcomer_scores_higher):
            return False
        self._conn.execute("DELETE FROM samples WHERE id = ?", (victim[0],))
        return True

    # -- reading ---------------------------------------------------------------------------

    def _totals(self) -> tuple[int, int]:
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

    def stored_sources(self, sources: Sequence[str]) -> set[str]:
        """Those of ``sources`` the store already holds (to skip them when replaying a stream)."""
        found: set[str] = set()
        unique = list(dict.fromkeys(sources))
        for start in range(0, len(unique), 500):  # stay below SQLite's bound-parameter limit
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(f"SELECT source FROM samples WHERE source IN ({marks})", chunk)
            found.update(row[0] for row in rows)
        return found

    def class_counts(self) -> dict[int, int]:
        """Samples held per label (labels with none are absent)."""
        rows = self._conn.execute("SELECT label, count FROM usage WHERE count > 0").fetchall()
        return {int(label): int(count) for label, count in rows}

    def __iter__(self) -> Iterator[StoredSample]:
        """Every sample in insertion order, from one consistent snapshot."""
        cursor = self._conn.execute(
            "SELECT id, label, score, shape, dtype, data, created_at, source FROM samples ORDER BY id"
        )
        for row_id, label, score, shape, dtype, data, created_at, source in cursor:
            yield StoredSample(
                id=row_id,
                x=_decode(shape, dtype, data),
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
