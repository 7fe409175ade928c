"""Development sessions. ``python -m nox`` runs the default ones (what CI runs).

The default sessions (``tests``, ``lint``, ``types``, ``docs``) run on the
interpreter that runs nox, whichever supported Python that is, so the README's
command works wherever a Python >= 3.11 does. ``tests_all`` runs the suite on
every supported Python (the classifiers in ``pyproject.toml``) that is
installed, and skips the others with a message.

The checkers' pins live in one place: the ``dev`` extra of ``pyproject.toml``.
The sessions read them from there.
"""

from __future__ import annotations

import re

import nox

PYPROJECT = nox.project.load_toml("pyproject.toml")
#: Every Python the classifiers name (3.11, 3.12, 3.13).
SUPPORTED_PYTHONS = nox.project.python_versions(PYPROJECT)

nox.options.sessions = ["tests", "lint", "types", "docs"]
# virtualenv ships with nox, so every session works without uv or conda.
nox.options.default_venv_backend = "virtualenv"
# tests_all skips a Python that is not installed (also under CI) and never downloads one.
nox.options.error_on_missing_interpreters = False
nox.options.download_python = "never"
# nox looks for uv before creating any environment, whatever the backend, and
# logs "uv binary not found." where there is none: not news here, so not shown.
nox.logger.logger.addFilter(lambda record: record.getMessage() != "uv binary not found.")


def dev_requirement(name: str) -> str:
    """The requirement for ``name`` in the ``dev`` extra, e.g. ``"ruff==0.17.6"``."""
    for requirement in PYPROJECT["project"]["optional-dependencies"]["dev"]:
        if re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0] == name:
            return str(requirement)
    raise LookupError(f"pyproject.toml: the dev extra has no requirement for {name}")


RUFF = dev_requirement("ruff")
MYPY = dev_requirement("mypy")
NOX = dev_requirement("nox")


def _run_tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite on this Python (virtual time; property tests use the 'ci' profile)."""
    _run_tests(session)


@nox.session(python=SUPPORTED_PYTHONS)
def tests_all(session: nox.Session) -> None:
    """Run the test suite on each supported Python that is installed."""
    _run_tests(session)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def types(session: nox.Session) -> None:
    """mypy --strict on the package, the tests, the examples, the benchmarks and this file."""
    session.install("-e", ".[test]", MYPY, NOX)
    session.run("mypy", "--strict", "trio_batch", "tests", "examples", "benchmarks", "noxfile.py")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx site with warnings as errors (nitpicky)."""
    session.install("-e", ".[docs]")
    session.run(
        "sphinx-build", "-n", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html"
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: trio_batch vs a hand-written floor vs aiodataloader (not part of CI)."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)
