"""trio_batch: batch many concurrent single-item calls into one call per key.

::

    import trio_batch as tb

    async with tb.open_batcher(process, policy=tb.Size(), limits=tb.Limits()) as batcher:
        output = await batcher.submit(key, item)

See ``open_batcher`` for the guarantees: exactly one outcome per ``submit``,
exact cancellation, and shutdown by leaving the block.
"""

import contextlib

from ._batcher import Batcher as Batcher, open_batcher as open_batcher
from ._errors import (
    BatcherClosed as BatcherClosed,
    BatchError as BatchError,
    BatchFailed as BatchFailed,
    ProcessorContractError as ProcessorContractError,
    Rejected as Rejected,
    ResourceAcquisitionFailed as ResourceAcquisitionFailed,
)
from ._policies import (
    Balanced as Balanced,
    Duration as Duration,
    Immediate as Immediate,
    Limits as Limits,
    OnFull as OnFull,
    Policy as Policy,
    Size as Size,
)
from ._statistics import BatcherStatistics as BatcherStatistics

__version__ = "0.1.0"

# Tracebacks, reprs and docs say trio_batch.X, not trio_batch._module.X.
for _name, _obj in list(globals().items()):
    if getattr(_obj, "__module__", "").startswith("trio_batch._"):
        with contextlib.suppress(AttributeError, TypeError):  # e.g. type aliases
            _obj.__module__ = "trio_batch"
del _name, _obj, contextlib

__all__ = [
    "Balanced",
    "BatchError",
    "BatchFailed",
    "Batcher",
    "BatcherClosed",
    "BatcherStatistics",
    "Duration",
    "Immediate",
    "Limits",
    "OnFull",
    "Policy",
    "ProcessorContractError",
    "Rejected",
    "ResourceAcquisitionFailed",
    "Size",
    "open_batcher",
]
