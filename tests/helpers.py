"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

from wqsim import Queue


def done_count(queue: Queue, task_id: str) -> int:
    """How many times the durable event stream records ``task_id`` as done."""
    return sum(e["id"].split(" ").count(task_id) for e in queue.events() if e["event"] == "done")
