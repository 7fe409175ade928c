"""Reading scenarios: TOML files, built-ins, ``--set`` overrides, and back to data.

Validation happens at the boundary, in two layers. This module checks the
shape of the TOML (unknown fields, missing fields, tables where tables belong)
and builds the values of ``_scenario``, whose validators check types and ranges.
Every message names the field by its dotted path
(``arrivals.rate must be > 0, got -1.0``) and fits on one line, so the CLI prints
it as it is.

Overrides work on the parsed TOML, before validation, so a flag and a file are
checked by the same code and report errors the same way.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import attrs

import trio_batch as tb

from ._scenario import Scenario, parse_policy, policy_label

__all__ = [
    "ScenarioError",
    "apply_override",
    "builtin_scenarios",
    "load_scenario",
    "read_scenario_data",
    "remove_field",
    "scenario_from_data",
    "scenario_to_data",
    "set_field",
]

T = TypeVar("T")


class ScenarioError(ValueError):
    """A scenario could not be read or is invalid; the message names the field."""


_LIMIT_FIELDS: Final = (
    "max_batch_size",
    "max_key_concurrency",
    "max_batch_queue_size",
    "overflow",
    "max_batch_cost",
    "oversize",
)


def _build(cls: type[T], data: object, path: str) -> T:
    """Build attrs class ``cls`` from a TOML table, naming fields by dotted ``path``."""
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{path} must be a table, got {data!r}")
    prefix = f"{path}." if path else ""
    fields = attrs.fields_dict(cls)  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        field = fields.get(name)
        if field is None:
            expected = ", ".join(fields)
            raise ScenarioError(f"unknown field {prefix}{name} (expected one of: {expected})")
        table = field.metadata.get("table")
        kwargs[name] = _build(table, value, prefix + name) if table is not None else value
    for name, field in fields.items():
        if field.default is attrs.NOTHING and name not in kwargs:
            raise ScenarioError(f"{prefix}{name} is required")
    try:
        return cls(**kwargs)
    except ScenarioError:
        raise
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{prefix}{exc}") from None


def _build_limits(data: object) -> tb.Limits:
    if not isinstance(data, Mapping):
        raise ScenarioError(f"limits must be a table, got {data!r}")
    for name in data:
        if name not in _LIMIT_FIELDS:
            expected = ", ".join(_LIMIT_FIELDS)
            raise ScenarioError(f"unknown field limits.{name} (expected one of: {expected})")
    kwargs = dict(data)
    for name, enum_type in (("overflow", tb.Overflow), ("oversize", tb.Oversize)):
        if name in kwargs:
            value = kwargs[name]
            choices = {mode.value: mode for mode in enum_type}
            if value not in choices:
                allowed = ", ".join(repr(choice) for choice in choices)
                raise ScenarioError(f"limits.{name} must be one of {allowed}, got {value!r}")
            kwargs[name] = choices[value]
    try:
        return tb.Limits(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"limits.{exc}") from None


def _build_policies(data: object) -> tuple[tb.Policy, ...]:
    if not isinstance(data, list) or not data:
        raise ScenarioError(f"policies must be a non-empty list of policy specs, got {data!r}")
    policies = []
    for index, spec in enumerate(data):
        if not isinstance(spec, str):
            raise ScenarioError(f"policies[{index}] must be a string like 'size', got {spec!r}")
        try:
            policies.append(parse_policy(spec))
        except ValueError as exc:
            raise ScenarioError(f"policies[{index}]: {exc}") from None
    return tuple(policies)


def scenario_from_data(data: Mapping[str, object], *, default_name: str = "custom") -> Scenario:
    """Build a :class:`Scenario` from parsed TOML (a dict of tables).

    Raises:
        ScenarioError: a field is unknown, missing, of the wrong type or out of
            range; the message names it.
    """
    if "policies" not in data:
        raise ScenarioError("policies is required")
    table = dict(data)
    special: dict[str, object] = {"policies": _build_policies(table.pop("policies"))}
    if "limits" in table:
        special["limits"] = _build_limits(table.pop("limits"))
    table.setdefault("name", default_name)

    scenario_fields = attrs.fields_dict(Scenario)
    for name in table:
        if name not in scenario_fields:
            raise ScenarioError(
                f"unknown field {name} (expected one of: {', '.join(scenario_fields)})"
            )
    kwargs: dict[str, Any] = dict(special)
    for name, value in table.items():
        nested = scenario_fields[name].metadata.get("table")
        kwargs[name] = _build(nested, value, name) if nested is not None else value
    if "arrivals" not in kwargs:
        raise ScenarioError("arrivals is required (a table with at least rate)")
    try:
        return Scenario(**kwargs)
    except ScenarioError:
        raise
    except (TypeError, ValueError) as exc:
        raise ScenarioError(str(exc)) from None


def _scenario_dir() -> Any:
    return resources.files("trio_batch.sim").joinpath("scenarios")


def builtin_scenarios() -> dict[str, str]:
    """The built-in scenarios: name -> description."""
    found: dict[str, str] = {}
    for entry in sorted(_scenario_dir().iterdir(), key=lambda entry: entry.name):
        if entry.name.endswith(".toml"):
            name = entry.name.removesuffix(".toml")
            data = tomllib.loads(entry.read_text(encoding="utf-8"))
            found[name] = str(data.get("description", ""))
    return found


def read_scenario_data(name_or_path: str) -> tuple[dict[str, Any], str]:
    """Read a built-in scenario by name, or a TOML file by path, as a dict.

    An existing *file* is read as such; otherwise a built-in's name is the
    built-in (a folder of that name, such as a ``--plot`` output, does not
    shadow it); otherwise anything ending in ``.toml`` or containing a path
    separator is a path.

    Returns:
        The parsed TOML and the scenario's default name (the built-in's name or
        the file's stem).

    Raises:
        ScenarioError: no such scenario, the file cannot be read, or it is not
            valid TOML.
    """
    path = Path(name_or_path)
    builtin = _scenario_dir().joinpath(f"{name_or_path}.toml")
    looks_like_a_path = path.suffix == ".toml" or "/" in name_or_path or os.sep in name_or_path
    try:
        if not path.is_file() and not looks_like_a_path and builtin.is_file():
            text = builtin.read_text(encoding="utf-8")
            where = f"built-in scenario {name_or_path!r}"
        elif path.is_dir():
            raise ScenarioError(f"scenario {name_or_path!r} is a directory, not a TOML file")
        elif path.is_file() or looks_like_a_path:
            text = path.read_text(encoding="utf-8")
            where = str(path)
        else:
            known = ", ".join(builtin_scenarios())
            raise ScenarioError(
                f"unknown scenario {name_or_path!r}: not a built-in ({known}) and not a file"
            )
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {name_or_path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"cannot read scenario {name_or_path!r}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{where}: malformed TOML: {exc}") from None
    return data, path.stem


def set_field(data: dict[str, Any], path: str, value: object) -> None:
    """Set the field at dotted ``path`` of scenario data, creating tables on the way.

    Setting ``items`` drops ``duration`` and vice versa, since a scenario has
    exactly one of them.

    Raises:
        ScenarioError: ``path`` is empty or runs through a value that is not a table.
    """
    parts = path.split(".")
    if any(not part.strip() for part in parts):
        raise ScenarioError(f"bad field name {path!r}")
    *tables, leaf = (part.strip() for part in parts)
    target = data
    for depth, part in enumerate(tables):
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise ScenarioError(f"{'.'.join(tables[: depth + 1])} is not a table")
        target = child
    target[leaf] = value
    if not tables and leaf in ("items", "duration"):
        data.pop("duration" if leaf == "items" else "items", None)


def remove_field(data: dict[str, Any], path: str) -> None:
    """Remove the field at dotted ``path`` of scenario data, if it is there."""
    *tables, leaf = (part.strip() for part in path.split("."))
    target: object = data
    for part in tables:
        target = target.get(part) if isinstance(target, dict) else None
    if isinstance(target, dict):
        target.pop(leaf, None)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``FIELD=VALUE`` (the CLI's ``--set``) to scenario data in place.

    ``FIELD`` is a dotted path (``arrivals.rate``, ``pool.size``); ``VALUE`` is
    a TOML value (``3000``, ``0.5``, ``["size"]``, ``"zipf"``), and anything
    that is not valid TOML is taken as a string (so ``keys.distribution=zipf``
    works). An empty ``VALUE`` removes the field (``process.sigma=``), so the
    default applies. See :func:`set_field`.

    Raises:
        ScenarioError: the assignment is not ``FIELD=VALUE``.
    """
    path, sep, raw = assignment.partition("=")
    if not sep or not path.strip():
        raise ScenarioError(f"--set expects FIELD=VALUE, got {assignment!r}")
    if not raw.strip():
        remove_field(data, path.strip())
        return
    try:
        value: object = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    set_field(data, path.strip(), value)


