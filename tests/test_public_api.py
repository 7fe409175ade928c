"""The public surface: names, modules, finality, typing marker."""

from __future__ import annotations

import enum
import inspect
from pathlib import Path

import pytest

import trio_batch as tb


def public_objects() -> list[tuple[str, object]]:
    return [(name, getattr(tb, name)) for name in tb.__all__]


def test_all_names_exist_and_say_trio_batch() -> None:
    for name, obj in public_objects():
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == "trio_batch", name


@pytest.mark.parametrize(
    "cls",
    [
        obj
        for _, obj in public_objects()
        if inspect.isclass(obj)
        and not issubclass(obj, BaseException | enum.Enum)
        and not getattr(obj, "_is_protocol", False)
    ],
)
def test_public_classes_are_final(cls: type) -> None:
    # As in Trio: runtime classes and values are not meant to be subclassed.
    # (Exceptions form a family; Observer is a Protocol meant to be implemented.)
    assert getattr(cls, "__final__", False), f"{cls.__name__} should be @final"


def test_spec_names_are_exported() -> None:
    spec_names = {
        "open_batcher",
        "Batcher",
        "Limits",
        "Immediate",
        "Size",
        "Duration",
        "OnFull",
        "Balanced",
        "BatchError",
        "Rejected",
        "BatchFailed",
        "ResourceAcquisitionFailed",
        "ProcessorContractError",
        "BatcherClosed",
    }
    assert spec_names <= set(tb.__all__)


def test_error_family() -> None:
    for name in [
        "Rejected",
        "BatchFailed",
        "ResourceAcquisitionFailed",
        "ProcessorContractError",
        "BatcherClosed",
    ]:
        assert issubclass(getattr(tb, name), tb.BatchError)
    assert issubclass(tb.BatchError, Exception)


def test_package_is_typed() -> None:
    assert (Path(tb.__file__).parent / "py.typed").exists()


def test_batcher_has_one_construction_path() -> None:
    # Only open_batcher builds a Batcher; its constructor is not documented API.
    sig = inspect.signature(tb.open_batcher)
    options = ["dedupe", "cache", "cancel_abandoned"]
    assert list(sig.parameters) == [
        "process",
        "acquire",
        "policy",
        "limits",
        "name",
        "observers",
        "cost",
        *options,
    ]
    for name in ["acquire", "policy", "limits", "name", "observers", "cost", *options]:
        assert sig.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
