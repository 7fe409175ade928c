"""trio_batch: batch many concurrent single-item calls into one call per key.

::

    import trio_batch as tb

    async with tb.open_batcher(process, policy=tb.Size(), limits=tb.Limits()) as batcher:
        output = await batcher.submit(key, item)

See ``open_batcher`` for the guarantees: exactly one outcome per ``submit``,
exact cancellation, and shutdown by leaving the block.
"""

import contextlib

from ._adaptive import AdaptiveEstimates as AdaptiveEstimates
from ._batcher import Batcher as Batcher
from ._errors import (
    BatcherClosed as BatcherClosed,
    BatchError as BatchError,
    BatchFailed as BatchFailed,
    ItemFailed as ItemFailed,
    ProcessorContractError as ProcessorContractError,
    Rejected as Rejected,
    ResourceAcquisitionFailed as ResourceAcquisitionFailed,
)
from ._observe import (
    BatchFinished as BatchFinished,
    BatchOutcome as BatchOutcome,
    BatchStarted as BatchStarted,
    CacheHit as CacheHit,
    ItemAccepted as ItemAccepted,
    ItemRejected as ItemRejected,
    ItemWithdrawn as ItemWithdrawn,
    Observer as Observer,
)
from ._open import open_batcher as open_batcher
from ._policies import (
    Adaptive as Adaptive,
    Balanced as Balanced,
    Duration as Duration,
    Immediate as Immediate,
    Limits as Limits,
    OnFull as OnFull,
    Overflow as Overflow,
    Oversize as Oversize,
    Policy as Policy,
    Size as Size,
    StartReason as StartReason,
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
    "Adaptive",
    "AdaptiveEstimates",
    "Balanced",
    "BatchError",
    "BatchFailed",
    "BatchFinished",
    "BatchOutcome",
    "BatchStarted",
    "Batcher",
    "BatcherClosed",
    "BatcherStatistics",
    "CacheHit",
    "Duration",
    "Immediate",
    "ItemAccepted",
    "ItemFailed",
    "ItemRejected",
    "ItemWithdrawn",
    "Limits",
    "Observer",
    "OnFull",
    "Overflow",
    "Oversize",
    "Policy",
    "ProcessorContractError",
    "Rejected",
    "ResourceAcquisitionFailed",
    "Size",
    "StartReason",
    "open_batcher",
]
