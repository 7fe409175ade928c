"""The README's promises about set-up and CI hold."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Try it", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1
    return [
        line.strip() for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")
    ]


def test_readme_has_exactly_two_setup_commands() -> None:
    assert len(readme_commands()) == 2


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = readme_commands()[1]
    ci_script = (ROOT / ".ci" / "run").read_text()
    ci_commands = [
        line.strip()
        for line in ci_script.splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert ci_commands == [test_command]


def test_readme_example_runs() -> None:
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text()
    assert (ROOT / "docs" / "_static" / "latency_cdf.png").exists()
    example = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)[0]
    result = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "queued_items=0" in result.stdout


def test_quickstart_runs() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"1000 requests \(0 rejected\) -> \d+ queries", result.stdout)
