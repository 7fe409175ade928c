"""A real Trio web service with the N+1 shape, served by Hypercorn's Trio worker.

``GET /posts?offset=0&limit=50`` returns a page of posts, each with its author:
one query for the page, then one author per post. Written naively (the
``/naive/posts`` endpoint) that is 1 + N SQL statements per request, the N+1
problem. Through trio_batch (``/posts``) the handler still asks for one
author at a time, as DataLoader users do, but:

* a *per-request cache* (:class:`RequestLoader`) asks for each author id once
  per request, with one :meth:`~trio_batch.Batcher.submit_many` call;
* one *app-wide batcher* with ``dedupe=True`` gathers the ids of every
  concurrent request into ``SELECT ... WHERE id IN (...)`` batches, sharing ids
  that several requests want at once;
* each batch gets its own SQLite connection through ``acquire=``, and every
  statement runs in :func:`trio.to_thread.run_sync`, so the event loop never
  blocks on the database.

The batcher lives in a task of the app's lifespan nursery (quart-trio's
``app.nursery``): it opens before the server accepts requests and, at shutdown,
after Hypercorn has let in-flight requests finish, its block is left normally,
so it *drains*: every request still waiting gets its authors, none is lost.

``GET /stats`` reports SQL statements and requests served so far, per endpoint
kind, so a client can compute statements per request.

Run it with ``python examples/web_service/loadgen.py`` (needs the ``web`` extra:
``pip install -e '.[web]'``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attrs
import trio
from quart import jsonify, request
from quart_trio import QuartTrio

import trio_batch as tb

#: Authors, and posts per author, in the demo database.
AUTHORS = 40
POSTS_PER_AUTHOR = 25


def create_database(path: Path, *, authors: int = AUTHORS, posts: int = POSTS_PER_AUTHOR) -> None:
    """Create (or replace) the demo database: users, and posts by them, interleaved."""
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        db.execute(
            "CREATE TABLE posts (id INTEGER PRIMARY KEY, author_id INTEGER NOT NULL "
            "REFERENCES users(id), title TEXT NOT NULL)"
        )
        db.executemany(
            "INSERT INTO users (id, name) VALUES (?, ?)",
            [(i, f"author {i}") for i in range(1, authors + 1)],
        )
        db.executemany(
            "INSERT INTO posts (id, author_id, title) VALUES (?, ?, ?)",
            [(n, (n * 7) % authors + 1, f"post {n}") for n in range(1, authors * posts + 1)],
        )
    db.close()


@dataclass
class Counters:
    """What the service has done, per endpoint kind ("batched" or "naive")."""

    statements: dict[str, int] = field(default_factory=lambda: {"batched": 0, "naive": 0})
    requests: dict[str, int] = field(default_factory=lambda: {"batched": 0, "naive": 0})
    #: Requests that entered a handler and have not answered yet.
    in_flight: int = 0
    #: The batcher's block was left normally: every caller had its outcome.
    drained: bool = False


class Database:
    """SQLite through worker threads; every statement is counted."""

    def __init__(self, path: Path, counters: Counters, *, delay: float = 0.0) -> None:
        self.path = path
        self.counters = counters
        #: Extra seconds each statement takes (to make requests overlap in tests).
        self.delay = delay

    def connect(self) -> sqlite3.Connection:
        # Used from worker threads: one thread at a time per connection.
        return sqlite3.connect(self.path, check_same_thread=False)

    async def query(
        self, connection: sqlite3.Connection, kind: str, sql: str, params: Sequence[Any] = ()
    ) -> list[tuple[Any, ...]]:
        """Run one statement in a worker thread and return its rows."""
        self.counters.statements[kind] += 1
        rows = await trio.to_thread.run_sync(lambda: connection.execute(sql, params).fetchall())
        if self.delay:
            await trio.sleep(self.delay)
        return rows

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[sqlite3.Connection]:
        """A connection of its own, opened and closed in a worker thread."""
        connection = await trio.to_thread.run_sync(self.connect)
        try:
            yield connection
        finally:
            await trio.to_thread.run_sync(connection.close)

    async def page(
        self, connection: sqlite3.Connection, kind: str, offset: int, limit: int
    ) -> list[tuple[Any, ...]]:
        return await self.query(
            connection,
            kind,
            "SELECT id, author_id, title FROM posts ORDER BY id LIMIT ? OFFSET ?",
            (limit, offset),
        )


class RequestLoader:
    """The per-request cache: each author id is asked for once per request."""

    def __init__(self, batcher: tb.Batcher[str, int, dict[str, Any]]) -> None:
        self.batcher = batcher
        self.cache: dict[int, dict[str, Any]] = {}

    async def load_many(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        ids = list(ids)
        missing = list(dict.fromkeys(i for i in ids if i not in self.cache))
        if missing:
            found = await self.batcher.submit_many("users", missing)
            self.cache.update(zip(missing, found, strict=True))
        return [self.cache[i] for i in ids]


def create_app(path: Path, *, delay: float = 0.0, max_batch_size: int = 500) -> QuartTrio:
    """The web app over the database at ``path``.

    ``delay`` slows every statement down (tests use it to keep requests in
    flight); ``max_batch_size`` bounds the ids per ``IN (...)`` query.
    """
    app = QuartTrio(__name__)
    counters = Counters()
    database = Database(path, counters, delay=delay)
    app.config["COUNTERS"] = counters
    stop = trio.Event()
    stopped = trio.Event()
    # Filled by the lifespan task before the server accepts requests.
    batchers: list[tb.Batcher[str, int, dict[str, Any]]] = []
    app.config["BATCHERS"] = batchers

    async def load_users(
        key: str, ids: list[int], connection: sqlite3.Connection
    ) -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(ids))
        rows = await database.query(
            connection, "batched", f"SELECT id, name FROM users WHERE id IN ({marks})", ids
        )
        by_id = {row[0]: {"id": row[0], "name": row[1]} for row in rows}
        return [by_id[i] for i in ids]

    def acquire(key: str) -> Any:
        return database.connection()

    async def run_batcher(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with tb.open_batcher(
            load_users,
            acquire=acquire,
            dedupe=True,
            limits=tb.Limits(max_batch_size=max_batch_size, max_batch_queue_size=1000),
            name="users",
        ) as batcher:
            batchers.append(batcher)
            task_status.started()
            await stop.wait()
        # Left normally: drained, every caller has its outcome.
        counters.drained = True
        stopped.set()

    @app.before_serving
    async def open_batcher() -> None:
        await app.nursery.start(run_batcher)

    @app.after_serving
    async def drain_batcher() -> None:
        stop.set()
        await stopped.wait()

    def page_args() -> tuple[int, int]:
        return int(request.args.get("offset", 0)), int(request.args.get("limit", 50))

    @app.get("/posts")
    async def posts() -> Any:
        counters.in_flight += 1
        try:
            offset, limit = page_args()
            async with database.connection() as connection:
                rows = await database.page(connection, "batched", offset, limit)
            authors = await RequestLoader(batchers[0]).load_many(row[1] for row in rows)
            counters.requests["batched"] += 1
            return jsonify(
                [
                    {"id": post_id, "title": title, "author": author}
                    for (post_id, _, title), author in zip(rows, authors, strict=True)
                ]
            )
        finally:
            counters.in_flight -= 1

    @app.get("/naive/posts")
    async def naive_posts() -> Any:
        counters.in_flight += 1
        try:
            offset, limit = page_args()
            result = []
            async with database.connection() as connection:
                rows = await database.page(connection, "naive", offset, limit)
                for post_id, author_id, title in rows:
                    ((user_id, name),) = await database.query(
                        connection, "naive", "SELECT id, name FROM users WHERE id = ?", (author_id,)
                    )
                    author = {"id": user_id, "name": name}
                    result.append({"id": post_id, "title": title, "author": author})
            counters.requests["naive"] += 1
            return jsonify(result)
        finally:
            counters.in_flight -= 1

    @app.get("/stats")
    async def stats() -> Any:
        return jsonify(
            {
                "statements": counters.statements,
                "requests": counters.requests,
                "in_flight": counters.in_flight,
                "batcher": attrs.asdict(batchers[0].statistics()) if batchers else None,
            }
        )

    return app
