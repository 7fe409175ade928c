"""docs/policies.md: its tables are what the script on that page prints, every time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "policies.md"


def section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[str]:
    """The body rows of the tables (each begins with a policy in backquotes)."""
    return [line for line in text.splitlines() if line.startswith("| `")]


def test_the_tables_are_what_the_script_prints_in_every_run() -> None:
    text = PAGE.read_text()
    documented = table_rows(section(text, "The same load under each policy"))
    assert len(documented) == 12  # two tables of four policies, and the lone request
    (script,) = re.findall(
        r"```python\n(.*?)```", section(text, "The script behind the tables"), flags=re.DOTALL
    )
    # Separate processes: each seeds Trio's scheduler differently, so a table
    # that depended on the order of simultaneous wake-ups would differ.
    for _ in range(3):
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert result.returncode == 0, result.stderr
        assert table_rows(result.stdout) == documented
