"""Ingest into a real database: thousands of Trio tasks each insert one row into SQLite.

Run it with ``python examples/sqlite_ingest.py [--rows N] [--dir DIR]``.

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
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, final

import attrs
import trio

import trio_batch as tb

#: Rows per transaction at most, when batching.
MAX_BATCH: Final = 500

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


async def ingest_one_per_row(database: Database, rows: int) -> IngestResult:
    """``rows`` concurrent tasks, each committing its own row in its own transaction."""

    async def insert_one(task: int) -> None:
        await trio.to_thread.run_sync(database.insert_rows, [_row(task)])

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for task in range(rows):
            nursery.start_soon(insert_one, task)
    return IngestResult(rows, time.perf_counter() - started, transactions=rows)


async def ingest_batched(database: Database, rows: int) -> IngestResult:
    """``rows`` concurrent tasks, each submitting its row to a batcher.

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
    async with (
        tb.open_batcher(insert_batch, policy=tb.Immediate(), limits=limits) as batcher,
        trio.open_nursery() as nursery,
    ):
        for task in range(rows):
            nursery.start_soon(batcher.submit, "events", _row(task))
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


async def compare(directory: Path, rows: int) -> tuple[IngestResult, IngestResult]:
    """Run both ingestions, each on a fresh database file in ``directory``."""
    results = []
    for name, ingest in (("one_per_row.db", ingest_one_per_row), ("batched.db", ingest_batched)):
        path = directory / name
        path.unlink(missing_ok=True)
        database = Database(path)
        try:
            results.append(await ingest(database, rows))
        finally:
            database.close()
    return results[0], results[1]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; the exit status is 1 if a table is wrong."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=2000, help="rows (and tasks) per mode")
    parser.add_argument(
        "--dir", type=Path, help="where to put the database files (default: a temporary directory)"
    )
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error(f"--rows must be >= 1, got {args.rows}")

    with tempfile.TemporaryDirectory(prefix="sqlite_ingest_") as temporary:
        directory = args.dir if args.dir is not None else Path(temporary)
        directory.mkdir(parents=True, exist_ok=True)
        single, batched = trio.run(compare, directory, args.rows)
        problems = {
            name: verify(directory / filename, args.rows)
            for name, filename in (("one per row", "one_per_row.db"), ("batched", "batched.db"))
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
    failed = False
    for name, found in problems.items():
        for problem in found:
            print(f"verification FAILED ({name}): {problem}", file=sys.stderr)
            failed = True
    if not failed:
        print(f"verified: each table holds all {args.rows} rows, each exactly once")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
