"""Shared fixtures: a real redis-server per session, fakeredis per test, factories.

Tests never touch a Redis they did not start unless REDIS_URL says so, and then
only through queues with unique names, purged afterwards (never FLUSHALL).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator

import fakeredis
import pytest
import redis

from wqsim import Queue, RedisServer, Worker, WorkerConfig, connect


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the slow tests are handed out first, so that none of them starts last and
    leaves one process working alone at the end. The order is otherwise kept (a stable sort),
    and every xdist process sorts the same way, as xdist requires."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL when set, else a redis-server this session starts on a free port."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def real_client(redis_url: str) -> Iterator[redis.Redis]:
    client = connect(redis_url)
    yield client
    client.close()


@pytest.fixture
def fake_client() -> redis.Redis:
    """A fresh in-memory fakeredis (with Lua) per test."""
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


@pytest.fixture(params=["fakeredis", pytest.param("redis-server", marks=pytest.mark.real_redis)])
def client(request: pytest.FixtureRequest) -> redis.Redis:
    """The queue contract runs against both backends, so fakeredis's Lua is checked against the real thing."""
    if request.param == "fakeredis":
        return request.getfixturevalue("fake_client")
    return request.getfixturevalue("real_client")


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A queue name of the test's own. On the real server its keys are purged afterwards, whatever
    the test did: leftovers would slow every later SCAN of the shared session server."""
    name = "t" + uuid.uuid4().hex[:12]
    yield name
    if "redis_url" in request.fixturenames:
        client = connect(request.getfixturevalue("redis_url"))
        for suffix in ("", "-idle"):
            Queue(client, name + suffix).purge()
        client.close()


@pytest.fixture
def make_queue(client: redis.Redis, queue_name: str) -> Iterator[Callable[..., Queue]]:
    """Queues on ``client``; every queue made is purged afterwards."""
    made: list[Queue] = []

    def factory(name: str | None = None, **kwargs: object) -> Queue:
        q = Queue(client, name or queue_name, **kwargs)  # type: ignore[arg-type]
        made.append(q)
        return q

    yield factory
    for q in made:
        q.purge()


@pytest.fixture
def make_worker(client: redis.Redis, queue_name: str) -> Callable[..., Worker]:
    """Workers with fast test defaults: short idle waits, exit once the queue is drained."""

    def factory(worker_id: str = "w1", queue: str | None = None, **config: object) -> Worker:
        defaults: dict[str, object] = {"idle_wait_s": 0.05, "backoff_s": 0.001}
        defaults.update(config)
        return Worker(client, queue or queue_name, worker_id, WorkerConfig(**defaults))  # type: ignore[arg-type]

    return factory


class ListHandler(logging.Handler):
    """An injected logger's handler that keeps the messages, as the seed's Testing section proposes."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def captured_logger() -> tuple[logging.Logger, ListHandler]:
    logger = logging.getLogger(f"wqsim.test.{uuid.uuid4().hex[:8]}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = ListHandler()
    logger.addHandler(handler)
    return logger, handler
