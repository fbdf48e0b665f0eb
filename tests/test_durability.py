"""Nothing kept is ever lost: real child processes killed with SIGKILL while they stream samples
into a store, at random moments and after every single SQL statement; a reader retraining from
the store while a writer streams into it.

Children are forked from the test process (torch is already imported there, so a child starts in
milliseconds) and never share an open SQLite connection with it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import calibrated_digits, torchrun_command

from drip.filter import DripFilter
from drip.score import DripScorer
from drip.store import SampleStore
from drip.thresholds import Thresholds

FORK = multiprocessing.get_context("fork")


def make_stream(n: int, seed: int = 0) -> tuple[DripScorer, Thresholds, torch.Tensor, torch.Tensor]:
    """A scorer, thresholds that keep about 70% and drop some from both ends, and a stream."""
    _, scorer, thresholds = calibrated_digits(q_high=0.2, q_low=0.1, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    return (
        scorer,
        thresholds,
        torch.rand(n, 1, 8, 8, generator=generator),
        torch.randint(0, 10, (n,), generator=generator),
    )


def rows(path: Path) -> list[tuple]:
    """Every row of a store, whole: id, source, label, score and the tensor's bytes."""
    with SampleStore(path) as store:
        return [
            (s.id, s.source, s.label, s.score, s.x.dtype, tuple(s.x.shape), s.x.numpy().tobytes())
            for s in store
        ]


def check_sqlite(path: Path) -> None:
    """The file passes SQLite's own integrity check and its usage table matches its rows."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        counted = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(nbytes), 0), COALESCE(SUM(length(data)), 0) FROM samples"
        ).fetchone()
        usage = conn.execute("SELECT COALESCE(SUM(count), 0), COALESCE(SUM(bytes), 0) FROM usage").fetchone()
        assert counted[:2] == usage and counted[1] == counted[2]
    finally:
        conn.close()


def run_child(
    target: Callable[[], None], kill_when: Callable[[], bool] | None = None, jitter_s: float = 0.0
) -> int:
    """Run ``target`` in a forked child; SIGKILL it once ``kill_when()`` holds (plus a random
    jitter), or let it finish. Its exit code (-9 when killed)."""
    process = FORK.Process(target=target)
    process.start()
    if kill_when is not None:
        while process.is_alive() and not kill_when():
            time.sleep(0.001)
        time.sleep(jitter_s)
        os.kill(process.pid, signal.SIGKILL)
    process.join(120)
    assert process.exitcode is not None, "child did not finish"
    return process.exitcode


# -- random kill points: the store holds exactly what was reported kept -------------------


def stream_and_log(
    store_path: Path, log_path: Path, stream: tuple, capacity: int | None
) -> Callable[[], None]:
    scorer, thresholds, x, y = stream

    def child() -> None:
        store = SampleStore(store_path, capacity_count=capacity)
        drip_filter = DripFilter(scorer, thresholds, store)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        for i in range(len(x)):
            os.write(log, f"offer {i}\n".encode())
            decision = drip_filter.offer(x[i], y[i], source=f"stream:{i}")
            os.write(
                log, f"decided {i} {int(decision.kept)} {decision.sample_id} {decision.score!r}\n".encode()
            )
            os.fsync(log)
        store.close()
        time.sleep(60)  # wait for the kill, so that every run is killed, late or not

    return child


def decisions(log_path: Path) -> tuple[dict[int, tuple[bool, int | None, float]], int | None]:
    """The child's decisions by index, and the index it was offering when killed (None if none)."""
    decided, offered = {}, None
    for line in log_path.read_text().split("\n")[:-1]:  # a line cut by the kill has no newline
        parts = line.split()
        if parts[0] == "offer":
            offered = int(parts[1])
        else:
            decided[int(parts[1])] = (
                parts[2] == "1",
                None if parts[3] == "None" else int(parts[3]),
                float(parts[4]),
            )
    return decided, (offered if offered not in decided else None)


