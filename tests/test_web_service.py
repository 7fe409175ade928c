"""examples/web_service: the real server, real HTTP, a real SQLite database.

The server (quart-trio under Hypercorn's Trio worker) runs on an ephemeral port
inside the test's own nursery; leaving that nursery shuts it down, and its
lifespan drains the app-wide batcher. Real time: these tests do not use the
autojump clock (sockets and threads do not run on virtual time).
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

pytest.importorskip("quart_trio", reason="the web extra is not installed: pip install -e '.[web]'")
pytest.importorskip("hypercorn", reason="the web extra is not installed: pip install -e '.[web]'")
httpx = pytest.importorskip(
    "httpx", reason="the web extra is not installed: pip install -e '.[web]'"
)

from hypercorn.config import Config  # noqa: E402
from hypercorn.trio import serve  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "web_service"


@pytest.fixture(scope="module")
def service() -> ModuleType:
    sys.path.insert(0, str(EXAMPLE))
    try:
        import service as module
    finally:
        sys.path.remove(str(EXAMPLE))
    return module


class Server:
    """A running server: an HTTP client for it, the app, and its shutdown trigger."""

    def __init__(self, client: Any, app: Any, stop: trio.Event) -> None:
        self.client = client
        self.app = app
        self.stop = stop


@asynccontextmanager
async def running(service: ModuleType, path: Path, **options: Any) -> AsyncIterator[Server]:
    """Serve the app on an ephemeral port in a nursery of this test.

    Leaving the block triggers a graceful shutdown (if ``server.stop`` was not
    set already) and waits for the server, and so its lifespan, to end.
    """
    app = service.create_app(path, **options)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 30
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                app, config, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        async with httpx.AsyncClient(base_url=binds[0], timeout=30) as client:
            try:
                yield Server(client, app, stop)
            finally:
                stop.set()


def expected_page(path: Path, offset: int, limit: int) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT posts.id, posts.title, users.id, users.name FROM posts "
            "JOIN users ON users.id = posts.author_id ORDER BY posts.id LIMIT ? OFFSET ?",
            (limit, offset),
        ).fetchall()
    db.close()
    return [
        {"id": post_id, "title": title, "author": {"id": user_id, "name": name}}
        for post_id, title, user_id, name in rows
    ]


@pytest.fixture
def database(service: ModuleType, tmp_path: Path) -> Path:
    path = tmp_path / "blog.sqlite3"
    service.create_database(path)
    return path


async def test_both_endpoints_answer_what_the_database_holds(
    service: ModuleType, database: Path
) -> None:
    async with running(service, database) as server:
        for offset in (0, 50, 975):
            expected = expected_page(database, offset, 50)
            assert len(expected) == (25 if offset == 975 else 50)
            for endpoint in ("/posts", "/naive/posts"):
                response = await server.client.get(endpoint, params={"offset": offset})
                assert response.status_code == 200
                assert response.json() == expected


async def test_the_batcher_cuts_statements_per_request_tenfold(
    service: ModuleType, database: Path
) -> None:
    requests = 40
    async with running(service, database) as server:
        client = server.client

        async def one(endpoint: str, offset: int) -> None:
            response = await client.get(endpoint, params={"offset": offset})
            assert response.json() == expected_page(database, offset, 50)

        async def load(endpoint: str) -> float:
            kind = "naive" if endpoint.startswith("/naive") else "batched"
            before = (await client.get("/stats")).json()["statements"][kind]
            async with trio.open_nursery() as nursery:
                for n in range(requests):
                    nursery.start_soon(one, endpoint, (n % 20) * 50)
            after = (await client.get("/stats")).json()["statements"][kind]
            return float(after - before) / requests

        batched = await load("/posts")
        naive = await load("/naive/posts")
    # Naive: one statement for the page, one per post (the N+1 shape).
    assert naive == 51.0
    assert batched * 10 <= naive, (batched, naive)


async def test_shutdown_drains_the_batcher_and_loses_no_request(
    service: ModuleType, database: Path
) -> None:
    # Every statement takes 0.2 s, so requests are still waiting for their
    # authors in the batcher when the server is told to stop.
    answers: list[tuple[int, int, Any]] = []
    async with running(service, database, delay=0.2, max_batch_size=10) as server:
        counters = server.app.config["COUNTERS"]
        (batcher,) = server.app.config["BATCHERS"]

        async def one(offset: int) -> None:
            response = await server.client.get("/posts", params={"offset": offset})
            answers.append((offset, response.status_code, response.json()))

        async with trio.open_nursery() as nursery:
            for n in range(30):
                nursery.start_soon(one, n * 10)
            # Polled: the app has no event for "30 requests are in flight".
            while counters.in_flight < 30 or not batcher.statistics().processing_batches:  # noqa: ASYNC110
                await trio.sleep(0.01)
            assert counters.requests["batched"] < 30
            # Shut down while every request is in flight, some inside the batcher.
            server.stop.set()
    # The server's nursery is gone: its lifespan ended, and drained the batcher.
    assert counters.drained
    assert batcher.statistics() == batcher.statistics().__class__(0, 0, 0, 0)
    assert counters.in_flight == 0
    assert counters.requests["batched"] == 30
    assert sorted(offset for offset, _, _ in answers) == [n * 10 for n in range(30)]
    for offset, status, body in answers:
        assert status == 200
        assert body == expected_page(database, offset, 50)
