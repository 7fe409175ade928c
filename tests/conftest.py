"""Fixtures and hooks for the tests (none so far beyond pytest-trio's).

Helpers (fakes, the harness, shared values) live in ``tutil.py``, as Trio keeps
its own in ``_core/_tests/tutil.py``: import them with ``from tutil import ...``.
"""
