"""The transport (wqsim.transport): the same pipelined code on fakeredis and on real Redis."""

from __future__ import annotations

import threading

import pytest
import redis

from wqsim import Queue, generate
from wqsim.transport import Pipelined, Pooled, plain


def test_a_queue_with_a_private_connection_pipelines_on_both_backends(client, queue_name):
    q = Queue(client, queue_name, own_connection=True)
    assert isinstance(q._hot, Pipelined)  # no fallback for fakeredis: the contract tests run this very code
    q.close()


def test_requests_sent_in_one_write_are_answered_in_their_order_whatever_order_the_replies_are_asked_in(
    client, queue_name
):
    key = f"{queue_name}:n"
    transport = Pipelined(client)
    try:
        tickets = transport.send(*(plain("INCR", key) for _ in range(5)), plain("GET", key))
        assert transport.reply(tickets[5]) == "5"
        assert [transport.reply(t) for t in reversed(tickets[:5])] == [5, 4, 3, 2, 1]
    finally:
        transport.close()
        client.delete(key)


def test_an_error_reply_is_raised_for_its_own_ticket_only(client, queue_name):
    key = f"{queue_name}:s"
    transport = Pipelined(client)
    try:
        fails, after = transport.send(plain("HSET", key, "f", "x"), plain("INCR", key), plain("HGET", key, "f"))[1:]
        assert transport.reply(after) == "x"  # read past the error, which waits for its own ticket
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            transport.reply(fails)
    finally:
        transport.close()
        client.delete(key)


def test_more_private_connections_than_a_pool_holds_one_after_another_is_fine(client, queue_name):
    """Each private connection comes from the pool and goes back to it on close: the pool's cap
    (100 in redis-py 8) counts connections open at once, not ever opened."""
    generate(Queue(client, queue_name), 150)
    for _ in range(150):
        q = Queue(client, queue_name, own_connection=True)
        assert len(q.claim("w1", lease_ms=5000).tasks) == 1
        q.close()


def test_an_idle_worker_on_fakeredis_is_woken_and_claims_in_the_same_write(fake_client, queue_name):
    """fakeredis runs a write's commands as it receives them: its BLPOP blocks the write, not the
    read, and the claim written after it still runs after it."""
    q = Queue(fake_client, queue_name, own_connection=True)
    blocked = threading.Event()
    claims: list = []

    def wait() -> None:
        blocked.set()
        claims.append(q.wait_then_claim("w1", 5.0, lease_ms=5000))

    waiter = threading.Thread(target=wait)
    waiter.start()
    blocked.wait(5)
    generate(Queue(fake_client, queue_name), 1)
    waiter.join(10)
    q.close()
    assert [t.id for t in claims[0].tasks] == ["1"]


def test_the_pooled_transport_answers_tickets_like_the_pipelined_one(client, queue_name):
    key = f"{queue_name}:p"
    transport = Pooled(client)
    tickets = transport.send(plain("INCR", key), plain("INCR", key))
    assert [transport.reply(t) for t in tickets] == [1, 2]
    client.delete(key)
