"""examples/sqlite_ingest.py on a small size: every row lands exactly once, both ways.

Also: bad --dir values get one line and exit 2, existing databases are never
touched, and the number of live tasks is bounded whatever --rows is.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sqlite_ingest.py"


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the script on this checkout's trio_batch (not an installed copy)."""
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture(scope="module")
def ingest() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sqlite_ingest", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # attrs resolves the module's annotations through it
    spec.loader.exec_module(module)
    return module


async def test_both_modes_insert_every_row_exactly_once(ingest: ModuleType, tmp_path: Path) -> None:
    rows = 60
    paths = ingest.create_databases(tmp_path)
    assert [path.name for path in paths] == ["one_per_row.db", "batched.db"]
    single, batched = await ingest.compare(paths, rows)
    assert (single.rows, batched.rows) == (rows, rows)
    assert single.transactions == rows
    assert 1 <= batched.transactions < rows  # concurrent rows shared transactions
    for name in ("one_per_row.db", "batched.db"):
        assert ingest.verify(tmp_path / name, rows) == []
        connection = sqlite3.connect(tmp_path / name)
        try:
            tasks = sorted(task for (task,) in connection.execute("SELECT task FROM events"))
        finally:
            connection.close()
        assert tasks == list(range(rows))


def test_verify_notices_missing_and_duplicate_rows(ingest: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "check.db"
    database = ingest.Database(path)
    try:
        database.insert_rows([(0, "event from task 0"), (1, "event from task 1")])
        database.insert_rows([(1, "event from task 1"), (3, "wrong")])
    finally:
        database.close()
    problems = ingest.verify(path, 4)
    assert not any("rows instead of" in problem for problem in problems)  # 4 rows, as expected
    assert "task 1 appears 2 times" in problems
    assert any(problem.startswith("tasks present: 3 distinct") for problem in problems)
    assert "1 rows have the wrong payload" in problems
    assert ingest.verify(path, 3) != []


def test_the_script_reports_rates_and_the_speed_up(tmp_path: Path) -> None:
    result = run_example("--rows", "40", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^one transaction per row: 40 rows in [\d.]+ s = [\d,]+ rows/s", out, re.M)
    assert re.search(r"^batched \(executemany\): +40 rows in [\d.]+ s = [\d,]+ rows/s", out, re.M)
    assert re.search(r"^speed-up: [\d.]+x$", out, re.M)
    assert "verified: each table holds all 40 rows, each exactly once" in out
    assert f"databases kept: {tmp_path / 'one_per_row.db'}, {tmp_path / 'batched.db'}\n" in out
    assert {path.name for path in tmp_path.iterdir()} == {"one_per_row.db", "batched.db"}


def test_without_dir_nothing_is_kept() -> None:
    result = run_example("--rows", "5")
    assert result.returncode == 0, result.stderr
    assert "databases kept" not in result.stdout
    assert "verified: each table holds all 5 rows, each exactly once" in result.stdout


def test_existing_databases_are_never_touched(tmp_path: Path) -> None:
    mine = tmp_path / "one_per_row.db"
    connection = sqlite3.connect(mine)
    with connection:
        connection.execute("CREATE TABLE precious (value TEXT)")
        connection.execute("INSERT INTO precious VALUES ('keep me')")
    connection.close()
    before = mine.read_bytes()
    (tmp_path / "batched-2.db").mkdir()  # a folder where a database would go
    result = run_example("--rows", "10", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert mine.read_bytes() == before
    # The first free pair of names: "-2" is taken by the folder.
    kept = f"databases kept: {tmp_path / 'one_per_row-3.db'}, {tmp_path / 'batched-3.db'}\n"
    assert kept in result.stdout
    assert {path.name for path in tmp_path.iterdir()} == {
        "one_per_row.db",
        "batched-2.db",
        "one_per_row-3.db",
        "batched-3.db",
    }
    assert "verified: each table holds all 10 rows, each exactly once" in result.stdout


def test_dir_that_is_a_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("mine")
    result = run_example("--rows", "5", "--dir", str(not_a_folder))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"sqlite_ingest.py: error: --dir {not_a_folder} is not a folder (see --help)\n"
    )
    assert not_a_folder.read_text() == "mine"


def test_dir_that_cannot_be_created_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    inside_a_file = tmp_path / "notes.txt" / "databases"
    result = run_example("--rows", "5", "--dir", str(inside_a_file))
    assert result.returncode == 2
    assert result.stderr == (
        f"sqlite_ingest.py: error: --dir {inside_a_file}: cannot create it: "
        "Not a directory (see --help)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rows", "0"], "--rows must be >= 1, got 0"),
        (["--tasks", "0"], "--tasks must be >= 1, got 0"),
        (["--rows", "many"], "argument --rows: invalid int value: 'many'"),
    ],
)
def test_bad_numbers_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run_example(*args)
    assert result.returncode == 2
    assert result.stderr == f"sqlite_ingest.py: error: {message} (see --help)\n"


async def test_run_tasks_keeps_at_most_limit_alive(
    ingest: ModuleType, autojump_clock: trio.testing.MockClock
) -> None:
    alive = peak = 0
    done = []

    async def task(number: int) -> None:
        nonlocal alive, peak
        alive += 1
        peak = max(peak, alive)
        await trio.sleep(1)
        alive -= 1
        done.append(number)

    await ingest.run_tasks(20, 5, task)
    assert peak == 5
    assert trio.current_time() == 4  # 20 tasks, 5 at a time, 1 s each
    assert sorted(done) == list(range(20))


async def test_both_modes_bound_their_tasks(ingest: ModuleType, tmp_path: Path) -> None:
    # Each task has one row in flight, so with 4 tasks no transaction can
    # carry more than 4 rows, and no more than 4 inserts are under way at once.
    import threading

    in_flight = peak = 0
    lock = threading.Lock()
    sizes: list[int] = []

    class CountingDatabase(ingest.Database):  # type: ignore[misc,name-defined]
        def insert_rows(self, rows: list[tuple[int, str]]) -> None:
            nonlocal in_flight, peak
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
                sizes.append(len(rows))
            try:
                super().insert_rows(rows)
            finally:
                with lock:
                    in_flight -= 1

    for name, mode in (
        ("single.db", ingest.ingest_one_per_row),
        ("batched.db", ingest.ingest_batched),
    ):
        database = CountingDatabase(tmp_path / name)
        try:
            result = await mode(database, 30, 4)
        finally:
            database.close()
        assert result.rows == 30
        assert ingest.verify(tmp_path / name, 30) == []
    assert 1 <= peak <= 4
    assert max(sizes) <= 4
    assert sum(sizes) == 60
