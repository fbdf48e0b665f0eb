"""The file itself: its schema and format marks, opening or creating a store, SQLite errors in words.

A store is an SQLite file with three tables: ``meta`` (the format, the schema version, committed
checkpoints), ``samples`` (one row per sample) and ``usage`` (count and bytes per label, kept by
triggers, so capacity checks never scan the samples). ``connect`` refuses anything at the path
that is not an empty file or a drip store before SQLite can change it, creates the schema in an
empty file, and checks the format and schema version of an existing one.
"""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from ..errors import DripStoreError

FORMAT = "drip-store"
SCHEMA_VERSION = 1
_CHECKPOINT = "checkpoint:"
_TABLES = {"meta", "samples", "usage"}

# Primary SQLite result codes (``sqlite3.Error.sqlite_errorcode & 0xFF``) and what they mean here.
_CAUSES = {
    5: "locked by another process (busy)",
    6: "locked by another connection",
    8: "read-only: the store, its folder, or its -wal / -shm files cannot be written",
    10: "disk I/O error",
    11: "the file is corrupt or truncated",
    13: "disk full (or the store's page limit reached)",
    14: "cannot open the file (no permission, or its folder is read-only)",
    26: "not a drip store (not an SQLite file)",
}


def _cause(err: sqlite3.Error) -> str:
    """SQLite's message with what it means for a store (error codes need Python 3.11)."""
    code = getattr(err, "sqlite_errorcode", None)
    meaning = _CAUSES.get(code & 0xFF) if isinstance(code, int) else None
    return f"{meaning} ({err})" if meaning else str(err)


# Every SQLite file starts so; SQLite takes a file shorter than its 100-byte header for an empty
# database and would write a new one over it.
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SQLITE_HEADER_BYTES = 100


def _foreign(path: Path) -> str | None:
    """What lies at ``path`` when it cannot be a store, read before SQLite opens (and would
    change) it; None when it may be one: absent, empty (0 bytes) or an SQLite file, whose tables
    ``_check_format`` judges."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"cannot be examined ({err.strerror})"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size == 0:
        return None
    try:
        with path.open("rb") as file:
            head = file.read(_SQLITE_HEADER_BYTES)
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if len(head) < _SQLITE_HEADER_BYTES:
        return f"a {len(head)}-byte file ({head[:16]!r}), shorter than any SQLite file"
    if not head.startswith(_SQLITE_MAGIC):
        return f"a {info.st_size}-byte file that is not SQLite (it starts {head[:16]!r})"
    return None


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


def connect(path: Path, read_only: bool, durable: bool) -> sqlite3.Connection:
    """A connection to the store at ``path``, created there when the file is absent or empty
    (not when ``read_only``); ``durable`` chooses ``synchronous=FULL`` over ``NORMAL``."""
    # SQLite says "unable to open database file" for both; say which.
    if path.is_dir():
        raise DripStoreError(f"path: expected a store file, got the folder {path}")
    if not path.parent.is_dir():
        raise DripStoreError(f"path: {path}: folder {path.parent} does not exist")
    if (found := _foreign(path)) is not None:
        raise DripStoreError(
            f"{path}: not a drip store: {found}; only an empty file or a drip store is "
            "opened as a store, so it was left unchanged"
        )
    try:
        if read_only:
            conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0, isolation_level=None
            )
        else:
            conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    except sqlite3.Error as err:
        raise DripStoreError(f"{path}: cannot open store: {_cause(err)}") from None
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if not tables and read_only:
            raise DripStoreError(f"{path}: empty file, not a drip store")
        if not tables:
            conn.execute("PRAGMA journal_mode=WAL")
            _create(conn)
        else:
            _check_format(path, conn, tables)
            if not read_only:
                conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    except sqlite3.Error as err:
        conn.close()
        raise DripStoreError(f"{path}: cannot open store: {_cause(err)}") from None
    except DripStoreError:
        conn.close()
        raise
    return conn


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


def _check_format(path: Path, conn: sqlite3.Connection, tables: set[str]) -> None:
    if "meta" not in tables:
        raise DripStoreError(f"{path}: an SQLite file, but not a drip store (no meta table)")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("format") != FORMAT:
        raise DripStoreError(f"{path}: an SQLite file, but not a drip store")
    version = meta.get("schema_version")
    if not (isinstance(version, str) and version.isdigit()):
        raise DripStoreError(
            f"{path}: schema_version: expected a whole number, got {version!r} (edited by hand?)"
        )
    if int(version) > SCHEMA_VERSION:
        raise DripStoreError(
            f"{path}: store schema version {version} is newer than this drip reads "
            f"({SCHEMA_VERSION}); upgrade drip"
        )
    if missing := _TABLES - tables:
        raise DripStoreError(f"{path}: a damaged drip store: tables {sorted(missing)} are missing")
