"""Load generator for ``service.py``: batcher vs naive per-row queries, over real HTTP.

Run it with::

    pip install -e '.[web]'
    python examples/web_service/loadgen.py [--clients 50] [--requests 2000] [--limit 50]

It creates a demo SQLite database in a temporary directory, starts the
quart-trio app under Hypercorn's Trio worker on an ephemeral port (in this
process, in a nursery of its own), and drives each endpoint with concurrent
closed-loop clients (httpx's async client runs on Trio). For each it prints
requests per second, p50 and p99 latency, and SQL statements per request; then
it shuts the server down, which drains the batcher.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service import AUTHORS, POSTS_PER_AUTHOR, create_app, create_database


@dataclass(frozen=True)
class LoadResult:
    """One endpoint under load."""

    endpoint: str
    requests: int
    seconds: float
    latencies: Sequence[float]
    statements: int
    failures: int

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def statements_per_request(self) -> float:
        return self.statements / self.requests

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    def line(self) -> str:
        return (
            f"{self.endpoint:<14} {self.requests_per_second:>9,.0f} req/s   "
            f"p50 {self.percentile(0.5) * 1000:>7.1f} ms   "
            f"p99 {self.percentile(0.99) * 1000:>7.1f} ms   "
            f"{self.statements_per_request:>6.2f} SQL/request   failures {self.failures}"
        )


async def statements(client: httpx.AsyncClient, kind: str) -> int:
    response = await client.get("/stats")
    response.raise_for_status()
    count: int = response.json()["statements"][kind]
    return count


async def drive(
    client: httpx.AsyncClient, endpoint: str, *, clients: int, requests: int, limit: int
) -> LoadResult:
    """``requests`` GETs of random-ish pages from ``clients`` closed-loop clients."""
    kind = "naive" if endpoint.startswith("/naive") else "batched"
    pages = AUTHORS * POSTS_PER_AUTHOR // limit
    latencies: list[float] = []
    failures = 0
    budget = requests

    async def one_client(j: int) -> None:
        nonlocal budget, failures
        n = j
        while budget > 0:
            budget -= 1
            n += 7
            start = time.perf_counter()
            response = await client.get(
                endpoint, params={"offset": (n % pages) * limit, "limit": limit}
            )
            latencies.append(time.perf_counter() - start)
            if response.status_code != 200 or len(response.json()) != limit:
                failures += 1

    before = await statements(client, kind)
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for j in range(clients):
            nursery.start_soon(one_client, j)
    seconds = time.perf_counter() - start
    used = await statements(client, kind) - before
    return LoadResult(endpoint, len(latencies), seconds, latencies, used, failures)


async def main(argv: Sequence[str] | None = None) -> list[LoadResult]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (50)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per endpoint (2000)")
    parser.add_argument("--limit", type=int, default=50, help="posts per page (50)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blog.sqlite3"
        create_database(path)
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.errorlog = None
        stop = trio.Event()
        results: list[LoadResult] = []
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                lambda task_status: serve(
                    create_app(path), config, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            print(
                f"serving on {binds[0]}; {args.clients} clients, "
                f"{args.requests} requests per endpoint"
            )
            limits = httpx.Limits(max_connections=args.clients)
            async with httpx.AsyncClient(base_url=binds[0], limits=limits, timeout=60) as client:
                for endpoint in ("/posts", "/naive/posts"):
                    result = await drive(
                        client,
                        endpoint,
                        clients=args.clients,
                        requests=args.requests,
                        limit=args.limit,
                    )
                    print(result.line())
                    results.append(result)
            # Leaving the nursery shuts the server down; its lifespan drains the batcher.
            stop.set()
        batched, naive = results
        print(
            f"batcher: {naive.statements_per_request / batched.statements_per_request:.1f}x fewer "
            f"SQL statements per request, "
            f"{batched.requests_per_second / naive.requests_per_second:.2f}x the requests/s"
        )
        return results


def run(argv: Sequence[str] | None = None) -> Any:
    return trio.run(main, argv)


if __name__ == "__main__":
    run()