def load_scenario(name_or_path: str, overrides: Sequence[str] = ()) -> Scenario:
    """Load a built-in scenario or a TOML file, apply ``--set`` overrides, validate.

    Raises:
        ScenarioError: see :func:`read_scenario_data`, :func:`apply_override`
            and :func:`scenario_from_data`.
    """
    data, default_name = read_scenario_data(name_or_path)
    for assignment in overrides:
        apply_override(data, assignment)
    return scenario_from_data(data, default_name=default_name)


def scenario_to_data(scenario: Scenario) -> dict[str, object]:
    """The scenario as plain data (what a TOML file would hold, defaults resolved)."""

    def table(value: object) -> object:
        if value is None:
            return None
        return cast(dict[str, object], attrs.asdict(value, recurse=True))  # type: ignore[arg-type]

    return {
        "name": scenario.name,
        "description": scenario.description,
        "seed": scenario.seed,
        "items": scenario.items,
        "duration": scenario.duration,
        "sample_interval": scenario.resolved_sample_interval,
        "policies": [policy_label(policy) for policy in scenario.policies],
        "keys": table(scenario.keys),
        "arrivals": table(scenario.arrivals),
        "costs": table(scenario.costs),
        "process": table(scenario.process),
        "pool": table(scenario.pool),
        "limits": {
            "max_batch_size": scenario.limits.max_batch_size,
            "max_key_concurrency": scenario.limits.max_key_concurrency,
            "max_batch_queue_size": scenario.limits.max_batch_queue_size,
            "overflow": scenario.limits.overflow.value,
            "max_batch_cost": scenario.limits.max_batch_cost,
            "oversize": scenario.limits.oversize.value,
        },
        "timeouts": table(scenario.timeouts),
    }
