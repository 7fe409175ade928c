"""Quickstart: 2,000 concurrent tasks each look up one user; the batcher makes few queries.

Run it with ``python examples/quickstart.py``. The "database" here is a fake that
takes 10 ms per query whatever its size, which is what makes batching pay:
without a batcher this would be 2,000 queries.
"""

from __future__ import annotations

import random

import trio

import trio_batch as tb

REQUESTS = 2_000
USERS = {user_id: f"user-{user_id}" for user_id in range(100)}
query_sizes: list[int] = []


async def fetch_users(table: str, user_ids: list[int]) -> list[str | None]:
    """One round trip for the whole batch: SELECT ... WHERE id IN (...)."""
    query_sizes.append(len(user_ids))
    await trio.sleep(0.010)
    return [USERS.get(user_id) for user_id in user_ids]


async def handle_request(batcher: tb.Batcher[str, int, str | None], user_id: int) -> None:
    # What a web handler would do: ask for one row, get one row back.
    name = await batcher.submit("users", user_id)
    assert name == USERS.get(user_id)


async def main() -> None:
    # Up to 4 queries in flight, 100 ids each. When 8 more batches are already
    # waiting, Overflow.WAIT makes a caller wait for room (backpressure). With
    # the default, Overflow.REJECT, submit would raise tb.Rejected at once
    # instead, for a web handler to answer "503, try again".
    limits = tb.Limits(max_batch_size=100, max_key_concurrency=4, overflow=tb.Overflow.WAIT)
    start = trio.current_time()
    async with tb.open_batcher(fetch_users, policy=tb.Immediate(), limits=limits) as batcher:
        async with trio.open_nursery() as nursery:
            for _ in range(REQUESTS):
                nursery.start_soon(handle_request, batcher, random.randrange(120))
    # Leaving the block drained the batcher: every request has its answer.
    elapsed = trio.current_time() - start
    print(
        f"{REQUESTS} requests -> {len(query_sizes)} queries "
        f"(ids per query: min {min(query_sizes)}, max {max(query_sizes)}, "
        f"mean {sum(query_sizes) / len(query_sizes):.1f}) in {elapsed * 1000:.0f} ms"
    )
    unbatched = REQUESTS / 4 * 10
    print(f"without batching: {REQUESTS} queries of 10 ms each, 4 at a time: ~{unbatched:.0f} ms")


if __name__ == "__main__":
    trio.run(main)
