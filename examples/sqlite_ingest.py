"""Ingest into a real database: thousands of Trio tasks each insert one row into SQLite.

Run it with ``python examples/sqlite_ingest.py [--rows N] [--dir DIR] [--tasks N]``.

Every task wants to do the same small thing: insert its row and know that it is
committed. Done naively, that is one transaction per row, and each commit waits
for the disk (SQLite syncs the journal on every commit). Through a batcher, the
same tasks make the same single-row calls, but concurrent rows share one
transaction: one ``executemany`` and one commit per batch. The script runs both
on separate database files, prints rows per second for each and the speed-up,
and then checks, with SQL, that each table holds every row exactly once.

sqlite3 and threads: the work runs in ``trio.to_thread.run_sync`` so the Trio
loop never blocks on the disk. Each database file has one connection, opened
with ``check_same_thread=False`` so that worker threads may use it, and a
:class:`threading.Lock` makes sure only one thread uses it at a time (a sqlite3
connection must not run two transactions at once). SQLite has a single writer
anyway, so the lock costs nothing that the database would not impose, and it
avoids SQLite's busy-wait sleeps. Both modes share this code path; the only
difference is how many rows each transaction carries.

Files and sizes: without ``--dir`` the databases live in a temporary folder
that is removed at the end. With ``--dir`` they are kept, under names that no
file in that folder has yet (``one_per_row.db``, then ``one_per_row-2.db``, and
so on): an existing database is never overwritten, and the script says which
files it wrote. At most ``--tasks`` tasks (default 10,000) are alive at once,
each inserting one row, however many ``--rows`` there are, so memory stays
bounded; a finished task makes room for the next row's task.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final, NoReturn, final

import attrs
import trio

import trio_batch as tb

#: Rows per transaction at most, when batching.
MAX_BATCH: Final = 500
#: Tasks alive at once, each inserting one row, unless --tasks says otherwise.
DEFAULT_TASKS: Final = 10_000

Row = tuple[int, str]


@attrs.frozen
class IngestResult:
    """How one ingestion went."""

    rows: int
    seconds: float
    transactions: int

    @property
    def rows_per_second(self) -> float:
        """Rows committed per wall-clock second."""
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


@final
class Database:
    """One SQLite file, one connection, shared by worker threads under a lock.

    Args:
        path: the database file; the ``events`` table is created if missing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(path, check_same_thread=False)
        with self._lock, self._connection:
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS events "
                "(id INTEGER PRIMARY KEY, task INTEGER NOT NULL, payload TEXT NOT NULL)"
            )

    def insert_rows(self, rows: Sequence[Row]) -> None:
        """Insert ``rows`` in one transaction; blocking, so call it in a worker thread."""
        with self._lock, self._connection:  # BEGIN ... COMMIT, or ROLLBACK on error
            self._connection.executemany("INSERT INTO events (task, payload) VALUES (?, ?)", rows)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._connection.close()


def _row(task: int) -> Row:
    return (task, f"event from task {task}")


async def run_tasks(count: int, limit: int, task: Callable[[int], Awaitable[object]]) -> None:
    """Run ``task(0)``, ..., ``task(count - 1)``, each in its own task, at most ``limit`` at once.

    Tasks are started in order, each as soon as fewer than ``limit`` are alive,
    so memory is bounded by ``limit``, not by ``count``.
    """
    room = trio.Semaphore(limit)

    async def run_one(number: int) -> None:
        try:
            await task(number)
        finally:
            room.release()

    async with trio.open_nursery() as nursery:
        for number in range(count):
            await room.acquire()
            nursery.start_soon(run_one, number)


async def ingest_one_per_row(
    database: Database, rows: int, tasks: int = DEFAULT_TASKS
) -> IngestResult:
    """``rows`` tasks (at most ``tasks`` at once), each committing its row alone."""

    async def insert_one(task: int) -> None:
        await trio.to_thread.run_sync(database.insert_rows, [_row(task)])

    started = time.perf_counter()
    await run_tasks(rows, tasks, insert_one)
    return IngestResult(rows, time.perf_counter() - started, transactions=rows)


async def ingest_batched(database: Database, rows: int, tasks: int = DEFAULT_TASKS) -> IngestResult:
    """``rows`` tasks (at most ``tasks`` at once), each submitting its row to a batcher.

    Each task still awaits its own row's commit: ``submit`` returns after the
    transaction holding the row has committed, and raises if it failed.
    """
    transactions = 0

    async def insert_batch(table: str, batch: list[Row]) -> list[None]:
        nonlocal transactions
        transactions += 1
        await trio.to_thread.run_sync(database.insert_rows, batch)
        return [None] * len(batch)

    # One writer at a time: SQLite has a single write lock, so more batches in
    # flight would only queue on it (and a waiting batch gathers more rows).
    # Overflow.WAIT: when the queue of full batches is at its limit, a task
    # waits for room (backpressure) instead of being rejected.
    limits = tb.Limits(max_batch_size=MAX_BATCH, max_key_concurrency=1, overflow=tb.Overflow.WAIT)
    started = time.perf_counter()
    async with tb.open_batcher(insert_batch, policy=tb.Immediate(), limits=limits) as batcher:

        async def insert_one(task: int) -> None:
            await batcher.submit("events", _row(task))

        await run_tasks(rows, tasks, insert_one)
    return IngestResult(rows, time.perf_counter() - started, transactions)


