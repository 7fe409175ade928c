"""Quickstart: 1,000 concurrent tasks each look up one user; the batcher makes few queries.

Run it with ``python examples/quickstart.py``. The "database" here is a fake that
takes 10 ms per query whatever its size, which is what makes batching pay:
without a batcher this would be 1,000 queries.
"""

from __future__ import annotations

import random

import trio

import trio_batch as tb

USERS = {user_id: f"user-{user_id}" for user_id in range(100)}
queries: list[tuple[str, int]] = []


async def fetch_users(table: str, user_ids: list[int]) -> list[str | None]:
    """One round trip for the whole batch: SELECT ... WHERE id IN (...)."""
    queries.append((table, len(user_ids)))
    await trio.sleep(0.010)
    return [USERS.get(user_id) for user_id in user_ids]


rejected = 0


async def handle_request(batcher: tb.Batcher[str, int, str | None], user_id: int) -> None:
    # What a web handler would do: ask for one row, get one row back.
    global rejected
    try:
        name = await batcher.submit("users", user_id)
    except tb.Rejected:
        rejected += 1  # a real service would answer 503 and let the client retry
        return
    assert name == USERS.get(user_id)


async def main() -> None:
    # Up to 4 queries in flight, and room for 12 batches of 100 waiting: 1,200 items.
    limits = tb.Limits(max_batch_size=100, max_key_concurrency=4, max_batch_queue_size=12)
    start = trio.current_time()
    async with tb.open_batcher(fetch_users, policy=tb.Immediate(), limits=limits) as batcher:
        async with trio.open_nursery() as nursery:
            for _ in range(1_000):
                nursery.start_soon(handle_request, batcher, random.randrange(120))
    elapsed = trio.current_time() - start
    sizes = [size for _, size in queries]
    print(
        f"1000 requests ({rejected} rejected) -> {len(queries)} queries "
        f"(batch sizes: min {min(sizes)}, max {max(sizes)}, mean {sum(sizes) / len(sizes):.1f}) "
        f"in {elapsed * 1000:.0f} ms"
    )
    print(f"without batching: 1000 queries of 10 ms each, 4 at a time: ~{1000 / 4 * 10:.0f} ms")


if __name__ == "__main__":
    trio.run(main)
