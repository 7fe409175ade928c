"""The README's promises about set-up, CI and its example hold."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_python(*args: str) -> subprocess.CompletedProcess[str]:
    """Run this interpreter on this checkout's trio_batch (not an installed copy)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Try it", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1
    return [
        line.strip() for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")
    ]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Example", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1
    return str(blocks[0])


def test_readme_has_exactly_two_setup_commands() -> None:
    assert len(readme_commands()) == 2


def test_setup_commands_need_only_python3_and_keep_to_their_virtual_environment() -> None:
    # No `python` command, no system pip (PEP 668): every step is either
    # `python3 -m venv DIR` or runs DIR/bin/python.
    for command in readme_commands():
        steps = [step.strip() for step in command.split("&&")]
        first = re.fullmatch(r"python3 -m venv (\S+)", steps[0])
        assert first is not None, command
        venv = first.group(1)
        for step in steps[1:]:
            assert step.startswith(f"{venv}/bin/python -m "), step
        ignored = (ROOT / ".gitignore").read_text().splitlines()
        assert f"{venv}/" in ignored or venv in ignored


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = readme_commands()[1]
    ci_script = (ROOT / ".ci" / "run").read_text()
    ci_commands = [
        line.strip()
        for line in ci_script.splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert ci_commands == [test_command]


def test_the_demo_plot_shown_in_the_readme_exists() -> None:
    assert (ROOT / "docs" / "_static" / "latency_cdf.png").exists()


@pytest.mark.parametrize("users", [2_000, 20_000])
def test_readme_example_runs_without_a_traceback(users: int) -> None:
    example = readme_example()
    assert "\nUSERS = 2_000\n" in example
    result = run_python("-c", example.replace("\nUSERS = 2_000\n", f"\nUSERS = {users}\n"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    found = re.fullmatch(
        rf"{users} calls -> (\d+) calls of fetch_users \(batch sizes (\d+) to (\d+)\)\n",
        result.stdout,
    )
    assert found is not None, result.stdout
    calls, smallest, largest = map(int, found.groups())
    assert 1 <= smallest <= largest <= 100
    assert users / 100 <= calls <= users / 10  # batched, within max_batch_size


def test_quickstart_runs() -> None:
    result = run_python(str(ROOT / "examples" / "quickstart.py"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    found = re.search(
        r"^2000 requests -> (\d+) queries \(ids per query: min (\d+), max (\d+), mean [\d.]+\) "
        r"in \d+ ms$",
        result.stdout,
        flags=re.MULTILINE,
    )
    assert found is not None, result.stdout
    queries, smallest, largest = map(int, found.groups())
    assert 1 <= smallest <= largest <= 100
    assert 20 <= queries <= 200