def verify(path: Path, rows: int) -> list[str]:
    """Check that ``events`` holds the rows of tasks ``0 .. rows-1`` exactly once each.

    Returns:
        What is wrong (empty if the table is right).
    """
    problems = []
    connection = sqlite3.connect(path)
    try:
        (count,) = connection.execute("SELECT COUNT(*) FROM events").fetchone()
        if count != rows:
            problems.append(f"{count} rows instead of {rows}")
        duplicates = connection.execute(
            "SELECT task, COUNT(*) FROM events GROUP BY task HAVING COUNT(*) > 1 LIMIT 5"
        ).fetchall()
        problems.extend(f"task {task} appears {times} times" for task, times in duplicates)
        (distinct, low, high) = connection.execute(
            "SELECT COUNT(DISTINCT task), MIN(task), MAX(task) FROM events"
        ).fetchone()
        if rows and (distinct, low, high) != (rows, 0, rows - 1):
            problems.append(
                f"tasks present: {distinct} distinct in [{low}, {high}], "
                f"expected {rows} in [0, {rows - 1}]"
            )
        wrong_payload = connection.execute(
            "SELECT COUNT(*) FROM events WHERE payload != 'event from task ' || task"
        ).fetchone()[0]
        if wrong_payload:
            problems.append(f"{wrong_payload} rows have the wrong payload")
    finally:
        connection.close()
    return problems


#: The two modes: a label, the stem of the database's file name, the ingestion.
MODES: Final = (
    ("one per row", "one_per_row", ingest_one_per_row),
    ("batched", "batched", ingest_batched),
)


class SetupError(Exception):
    """The databases cannot be created where asked; the message is one line."""


def create_databases(directory: Path) -> list[Path]:
    """Create one new, empty database file per mode in ``directory``; never reuse one.

    The names are ``one_per_row.db`` and ``batched.db``, or, if either name is
    taken by anything (a file, a folder), ``one_per_row-2.db`` and
    ``batched-2.db``, and so on: the first number for which both are free.

    Raises:
        SetupError: ``directory`` is not a folder that can hold new files.
    """
    if directory.exists() and not directory.is_dir():
        raise SetupError(f"--dir {directory} is not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SetupError(f"--dir {directory}: cannot create it: {error.strerror}") from error
    number = 1
    while True:
        suffix = "" if number == 1 else f"-{number}"
        paths = [directory / f"{stem}{suffix}.db" for _, stem, _ in MODES]
        if not any(path.exists() or path.is_symlink() for path in paths):
            break
        number += 1
    created: list[Path] = []
    try:
        for path in paths:
            path.touch(exist_ok=False)  # an empty file is an empty SQLite database
            created.append(path)
    except OSError as error:
        for path in created:
            path.unlink()
        if isinstance(error, FileExistsError):  # taken since we looked: another run
            return create_databases(directory)
        raise SetupError(
            f"--dir {directory}: cannot create {path.name}: {error.strerror}"
        ) from error
    return paths


async def compare(
    paths: Sequence[Path], rows: int, tasks: int = DEFAULT_TASKS
) -> tuple[IngestResult, IngestResult]:
    """Run both ingestions, each on its own database file (one path per mode)."""
    results = []
    for path, (_, _, ingest) in zip(paths, MODES, strict=True):
        database = Database(path)
        try:
            results.append(await ingest(database, rows, tasks))
        finally:
            database.close()
    return results[0], results[1]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage and message.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; the exit status is 1 if a table is wrong, 2 for bad input."""
    parser = _Parser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--rows",
        type=int,
        default=2000,
        help="rows per mode, each inserted by its own task (default 2000)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="keep the database files in this folder, under new names "
        "(default: a temporary folder, removed at the end)",
    )
    parser.add_argument(
        "--tasks",
        type=int,
        default=DEFAULT_TASKS,
        help=f"tasks alive at once, each inserting one row (default {DEFAULT_TASKS:,})",
    )
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error(f"--rows must be >= 1, got {args.rows}")
    if args.tasks < 1:
        parser.error(f"--tasks must be >= 1, got {args.tasks}")

    with tempfile.TemporaryDirectory(prefix="sqlite_ingest_") as temporary:
        try:
            paths = create_databases(args.dir if args.dir is not None else Path(temporary))
        except SetupError as error:
            parser.error(str(error))
        single, batched = trio.run(compare, paths, args.rows, args.tasks)
        problems = {
            label: verify(path, args.rows) for path, (label, _, _) in zip(paths, MODES, strict=True)
        }

    print(
        f"one transaction per row: {single.rows} rows in {single.seconds:.2f} s "
        f"= {single.rows_per_second:,.0f} rows/s ({_count(single.transactions, 'transaction')})"
    )
    print(
        f"batched (executemany):   {batched.rows} rows in {batched.seconds:.2f} s "
        f"= {batched.rows_per_second:,.0f} rows/s ({_count(batched.transactions, 'transaction')}, "
        f"{batched.rows / batched.transactions:.1f} rows each)"
    )
    print(f"speed-up: {batched.rows_per_second / single.rows_per_second:.1f}x")
    if args.dir is not None:
        print(f"databases kept: {', '.join(str(path) for path in paths)}")
    failed = False
    for label, found in problems.items():
        for problem in found:
            print(f"verification FAILED ({label}): {problem}", file=sys.stderr)
            failed = True
    if not failed:
        print(f"verified: each table holds all {args.rows} rows, each exactly once")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