def check_after_kill(store_path: Path, log_path: Path, stream: tuple) -> None:
    scorer, _, x, y = stream
    check_sqlite(store_path)
    decided, in_flight = decisions(log_path)
    held = {
        int(source.split(":")[1]): (row_id, label, score, data)
        for row_id, source, label, score, _, _, data in rows(store_path)
    }
    kept = {i for i, (was_kept, _, _) in decided.items() if was_kept}
    # Exactly what was reported kept, plus at most the sample whose offer had not returned.
    assert kept <= set(held) <= kept | {in_flight}
    for i, (row_id, label, score, data) in held.items():
        assert data == x[i].numpy().tobytes() and label == int(y[i])
        if i in kept:
            assert (row_id, score) == decided[i][1:]
        else:
            assert score == pytest.approx(float(scorer(x[i : i + 1], y[i : i + 1])[0]), abs=1e-6)


def kill_at_random_points(tmp_path: Path, runs: int, seed: int) -> int:
    stream = make_stream(160, seed)
    chooser = random.Random(seed)
    killed = 0
    for run in range(runs):
        store_path, log_path = tmp_path / f"kept{run}.sqlite", tmp_path / f"decisions{run}.log"
        log_path.touch()
        target = chooser.randrange(1, 150)
        capacity = chooser.choice([None, 60])

        def reached(log_path: Path = log_path, target: int = target) -> bool:
            return log_path.read_bytes().count(b"decided") >= target

        code = run_child(
            stream_and_log(store_path, log_path, stream, capacity), reached, chooser.uniform(0, 0.004)
        )
        killed += code == -signal.SIGKILL
        check_after_kill(store_path, log_path, stream)
    return killed


def test_sigkill_at_random_moments_loses_nothing_kept(tmp_path):
    assert kill_at_random_points(tmp_path, runs=4, seed=1) == 4


@pytest.mark.slow
def test_sigkill_at_many_random_moments_loses_nothing_kept(tmp_path):
    assert kill_at_random_points(tmp_path, runs=40, seed=2) == 40


# -- a kill after every SQL statement: the store is always a committed prefix --------------


class KillAfter:
    """A connection that SIGKILLs its own process right after its ``n``-th statement."""

    def __init__(self, conn: sqlite3.Connection, n: int) -> None:
        self._conn, self._left, self.statements = conn, n, []

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        return self._counted(sql, self._conn.execute(sql, *args))

    def executemany(self, sql: str, *args: object) -> sqlite3.Cursor:
        return self._counted(sql, self._conn.executemany(sql, *args))

    def _counted(self, sql: str, cursor: sqlite3.Cursor) -> sqlite3.Cursor:
        self.statements.append(sql.split()[0])
        self._left -= 1
        if self._left == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return cursor

    def close(self) -> None:
        self._conn.close()


# Batches of (label, floats, score, source) for a store of 12 bytes that evicts: batch 2's first
# sample evicts "a", then is itself the most redundant and is refused (the eviction is undone);
# batch 3's second sample evicts its batch mate; batch 4 evicts "g", the top of the tied classes.
BATCHES = [
    [(0, 1, 0.9, "a"), (0, 1, 0.1, "b"), (1, 1, 0.5, "c")],
    [(1, 2, 0.95, "d"), (2, 1, 0.3, "e")],
    [(0, 1, 0.05, "f"), (0, 1, 0.01, "g")],
    [(3, 1, 0.2, "a")],
]


def evicting_scenario(store_path: Path, kill_after: int, snapshots: list | None = None) -> KillAfter:
    """Add ``BATCHES`` (each one transaction, with a checkpoint); with ``snapshots``, record the
    rows and checkpoint after every batch."""
    store = SampleStore(store_path, capacity_bytes=12, when_full="evict")
    store._conn = conn = KillAfter(store._conn, kill_after)
    for number, batch in enumerate(BATCHES, 1):
        xs = [torch.full((n,), float(ord(source[0]))) for _, n, _, source in batch]
        labels, scores, sources = ([row[k] for row in batch] for k in (0, 2, 3))
        store.add_batch(xs, labels, scores, sources, checkpoint=("scenario", str(number)))
        if snapshots is not None:
            snapshots.append((rows(store_path), str(number)))
    store.close()
    return conn


