"""Integrations with observability tools, each an optional extra.

Each module here is an :class:`~trio_batch.Observer` for one tool; pass it to
:func:`~trio_batch.open_batcher` in ``observers=[...]``:

* :mod:`trio_batch.contrib.prometheus`: counters, histograms and gauges for
  ``prometheus_client`` (``pip install 'trio_batch[prometheus]'``).
* :mod:`trio_batch.contrib.opentelemetry`: one span per batch, linked to the
  span of every caller in it (``pip install 'trio_batch[opentelemetry]'``).

Importing this package imports neither tool; importing one of its modules
without its tool installed raises :exc:`ImportError` naming the extra to install.
"""

__all__: list[str] = []
