"""Token budget: batch prompts for a model by their total tokens, not by their number.

Run it with ``python examples/token_budget.py``. The "model" here is a fake that
takes 2 ms per call plus 10 µs per token of the batch, and accepts at most
2,048 tokens per call. Prompts have from 10 to 600 tokens, and now and then
one has 3,000 (more than a call can take).

With ``max_batch_size`` alone, a batch of 32 long prompts would overrun the
model's budget; with ``max_batch_cost`` every batch fits it. The oversize
prompts are handled by ``Limits(oversize=...)``: ``Oversize.ALONE`` gives each a
call of its own (for a model that can split it), ``Oversize.REJECT`` (the
default) makes ``submit`` raise ``tb.Rejected`` at once.
"""

from __future__ import annotations

import random

import attrs
import trio

import trio_batch as tb

TOKEN_BUDGET = 2_048


@attrs.frozen
class Prompt:
    text: str
    tokens: int


calls: list[tuple[int, int]] = []  # (prompts, tokens) per model call


async def generate(model: str, prompts: list[Prompt]) -> list[str]:
    """One model call for the whole batch."""
    tokens = sum(prompt.tokens for prompt in prompts)
    calls.append((len(prompts), tokens))
    await trio.sleep(0.002 + 0.000_010 * tokens)
    return [f"{model} read {prompt.tokens} tokens" for prompt in prompts]


def random_prompt(rng: random.Random) -> Prompt:
    tokens = 3_000 if rng.random() < 0.01 else rng.randint(10, 600)
    return Prompt(f"prompt of {tokens} tokens", tokens)


async def main(oversize: tb.Oversize) -> None:
    rng = random.Random(14)
    limits = tb.Limits(
        max_batch_size=32,
        max_key_concurrency=2,
        max_batch_cost=TOKEN_BUDGET,
        oversize=oversize,
        overflow=tb.Overflow.WAIT,  # backpressure instead of rejecting on a full queue
    )
    rejected = 0
    calls.clear()

    async def client(batcher: tb.Batcher[str, Prompt, str], prompt: Prompt) -> None:
        nonlocal rejected
        try:
            reply = await batcher.submit("model-a", prompt)
        except tb.Rejected:
            rejected += 1  # oversize, with Oversize.REJECT: split it, or answer 413
            return
        assert reply == f"model-a read {prompt.tokens} tokens"

    async with tb.open_batcher(
        generate,
        cost=lambda prompt: prompt.tokens,
        policy=tb.Duration(0.005),
        limits=limits,
        name="model-a",
    ) as batcher:
        async with trio.open_nursery() as nursery:
            for _ in range(500):
                nursery.start_soon(client, batcher, random_prompt(rng))
                await trio.sleep(0.0002)
    over = [tokens for _, tokens in calls if tokens > TOKEN_BUDGET]
    within = [tokens for _, tokens in calls if tokens <= TOKEN_BUDGET]
    print(
        f"{oversize}: 500 prompts ({rejected} rejected) -> {len(calls)} model calls; "
        f"tokens per call: max {max(within)} of {TOKEN_BUDGET}, "
        f"mean {sum(within) / len(within):.0f}; "
        f"prompts per call: max {max(n for n, _ in calls)}; "
        f"calls over the budget: {len(over)} (each a single oversize prompt)"
    )
    assert all(n == 1 for n, tokens in calls if tokens > TOKEN_BUDGET)


if __name__ == "__main__":
    trio.run(main, tb.Oversize.ALONE)
    trio.run(main, tb.Oversize.REJECT)