def test_sigkill_after_every_sql_statement_leaves_a_committed_prefix(tmp_path):
    snapshots: list = [([], None)]  # rows and checkpoint after 0, 1, 2, ... committed batches
    statements = evicting_scenario(tmp_path / "reference.sqlite", 0, snapshots).statements
    assert statements.count("COMMIT") == len(BATCHES)
    assert {"SAVEPOINT", "DELETE", "ROLLBACK", "RELEASE"} <= set(statements)
    assert [[row[1] for row in state] for state, _ in snapshots[2:]] == [
        ["b", "c", "e"],
        ["c", "e", "g"],
        ["c", "e", "a"],
    ]
    for n in range(1, len(statements) + 1):
        path = tmp_path / f"kill{n}.sqlite"
        assert run_child(lambda n=n, path=path: evicting_scenario(path, n)) == -signal.SIGKILL
        check_sqlite(path)
        with SampleStore(path) as store:
            checkpoint = store.checkpoint("scenario")
        committed = statements[:n].count("COMMIT")
        assert (rows(path), checkpoint) == snapshots[committed], f"killed after {n}: {statements[n - 1]}"


# -- drip filter resumes after a kill and ends where an uninterrupted run ends -------------


@pytest.fixture
def cli_files(tmp_path: Path) -> Path:
    scorer, thresholds, x, y = make_stream(400, seed=4)
    torch.save(scorer.model, tmp_path / "model.pt")
    thresholds.save(tmp_path / "t.json")
    torch.save({"x": x, "y": y}, tmp_path / "stream.pt")
    return tmp_path


def filter_argv(folder: Path, store: str) -> list[str]:
    return [
        "filter",
        *("--model", str(folder / "model.pt"), "--thresholds", str(folder / "t.json")),
        *("--stream", str(folder / "stream.pt"), "--store", str(folder / store)),
        *("--capacity-count", "40", "--when-full", "evict", "--batch-size", "7", "--quiet"),
    ]


