"""The Celery app used by the Celery peer adapter.

The worker subprocess is started as
``python -m celery -A benchmarks.peer_celery worker --pool=solo ...`` and reads
its broker URL and key prefix from the environment variables below, which
:func:`benchmarks.peers.celery_throughput` and ``latency_samples("celery", ...)``
set.  The publishing side builds its own app from :func:`celery_config` and
sends tasks by name, so importing this module never opens a connection.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from benchmarks import peer_tasks

BROKER_ENV = "WQSIM_PEER_CELERY_BROKER"
PREFIX_ENV = "WQSIM_PEER_CELERY_PREFIX"

NOOP = "wqsim_peer.noop"
MARK = "wqsim_peer.mark"
RECORD_LATENCY = "wqsim_peer.record_latency"


def celery_config(url: str, prefix: str) -> dict[str, Any]:
    """Configuration shared by the worker and the publisher.

    ``global_keyprefix`` makes kombu prefix *every* key it touches (the queue
    list, ``unacked``, ``unacked_index``, bindings, pidbox), so concurrent runs
    never collide and cleanup is one SCAN on the prefix.  Everything else is
    Celery's default: JSON, prefetch multiplier 4, early acknowledgement.
    """
    return {
        "broker_url": url,
        "broker_transport_options": {"global_keyprefix": prefix},
        "broker_connection_retry_on_startup": True,
        "result_backend": None,
        "task_ignore_result": True,
    }


app = Celery("wqsim_peer", set_as_current=False)
if os.environ.get(BROKER_ENV):
    app.conf.update(celery_config(os.environ[BROKER_ENV], os.environ.get(PREFIX_ENV, "")))

app.task(name=NOOP, ignore_result=True)(peer_tasks.noop)
app.task(name=MARK, ignore_result=True)(peer_tasks.mark)
app.task(name=RECORD_LATENCY, ignore_result=True)(peer_tasks.record_latency)
