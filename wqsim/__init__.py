"""wqsim: the Redis work-queue pattern, built properly, measured and taught.

The seed's work server in Python: a generator writes tasks as hashes and
queues their ids; a pool of workers claims them under leases (Redis EXPIRE),
performs them, writes results back and announces completion; a reaper returns
tasks whose lease expired; a listener counts the workers' ``finished``
messages; and an audit proves from Redis state that nothing was lost.
Tasks may depend on others (``Task.depends_on``): a graph is released in
Redis, atomically, as its prerequisites finish (see ``wqsim.graph``).
"""

from typing import TYPE_CHECKING

from . import acl, baselines
from .acl import PermissionDenied
from .audit import Audit, audit
from .config import ChaosConfig, RunConfig, WorkerConfig, default_workers
from .connection import BadRedisUrl, RedisUnavailable, connect, embedded_server, resolve_url
from .generator import ArrivalThread, arrival_offsets, arrivals, generate, generate_graph, make_tasks
from .graph import Bounds, GraphError, bounds, chain, diamond, fanout, layered
from .handlers import HandlerRegistry, UnknownKind, register, registry
from .keys import Keys
from .killer import Killer
from .listener import Listener, ListenResult
from .names import session_queue_name
from .pool import WorkerPool
from .queue import Claim, DuplicateTask, Queue, ReapResult, Settlement
from .reaper import Reaper
from .retention import Retention
from .runner import RunReport, run
from .server import RedisServer
from .sharded_worker import ShardedWorker
from .shards import ShardedAudit, ShardedQueue, shard_names
from .task import MalformedTask, Status, Task
from .worker import Worker, WorkerStats

__version__ = "0.1.0"

if TYPE_CHECKING:  # the real types of the lazily loaded classes below, for type checkers
    from .local_cluster import ClusterNode, LocalCluster


# Names loaded on first use. Those of metrics, plots, sweeps and openloop import pandas (and
# matplotlib): the CLI and worker processes start without them. local_cluster is also a script
# (python -m wqsim.local_cluster): imported here already, runpy would warn that it runs a second copy.
# name -> (module, attribute; None for the module itself).
_LAZY = {
    "ClusterNode": ("local_cluster", "ClusterNode"),
    "LocalCluster": ("local_cluster", "LocalCluster"),
    "metrics": ("metrics", None),
    "plots": ("plots", None),
    "sweep": ("sweeps", "sweep"),
    "open_loop": ("openloop", "open_loop"),
    "workbench": ("openloop", "workbench"),
    "OpenLoop": ("openloop", "OpenLoop"),
}


def __getattr__(name: str) -> object:
    """``wqsim.metrics``, ``wqsim.plots``, ``wqsim.sweep``, ``wqsim.open_loop`` and ``wqsim.workbench``
    import pandas and matplotlib: only on first use, so the CLI and worker processes start without them.
    ``wqsim.LocalCluster`` and ``wqsim.ClusterNode`` too, so ``python -m wqsim.local_cluster`` runs one copy."""
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        loaded = importlib.import_module(f".{module}", __name__)
        return loaded if attribute is None else getattr(loaded, attribute)
    raise AttributeError(f"module 'wqsim' has no attribute {name!r}")


__all__ = [
    "acl",
    "baselines",
    "PermissionDenied",
    "Audit",
    "audit",
    "ChaosConfig",
    "RunConfig",
    "WorkerConfig",
    "default_workers",
    "BadRedisUrl",
    "RedisUnavailable",
    "connect",
    "embedded_server",
    "resolve_url",
    "ArrivalThread",
    "arrival_offsets",
    "arrivals",
    "generate",
    "generate_graph",
    "make_tasks",
    "Bounds",
    "GraphError",
    "bounds",
    "chain",
    "diamond",
    "fanout",
    "layered",
    "HandlerRegistry",
    "UnknownKind",
    "register",
    "registry",
    "Keys",
    "Killer",
    "Listener",
    "ListenResult",
    "session_queue_name",
    "WorkerPool",
    "Claim",
    "DuplicateTask",
    "Queue",
    "ReapResult",
    "Settlement",
    "Reaper",
    "Retention",
    "RunReport",
    "run",
    "RedisServer",
    "ShardedWorker",
    "ShardedAudit",
    "ShardedQueue",
    "shard_names",
    "MalformedTask",
    "Status",
    "Task",
    "Worker",
    "WorkerStats",
    "metrics",
    "plots",
    "sweep",
    "open_loop",
    "workbench",
    "OpenLoop",
    "ClusterNode",
    "LocalCluster",
]