def progress(path: Path) -> int:
    """How far a running ``drip filter`` has committed (read without writing to the store)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute(
                "SELECT value FROM meta WHERE key = 'checkpoint:drip filter:stream.pt'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:  # not created yet
        return 0
    return 0 if row is None else int(row[0].split('"next": ')[1].split(",")[0])


def kill_and_resume(folder: Path, runs: int, seed: int, capsys: pytest.CaptureFixture) -> int:
    from drip.cli import main

    assert main(filter_argv(folder, "uninterrupted.sqlite")) == 0
    expected = rows(folder / "uninterrupted.sqlite")
    chooser = random.Random(seed)
    killed = 0
    for run in range(runs):
        store = f"resumed{run}.sqlite"
        target = chooser.randrange(1, 380)

        def reached(path: Path = folder / store, target: int = target) -> bool:
            return progress(path) >= target

        code = run_child(
            lambda store=store: (main(filter_argv(folder, store)), time.sleep(60)),
            reached,
            chooser.uniform(0, 0.01),
        )
        killed += code == -signal.SIGKILL
        check_sqlite(folder / store)
        assert main(filter_argv(folder, store)) == 0
        assert "resumed at sample" in capsys.readouterr().out
        assert rows(folder / store) == expected
    return killed


def test_filter_rerun_after_sigkill_ends_in_the_uninterrupted_store(cli_files, capsys):
    assert kill_and_resume(cli_files, runs=3, seed=5, capsys=capsys) == 3


@pytest.mark.slow
def test_filter_rerun_after_many_sigkills_ends_in_the_uninterrupted_store(cli_files, capsys):
    assert kill_and_resume(cli_files, runs=15, seed=6, capsys=capsys) == 15


# -- drip score resumes after a kill, on one rank and on two, to an uninterrupted run's CSV and store

SCORE_SHARDS = (150, 90, 160)


@pytest.fixture
def score_files(tmp_path: Path) -> Path:
    scorer, thresholds, x, y = make_stream(sum(SCORE_SHARDS), seed=7)
    torch.save(scorer.model, tmp_path / "model.pt")
    thresholds.save(tmp_path / "t.json")
    # Malformed samples: a resumed run writes their rows again from a checkpoint as well.
    x[37, 0, 0, 0] = float("nan")
    y[201] = 12
    (tmp_path / "shards").mkdir()
    start = 0
    for k, size in enumerate(SCORE_SHARDS):
        shard = {"x": x[start : start + size].clone(), "y": y[start : start + size].clone()}
        torch.save(shard, tmp_path / "shards" / f"part-{k}.pt")
        start += size
    return tmp_path


def score_argv(folder: Path, name: str) -> list[str]:
    """``drip score`` of the shards into ``name``.csv and an evicting ``name``.sqlite at capacity:
    its contents depend on every decision and their order."""
    return [
        "score",
        *("--model", str(folder / "model.pt"), "--thresholds", str(folder / "t.json")),
        *("--data", str(folder / "shards"), "--out", str(folder / f"{name}.csv")),
        *("--store", str(folder / f"{name}.sqlite"), "--capacity-count", "40", "--when-full", "evict"),
        *("--batch-size", "8", "--quiet"),
    ]


def score_progress(folder: Path, name: str) -> int:
    """How far a running ``drip score`` into ``name`` has committed (read without writing)."""
    try:
        conn = sqlite3.connect(f"file:{folder / name}.sqlite?mode=ro", uri=True)
        try:
            key = f"checkpoint:drip score:shards:{name}.csv"
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:  # not created yet
        return 0
    return 0 if row is None else json.loads(row[0])["next"]


def check_as_uninterrupted(folder: Path, name: str, expected: tuple[bytes, list[tuple]]) -> None:
    """``name``'s CSV is byte for byte, and its store row for row (ids included: nothing was
    stored or evicted twice), the uninterrupted run's."""
    check_sqlite(folder / f"{name}.sqlite")
    assert (folder / f"{name}.csv").read_bytes() == expected[0]
    assert rows(folder / f"{name}.sqlite") == expected[1]
    assert not (folder / f"{name}.csv.partial").exists()


def test_score_rerun_after_sigkill_ends_in_the_csv_and_store_of_an_uninterrupted_run(score_files, capsys):
    from drip.cli import main

    assert main(score_argv(score_files, "whole")) == 0
    expected = ((score_files / "whole.csv").read_bytes(), rows(score_files / "whole.sqlite"))
    assert expected[0].count(b",malformed,") == 2
    chooser = random.Random(8)
    killed = 0
    for run in range(3):
        name, target = f"resumed{run}", chooser.randrange(1, sum(SCORE_SHARDS))

        def reached(name: str = name, target: int = target) -> bool:
            return score_progress(score_files, name) >= target

        code = run_child(
            lambda name=name: (main(score_argv(score_files, name)), time.sleep(60)),
            reached,
            chooser.uniform(0, 0.01),
        )
        killed += code == -signal.SIGKILL
        capsys.readouterr()
        assert main(score_argv(score_files, name)) == 0
        out = capsys.readouterr().out
        assert "resumed at sample" in out or "nothing to do" in out
        check_as_uninterrupted(score_files, name, expected)
    assert killed == 3


def kill_torchrun(agent: subprocess.Popen) -> None:
    """SIGKILL ``torchrun`` and its ranks (each rank leads a session of its own, out of reach of
    the agent's process group)."""
    ranks = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == agent.pid:
            ranks.append(int(stat.parent.name))
    for pid in ranks:
        os.killpg(pid, signal.SIGKILL)
    os.killpg(agent.pid, signal.SIGKILL)
    agent.wait(60)


