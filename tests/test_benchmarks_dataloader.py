"""Smoke test of ``benchmarks/_dataloader.py`` at a tiny size, so it cannot rot.

Nothing here checks speed: it checks that both workloads run, count right and
report positive figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks._dataloader import main, run_duplicates, run_submit_many  # noqa: E402


@pytest.mark.parametrize("noop", [False, True])
def test_duplicates_workload_runs(noop: bool) -> None:
    result = run_duplicates(clients=20, rounds=2, batch=5, repeat=1, noop=noop)
    assert result.calls == 40
    assert result.baseline_us > 0
    assert result.contender_us > 0
    assert result.speedup > 0
    assert result.lines()[0].startswith("(f")


def test_submit_many_workload_runs() -> None:
    result = run_submit_many(items=50, batch=10, repeat=1, loops=2)
    assert result.calls == 50
    assert result.speedup > 0
    assert "target >= 5x" in result.lines()[-1]


def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "(f)" in out
    assert "(g)" in out
