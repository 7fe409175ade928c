"""The command line: reproducible output, one-line errors, plots, no hard matplotlib need."""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from trio_batch.sim import PLOT_FILES, SimulationResult
from trio_batch.sim.__main__ import main
from trio_batch.sim._progress import progress_bar
from trio_batch.sim._report import TABLE_WIDTH

TINY = """
name = "tiny-cli"
seed = 9
items = 300
policies = ["immediate", "size", "duration:0.003", "balanced:3"]

[keys]
distribution = "uniform"
count = 4

[arrivals]
rate = 1500
burst = { every = 0.1, length = 0.02, factor = 4 }

[process]
per_batch = 0.003
per_item = 0.0002
jitter = "lognormal"
sigma = 0.4
error_rate = 0.03

[pool]
size = 2
connect = 0.001

[limits]
max_batch_size = 8
max_key_concurrency = 2
max_batch_queue_size = 2

[timeouts]
fraction = 0.2
after = 0.015
"""


@pytest.fixture
def tiny_toml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_batch.sim", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_json_is_identical_in_process_and_across_processes(
    tiny_toml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--scenario", str(tiny_toml), "--json", "--quiet"]) == 0
    in_process = capsys.readouterr().out
    first = run_cli("--scenario", str(tiny_toml), "--json", "-q", env={"PYTHONHASHSEED": "1"})
    second = run_cli("--scenario", str(tiny_toml), "--json", "-q", env={"PYTHONHASHSEED": "2"})
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout == in_process
    data = json.loads(in_process)
    assert [r["policy"] for r in data["results"]] == [
        "immediate",
        "size",
        "duration:0.003",
        "balanced:3",
    ]
    for r in data["results"]:
        outcomes = r["ok"] + r["rejected"] + r["failed"] + r["withdrawn"] + r["late"]
        assert outcomes == r["items"] == 300
        assert r["closed"] == 0
        assert r["anomalies"] == []


def test_table_has_a_row_per_policy_and_flags_override(
    tiny_toml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            "-s",
            str(tiny_toml),
            "-q",
            "--items",
            "120",
            "--seed",
            "3",
            "--rate",
            "900",
            "--policy",
            "size",
            "--policy",
            "duration:0.002:reject",
            "--set",
            "limits.max_batch_size=4",
            "--wide",
        ]
    )
    out, err = capsys.readouterr()
    assert status == 0
    assert err == ""  # --quiet: no timing line
    lines = out.splitlines()
    assert lines[0] == "scenario tiny-cli (seed 3)"
    assert "Poisson 900/s" in lines[1]
    assert "120 items" in lines[1]
    assert "limits: batch 4," in out
    header = next(line for line in lines if line.startswith("policy"))
    for column in ("items/s", "p50 ms", "p99 ms", "max ms", "fill", "batches", "rejected"):
        assert column in header
    rows = [line.split() for line in lines if line.startswith(("size", "duration"))]
    assert [row[0] for row in rows] == ["size", "duration:0.002:reject"]
    assert all(row[1] == "120" for row in rows)


