"""Development sessions. ``python -m nox`` runs the default ones (what CI runs)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "types", "docs"]
nox.options.error_on_missing_interpreters = True

# Pinned so a new release of a checker cannot break a build that did not change.
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"
PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (virtual time; property tests use the 'ci' profile)."""
    session.install("-e", ".[test,sim,prometheus,opentelemetry,bench,web]", "opentelemetry-sdk")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def types(session: nox.Session) -> None:
    """mypy --strict on the package, the tests, the examples and this file."""
    session.install(
        "-e", ".[test,sim,prometheus,opentelemetry,web]", "opentelemetry-sdk", MYPY, "nox"
    )
    session.run("mypy", "--strict", "trio_batch", "tests", "examples", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the Sphinx site with warnings as errors (nitpicky)."""
    session.install("-e", ".[docs,sim,prometheus,opentelemetry]")
    session.run(
        "sphinx-build", "-n", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html"
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks: trio_batch vs a hand-written floor vs aiodataloader (not part of CI)."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)
