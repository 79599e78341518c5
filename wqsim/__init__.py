"""wqsim: the Redis work-queue pattern, built properly, measured and taught.

The seed's work server in Python: a generator writes tasks as hashes and
queues their ids; a pool of workers claims them under leases (Redis EXPIRE),
performs them, writes results back and announces completion; a reaper returns
tasks whose lease expired; a listener counts the workers' ``finished``
messages; and an audit proves from Redis state that nothing was lost.
"""

from .audit import Audit, audit
from .config import ChaosConfig, RunConfig, WorkerConfig, default_workers
from .connection import RedisUnavailable, connect, embedded_server, resolve_url
from .generator import generate, make_tasks
from .handlers import HandlerRegistry, UnknownKind, register, registry
from .keys import Keys
from .listener import Listener, ListenResult
from .pool import WorkerPool
from .queue import Claim, Queue, ReapResult, Settlement
from .reaper import Reaper
from .runner import RunReport, run
from .server import RedisServer
from .task import MalformedTask, Status, Task
from .worker import Worker, WorkerStats

__version__ = "0.1.0"

__all__ = [
    "Audit", "audit",
    "ChaosConfig", "RunConfig", "WorkerConfig", "default_workers",
    "RedisUnavailable", "connect", "embedded_server", "resolve_url",
    "generate", "make_tasks",
    "HandlerRegistry", "UnknownKind", "register", "registry",
    "Keys",
    "Listener", "ListenResult",
    "WorkerPool",
    "Claim", "Queue", "ReapResult", "Settlement",
    "Reaper",
    "RunReport", "run",
    "RedisServer",
    "MalformedTask", "Status", "Task",
    "Worker", "WorkerStats",
]
