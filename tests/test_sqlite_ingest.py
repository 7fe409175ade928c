"""examples/sqlite_ingest.py on a small size: every row lands exactly once, both ways."""

from __future__ import annotations

import importlib.util
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sqlite_ingest.py"


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
    single, batched = await ingest.compare(tmp_path, rows)
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
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--rows", "40", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^one transaction per row: 40 rows in [\d.]+ s = [\d,]+ rows/s", out, re.M)
    assert re.search(r"^batched \(executemany\): +40 rows in [\d.]+ s = [\d,]+ rows/s", out, re.M)
    assert re.search(r"^speed-up: [\d.]+x$", out, re.M)
    assert "verified: each table holds all 40 rows, each exactly once" in out
    assert {path.name for path in tmp_path.iterdir()} == {"one_per_row.db", "batched.db"}


def test_rows_must_be_positive() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--rows", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--rows must be >= 1" in result.stderr