def test_score_under_two_ranks_rerun_after_sigkill_ends_as_an_uninterrupted_run(score_files):
    def torchrun(*args: str) -> subprocess.CompletedProcess:
        command, env = torchrun_command(*args)
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    done = torchrun("-m", "drip.cli", *score_argv(score_files, "whole"))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = ((score_files / "whole.csv").read_bytes(), rows(score_files / "whole.sqlite"))
    # Each rank waits after its run, so that the kill always falls on a live group.
    script = score_files / "score_then_wait.py"
    script.write_text("import sys, time\nfrom drip.cli import main\nmain(sys.argv[1:])\ntime.sleep(60)\n")
    command, env = torchrun_command(str(script), *score_argv(score_files, "resumed"))
    chooser = random.Random(9)
    target = chooser.randrange(1, sum(SCORE_SHARDS))
    agent = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        while agent.poll() is None and score_progress(score_files, "resumed") < target:
            time.sleep(0.001)
        time.sleep(chooser.uniform(0, 0.01))
    finally:
        kill_torchrun(agent)
    assert agent.returncode == -signal.SIGKILL
    done = torchrun("-m", "drip.cli", *score_argv(score_files, "resumed"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed at sample" in done.stdout or "nothing to do" in done.stdout
    check_as_uninterrupted(score_files, "resumed", expected)


# -- a reader retrains while a writer streams ---------------------------------------------


def writer(store_path: Path, stream: tuple, start: int, stop: int) -> Callable[[], None]:
    scorer, thresholds, x, y = stream

    def child() -> None:
        with SampleStore(store_path) as store:
            drip_filter = DripFilter(scorer, thresholds, store)
            for i in range(start, stop, 3):
                drip_filter.offer_batch(
                    x[i : i + 3], y[i : i + 3], sources=[f"stream:{j}" for j in range(i, min(i + 3, stop))]
                )

    return child


def check_snapshot(
    dataset: torch.utils.data.TensorDataset, sources: list[str], x: torch.Tensor, y: torch.Tensor
) -> None:
    """Every row a reader sees is a whole sample: the stream's bytes and label for its source."""
    index = [int(source.split(":")[1]) for source in sources]
    if not index:
        assert len(dataset) == 0
        return
    assert torch.equal(dataset.tensors[0], x[index]) and torch.equal(dataset.tensors[1], y[index])


def test_reader_sees_whole_samples_while_a_writer_streams(tmp_path):
    stream = make_stream(240, seed=7)
    _, _, x, y = stream
    path = tmp_path / "kept.sqlite"
    SampleStore(path).close()
    process = FORK.Process(target=writer(path, stream, 0, 240))
    process.start()
    seen = []
    with SampleStore(path) as reader:
        while process.is_alive() or not seen or seen[-1] < len(reader):
            dataset = reader.as_dataset()
            sources = [s.source for s in reader][: len(dataset)]
            check_snapshot(dataset, sources, x, y)
            seen.append(len(dataset))
    process.join(60)
    assert process.exitcode == 0 and seen == sorted(seen) and len(set(seen)) > 2


def test_reader_holding_a_snapshot_does_not_block_the_writer(tmp_path):
    stream = make_stream(120, seed=8)
    path = tmp_path / "kept.sqlite"
    assert run_child(writer(path, stream, 0, 60)) == 0
    with SampleStore(path) as reader:
        snapshot = iter(reader)
        first = next(snapshot)  # an open read transaction, held while the writer runs
        # A writer blocked by the reader would wait for it, and the reader waits for the writer.
        assert run_child(writer(path, stream, 60, 120)) == 0
        held = [first, *snapshot]
        after = list(reader)
    assert [s.source for s in held] == [s.source for s in after if int(s.source.split(":")[1]) < 60]
    assert len(after) > len(held)
