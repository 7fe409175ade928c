"""How a batch's end becomes one outcome per caller: pure and total.

Everything here runs while a batch ends, so every function is *total*: whatever
``process`` returned or raised, it answers with a value and never raises. That
is the rule from the spec ("a batch's end is total"): user code that runs while
a batch ends (reading its outputs, formatting an exception's message) may fail
in any way, and a caller must still get its one outcome.

In the order things happen:

* :func:`read_outputs` turns what ``process`` returned into a plain list, in
  the batch's own task, *before* the batch leaves its key's state. Output *i*
  is ``outputs[i]``, read by position, which is what a list, a tuple, a numpy
  array or a torch tensor's rows mean. Strings, bytes and mappings are never a
  list of outputs. Anything else that has a length and positional indexing is
  read with ``len()`` and ``outputs[i]``; if either raises, or the length is
  wrong, the whole batch gets :exc:`~trio_batch.ProcessorContractError`.
* :func:`describe` formats an exception for a message the way the standard
  :mod:`traceback` module does: an exception whose ``str()`` raises becomes
  ``<unprintable OSError object>`` rather than a second error.
* :class:`Failure` is a failed batch: each caller gets its *own* exception
  built from it (never one object raised in many tasks).
* :func:`deliver` reschedules every parked caller with its outcome.

Rejected alternatives: iterating over the outputs (``zip(waiters, outputs)``),
which reads a DataFrame's column labels instead of its rows and lets a
``len()`` that disagrees with iteration crash the batcher; and checking
``isinstance(outputs, Sequence)`` only, which refuses numpy and torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, final

import outcome
import trio

from ._errors import BatchError, ItemFailed, ProcessorContractError

__all__ = ["ContractViolation", "Failure", "deliver", "describe", "read_outputs", "safe_repr"]


class ContractViolation(Exception):
    """``process`` broke its contract; the message says how."""


def safe_str(value: object) -> str:
    """``str(value)``, or ``<unprintable T object>`` if that raises."""
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__} object>"


def safe_repr(value: object) -> str:
    """``repr(value)``, or ``<unprintable T object>`` if that raises."""
    try:
        return repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__} object>"


def describe(exc: BaseException) -> str:
    """``"OSError: message"``, whatever the exception's ``__str__`` does."""
    message = safe_str(exc)
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def read_outputs(outputs: object, expected: int) -> list[Any]:
    """Return ``[outputs[0], ..., outputs[expected - 1]]``, read by position.

    Raises:
        ContractViolation: ``outputs`` is not a sequence, has the wrong length,
            or raised while its length or an item was read.
    """
    kind = type(outputs)
    if kind is list or kind is tuple:
        values: list[Any] = outputs if kind is list else list(outputs)  # type: ignore[assignment, call-overload]
        if len(values) != expected:
            raise ContractViolation(f"process returned {len(values)} outputs for {expected} inputs")
        return values
    if isinstance(outputs, str | bytes | bytearray | Mapping) or not (
        hasattr(outputs, "__len__") and hasattr(outputs, "__getitem__")
    ):
        raise ContractViolation(f"process must return a sequence of outputs, got {kind.__name__}")
    try:
        length = len(outputs)
    except Exception as exc:
        raise ContractViolation(
            f"process must return a sequence of outputs; len() of its "
            f"{kind.__name__} raised {describe(exc)}"
        ) from None
    if length != expected:
        raise ContractViolation(f"process returned {length} outputs for {expected} inputs")
    try:
        return [outputs[index] for index in range(length)]
    except Exception as exc:
        raise ContractViolation(
            f"process returned a {kind.__name__} whose outputs cannot be read by "
            f"position: reading them raised {describe(exc)}"
        ) from None


@final
class Failure:
    """A failed batch: each caller gets its own exception built from this."""

    __slots__ = ("cause", "error_type", "message")

    def __init__(
        self, error_type: type[BatchError], message: str, cause: BaseException | None
    ) -> None:
        self.error_type = error_type
        self.message = message
        self.cause = cause

    def new_error(self) -> BatchError:
        """A fresh exception for one caller, with the shared ``__cause__``."""
        error = self.error_type(self.message)
        error.__cause__ = self.cause
        return error


def contract_failure(violation: ContractViolation, where: str) -> Failure:
    """The failure every caller of a batch that broke the contract gets."""
    return Failure(ProcessorContractError, f"{violation} ({where})", None)


class Parked(Protocol):
    """A caller owed an outcome: ``task`` is ``None`` once it has given up."""

    task: trio.lowlevel.Task | None


def item_failure(error: BaseException) -> ItemFailed:
    """The :exc:`~trio_batch.ItemFailed` for an ``outcome.Error(error)`` output."""
    failure = ItemFailed(f"process failed this item: {safe_repr(error)}")
    failure.__cause__ = error
    return failure


def deliver(waiters: Iterable[Parked], result: list[Any] | Failure) -> int:
    """Reschedule every caller still parked with its outcome; return items failed alone.

    ``result`` is either the list from :func:`read_outputs` (output *i* for
    waiter *i*) or a :class:`Failure` for all of them. An output that is an
    ``outcome.Value(v)`` delivers ``v``; an ``outcome.Error(e)`` delivers
    :exc:`~trio_batch.ItemFailed` with ``e`` as its cause.
    """
    reschedule = trio.lowlevel.reschedule
    Value = outcome.Value
    if type(result) is Failure:
        for waiter in waiters:
            if waiter.task is not None:
                reschedule(waiter.task, outcome.Error(result.new_error()))
        return 0
    failed = 0
    for waiter, output in zip(waiters, result):  # noqa: B905 - lengths checked by read_outputs
        kind = type(output)
        if kind is Value:
            output = output.value
        elif kind is outcome.Error:
            failed += 1
            if waiter.task is not None:
                reschedule(waiter.task, outcome.Error(item_failure(output.error)))
            continue
        if waiter.task is not None:
            reschedule(waiter.task, Value(output))
    return failed