def test_timing_goes_to_stderr_unless_quiet(
    tiny_toml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-s", str(tiny_toml), "--items", "50", "--policy", "immediate"]) == 0
    out, err = capsys.readouterr()
    assert "wall time" in err
    assert "wall time" not in out


BAD_INPUTS = [
    (["--rate", "-1"], "arrivals.rate must be > 0, got -1.0"),
    (["--policy", "fastest"], "policies[0]: unknown policy 'fastest'"),
    (["--set", "arrivals.rate="], "arrivals.rate is required"),
    (["--set", "keys.count=zero"], "keys.count must be an integer, got 'zero'"),
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--scenario", "no-such-scenario"], "unknown scenario 'no-such-scenario'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_and_status_2(
    args: list[str], message: str, tiny_toml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = [] if "--scenario" in args else ["--scenario", str(tiny_toml)]
    assert main([*scenario, *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("trio-batch-sim: error: ")
    assert message in err


def test_malformed_toml_in_a_subprocess_has_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("seed = 1\npolicies = [\n")
    result = run_cli("--scenario", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "broken.toml: malformed TOML" in result.stderr


def test_plots_are_valid_pngs(tiny_toml: Path, tmp_path: Path) -> None:
    from matplotlib.image import imread

    directory = tmp_path / "plots" / "nested"
    assert main(["-s", str(tiny_toml), "-q", "--plot", str(directory)]) == 0
    assert sorted(path.name for path in directory.iterdir()) == sorted(PLOT_FILES)
    for name in PLOT_FILES:
        path = directory / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image: Any = imread(path)
        height, width = image.shape[:2]
        assert width >= 800
        assert height >= 400


def test_plots_cope_with_a_run_without_outputs(tmp_path: Path, tiny_toml: Path) -> None:
    from trio_batch.sim import load_scenario, run_scenario, write_plots

    result = run_scenario(load_scenario(str(tiny_toml), ["items=", "duration=1e-6"]))
    assert result.results[0].items == 0
    paths = write_plots(result, tmp_path)
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in paths)


def test_plot_without_matplotlib_says_what_to_install(
    tiny_toml: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert main(["-s", str(tiny_toml), "--plot", str(tmp_path / "plots")]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # it failed before running anything
    assert err == (
        "trio-batch-sim: error: --plot needs matplotlib: pip install 'trio_batch[sim]'\n"
    )
    assert not (tmp_path / "plots").exists()


def test_the_simulator_runs_without_matplotlib(tiny_toml: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "import trio_batch.sim\n"
        "from trio_batch.sim.__main__ import main\n"
        f"status = main(['-s', {str(tiny_toml)!r}, '-q', '--items', '40'])\n"
        "assert sys.modules['matplotlib'] is None\n"
        "assert not any(name.startswith('matplotlib.') for name in sys.modules)\n"
        "raise SystemExit(status)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "scenario tiny-cli" in result.stdout


def test_list_shows_the_builtin_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"default", "web-db", "burst", "ml-inference"} <= set(names)


def test_the_console_script_is_main() -> None:
    (script,) = [
        entry
        for entry in importlib.metadata.entry_points(group="console_scripts")
        if entry.name == "trio-batch-sim"
    ]
    assert script.value == "trio_batch.sim.__main__:main"
    assert script.load() is main


def test_a_broken_guarantee_is_reported_with_status_1(
    tiny_toml: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trio_batch.sim import run_scenario as real_run

    def run_with_anomaly(*args: Any, **kwargs: Any) -> SimulationResult:
        result = real_run(*args, **kwargs)
        broken = attrs.evolve(result.results[0], anomalies=("a caller never got an outcome",))
        return attrs.evolve(result, results=(broken, *result.results[1:]))

    monkeypatch.setattr("trio_batch.sim.__main__.run_scenario", run_with_anomaly)
    assert main(["-s", str(tiny_toml), "-q", "--items", "30", "--policy", "size"]) == 1
    out, err = capsys.readouterr()
    assert "ANOMALY (size): a caller never got an outcome" in out
    assert "library guarantee broken (size)" in err


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_on_a_terminal_and_erases_itself() -> None:
    pytest.importorskip("tqdm")
    stream = FakeTerminal()
    with progress_bar(stream, quiet=False, delay=0, interval=0) as report:
        report(0, 0, "drawing the workload")
        report(50, 100, "size (1/2)")
        drawn = stream.getvalue()
        assert "size (1/2)" in drawn
        assert "50%" in drawn
    assert stream.getvalue().endswith("\r")  # leave=False: the line is cleared


@pytest.mark.parametrize(("terminal", "quiet"), [(True, True), (False, False)])
def test_progress_bar_is_off_when_quiet_or_not_a_terminal(terminal: bool, quiet: bool) -> None:
    stream = FakeTerminal() if terminal else io.StringIO()
    with progress_bar(stream, quiet=quiet, delay=0) as report:
        report(1, 2, "x")
    assert stream.getvalue() == ""


def test_the_simulator_runs_without_tqdm(tiny_toml: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['tqdm'] = None\n"
        "from trio_batch.sim.__main__ import main\n"
        f"raise SystemExit(main(['-s', {str(tiny_toml)!r}, '--items', '40']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "scenario tiny-cli" in result.stdout


# -- the table fits 100 columns ---------------------------------------------------------


def test_the_table_fits_100_columns_unless_wide(
    tiny_toml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["-s", str(tiny_toml), "-q", "--items", "60", "--policy", "immediate"]
    args += [
        "--policy",
        "duration:0.005:reject:margin=0.002",
        "--set",
        "description='" + "x" * 150 + "'",
    ]
    assert main(args) == 0
    narrow = capsys.readouterr().out
    assert TABLE_WIDTH == 100
    assert max(len(line) for line in narrow.splitlines()) <= 100
    header = next(line for line in narrow.splitlines() if line.startswith("policy"))
    assert header.split()[:4] == ["policy", "ok", "items/s", "p50"]
    assert "acquired" not in header
    assert "(--wide shows them)" in narrow
    assert main([*args, "--wide"]) == 0
    wide = capsys.readouterr().out
    header = next(line for line in wide.splitlines() if line.startswith("policy"))
    for column in ("items", "p90 ms", "max ms", "fill", "batches", "failed", "late", "acquired"):
        assert column in header
    assert max(len(line) for line in wide.splitlines()) > 100
    assert "--wide shows them" not in wide


# -- checked before anything runs: sizes, plot targets, scenario names --------------------

SIZE_GUARDS = [
    (["--items", "1000000000"], "items must be <= 2000000 (every latency is kept in memory)"),
    (["--duration", "1e9"], "arrivals; at most 2,000,000 fit (every latency is kept in memory)"),
    (["--set", "keys.count=1000000000"], "keys.count must be <= 1000000"),
    (["--set", "sample_interval=1e-9"], "sample_interval must be >= "),
]


@pytest.mark.parametrize(("args", "message"), SIZE_GUARDS)
def test_sizes_that_cannot_fit_are_refused_at_once(
    args: list[str], message: str, tiny_toml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-s", str(tiny_toml), *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert message in err


def test_a_huge_max_batch_size_runs_and_plots(tiny_toml: Path, tmp_path: Path) -> None:
    directory = tmp_path / "plots"
    args = ["-s", str(tiny_toml), "-q", "--items", "200", "--plot", str(directory)]
    assert main([*args, "--set", "limits.max_batch_size=1000000000000000000000"]) == 0
    assert sorted(path.name for path in directory.iterdir()) == sorted(PLOT_FILES)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("file", "exists and is not a directory"),
        ("file/plots", "is not a directory"),
    ],
)
def test_plot_targets_are_checked_before_the_run(
    target: str, message: str, tiny_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("not a folder")
    assert main(["-s", str(tiny_toml), "--plot", str(tmp_path / target)]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing ran
    assert err.startswith(f"trio-batch-sim: error: --plot {tmp_path / target}: ")
    assert err.count("\n") == 1
    assert message in err


def test_an_unwritable_plot_target_is_refused(
    tiny_toml: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:
        # Root may write anywhere, so permissions cannot lock a folder: the
        # operating system's answer for it is given instead (CI runs as root).
        real_access = os.access

        def access(path: os.PathLike[str] | str, mode: int) -> bool:
            if Path(path) == locked and mode & os.W_OK:
                return False
            return real_access(path, mode)

        monkeypatch.setattr(os, "access", access)
    assert main(["-s", str(tiny_toml), "--plot", str(locked / "plots")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"cannot create {locked / 'plots'}: {locked} is not writable" in err


def test_a_folder_never_shadows_a_builtin_scenario(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "burst").mkdir()  # as `--plot burst` leaves behind
    (tmp_path / "mine").mkdir()
    assert main(["-s", "burst", "-q", "--items", "30", "--policy", "size"]) == 0
    assert capsys.readouterr().out.startswith("scenario burst (seed 3)")
    for name in ("mine", "./burst"):
        assert main(["-s", name, "-q"]) == 2
        assert f"scenario {name!r} is a directory, not a TOML file" in capsys.readouterr().err
    # An existing *file* is a file, whatever its name.
    (tmp_path / "web-db").write_text(TINY)
    assert main(["-s", "web-db", "-q", "--items", "30"]) == 0
    assert capsys.readouterr().out.startswith("scenario tiny-cli")


# -- Ctrl-C ------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and select() on pipes")
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_prints_interrupted_and_exits_130(jobs: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "trio_batch.sim", "--duration", "60", "--jobs", jobs],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stderr is not None
            # The first line says the run has started; wait for it, boundedly.
            ready, _, _ = select.select([process.stderr], [], [], 60)
            assert ready, "the simulator did not start within 60 s"
            first = process.stderr.readline()
            assert first.startswith("simulating scenario default: 5 policies")
            time.sleep(0.5)  # into the run (it lasts much longer than this)
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 130
    assert err == "trio-batch-sim: interrupted\n"
    assert out == ""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_workers_exit_when_their_parent_is_killed() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "trio_batch.sim", "--duration", "60", "--jobs", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as process:
        children_file = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        deadline = time.monotonic() + 60
        workers: set[int] = set()
        while time.monotonic() < deadline:  # the pool's workers (and a resource tracker)
            workers = {int(pid) for pid in children_file.read_text().split()}
            if len(workers) >= 3:
                break
            time.sleep(0.1)
        assert len(workers) >= 3, "the worker processes did not start within 60 s"
        process.kill()  # no chance to clean up
        process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.1)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    for pid in alive:  # do not leave them running if the test fails
        os.kill(pid, signal.SIGKILL)
    assert alive == []


def test_an_interrupt_inside_the_trio_run_is_interrupted_not_a_traceback(
    tiny_toml: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Deterministic counterpart of the SIGINT test: KeyboardInterrupt raised in a
    # task leaves trio.run wrapped in exception groups, which main unwraps.
    async def interrupted(self: Any, key: int, inputs: list[int]) -> list[int]:
        raise KeyboardInterrupt

    monkeypatch.setattr("trio_batch.sim._run._Simulation._process", interrupted)
    from trio_batch.sim import load_scenario, run_scenario

    with pytest.RaisesGroup(KeyboardInterrupt, flatten_subgroups=True):
        run_scenario(load_scenario(str(tiny_toml), ["items=20", "pool="]))
    assert main(["-s", str(tiny_toml), "--items", "20", "--set", "pool="]) == 130
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("trio-batch-sim: interrupted\n")
    assert "Traceback" not in err
