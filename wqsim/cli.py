"""The command line. ``main(argv)`` returns an exit code; it alone configures logging.

One role per command, so each piece can run as its own process, container or
host against one Redis: ``generate``, ``work``, ``listen``, ``reap``,
``status``; ``run`` does all of them in one process tree (the seed scenario).
Each reads ``REDIS_URL``. SIGTERM (docker stop, systemd, kill) stops the
long-running ones (``work``, ``listen``, ``reap``, ``run``) the way Ctrl-C
does: the signal is only recorded (see wqsim.stopping), and the command then
stops its workers gracefully: each finishes the task in hand and hands back
what it has not started.

``work``, ``run`` and ``generate`` first import the modules named by
``$WQSIM_IMPORTS`` (comma-separated) and ``--import MODULE`` (repeatable), so
they can run (or accept) task kinds those modules register (see wqsim.handlers).

``acl`` prints the least-privilege ACL rule for a queue (see wqsim.acl).

Exit codes: 0 success (a ``work`` stopped by SIGTERM included); 1 the run
finished but not cleanly (lost or stuck tasks, workers that never reported or
had to be killed, a queue that vanished from Redis, a ``status`` whose audit
finds tasks lost), or an enqueue Redis refused for want of memory (nothing was
written: try again once there is room); 2 bad arguments or configuration (a bad
Redis URL, a Redis user without a permission wqsim needs, a Redis whose
maxmemory-policy may evict keys, a module to import that cannot be imported, a
number of shards other than the queue's); 3 Redis unreachable, not Redis, or TLS
verification failed; 130 ``run`` interrupted. Errors are one readable line,
never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import cast

import redis

from . import acl
from .arguments import non_negative_float, non_negative_int, positive_float, positive_int, probability
from .audit import Audit, audit
from .chaos import injected
from .config import ChaosConfig, RunConfig, WorkerConfig, default_workers
from .connection import BadRedisUrl, RedisUnavailable, connect, redact, resolve_url
from .generator import generate, generate_graph
from .graph import GRAPHS
from .handlers import IMPORTS_ENV, ImportFailed, UnknownKind, import_modules, modules_to_import, registry
from .keys import Keys, check_id
from .listener import Listener, Listeners
from .pool import WorkerPool
from .queue import Queue
from .reaper import Reaper
from .retention import Retention
from .runner import run
from .shards import ShardedAudit, ShardedQueue, check_layout, recorded_layout
from .stopping import StopRequest
from .storage import check_each_server, check_eviction_policy

log = logging.getLogger("wqsim.cli")

# The --chaos preset: every kind of fault, with a short lease so hangs and crashes are reaped quickly.
CHAOS_PRESET = {"fail_p": 0.05, "hang_p": 0.01, "crash_p": 0.01, "straggler_p": 0.05}
CHAOS_LEASE_S = 0.5
STOP_GRACE_S = 60.0  # how long stopping workers may take to finish the task in hand before they are killed

# Exit codes (the module docstring says when each is used).
EXIT_OK = 0
EXIT_UNCLEAN = 1  # the command ran, but the outcome is not clean
EXIT_CONFIG = 2  # bad arguments or configuration: nothing was run
EXIT_UNREACHABLE = 3  # Redis unreachable, not Redis, or TLS verification failed
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


SIMULATED_KINDS = ("sleep", "noop")  # the kinds whose cost wqsim.sim knows
KIND_HELP = "task kind: sleep, noop, or one an --import module registers (default: sleep)"


class UsageError(Exception):
    """Bad command-line arguments: reported in one line, exit code EXIT_CONFIG."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wqsim", description="Simulate and measure the Redis work-queue pattern.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--queue", default="seed", help="queue name (default: seed)")
        p.add_argument("--redis-url", default=None, help="default: $REDIS_URL, else an embedded Redis")

    def shards(p: argparse.ArgumentParser, note: str = "") -> None:
        p.add_argument(
            "--shards",
            type=positive_int("shards"),
            default=1,
            help="the queue is split into this many shards, <queue>:0 ... (on a Redis Cluster each is on the master "
            f"of its own slot; every worker serves every shard; give generate and work the same number){note} "
            "(default: 1)",
        )

    def imports(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--import",
            dest="imports",
            action="append",
            default=[],
            metavar="MODULE",
            help=f"import MODULE first, so it can register task kinds (repeatable; adds to ${IMPORTS_ENV}, "
            "a comma-separated list; the current directory is searched first)",
        )

    def storage(p: argparse.ArgumentParser, retention: bool) -> None:
        p.add_argument(
            "--allow-eviction",
            action="store_true",
            help="use a Redis whose maxmemory-policy may evict keys (losses are reported, not prevented)",
        )
        if not retention:
            return
        g = p.add_argument_group(
            "retention (the queue's policy; default: the newest 10,000 done tasks, ~100,000 events)"
        )
        g.add_argument(
            "--keep-done",
            type=_count_or_all,
            default=argparse.SUPPRESS,
            metavar="N|all",
            help="keep the hashes of the newest N done tasks",
        )
        g.add_argument(
            "--keep-done-s",
            type=positive_float("keep_done_s"),
            default=argparse.SUPPRESS,
            metavar="SECONDS",
            help="also retire done tasks recorded longer ago than this",
        )
        g.add_argument(
            "--events-maxlen",
            type=_count_or_all,
            default=argparse.SUPPRESS,
            metavar="N|all",
            help="trim the events stream to about N entries",
        )

    def tasks(p: argparse.ArgumentParser, doing: str) -> None:
        """What to generate: shared by run and generate."""
        p.add_argument("--tasks", type=positive_int("tasks"), default=100, help="tasks to generate (default: 100)")
        p.add_argument(
            "--duration-ms",
            type=non_negative_float("duration_ms"),
            default=10.0,
            help="each sleep task's duration (default: 10)",
        )
        p.add_argument("--kind", default="sleep", help=KIND_HELP)
        p.add_argument(
            "--package-size",
            type=positive_int("package_size"),
            default=None,
            help="bundle tasks into work packages of this many",
        )
        p.add_argument(
            "--graph",
            choices=tuple(GRAPHS),
            default=None,
            help=f"{doing} an example dependency graph of about --tasks sleep tasks",
        )
        p.add_argument(
            "--allow-failure",
            action="store_true",
            help="with --graph: run dependents of failed tasks instead of cancelling them",
        )

    def workers(p: argparse.ArgumentParser, lease_default: float | None, lease_help: str) -> None:
        """How the pool works: shared by run and work."""
        p.add_argument(
            "--workers",
            type=positive_int("workers"),
            default=default_workers(),
            help="worker processes (default: cores - 1, at least 1)",
        )
        p.add_argument("--mode", choices=("process", "thread"), default="process")
        p.add_argument(
            "--batch-size",
            type=positive_int("batch_size"),
            default=1,
            help="tasks claimed per round trip, under one lease (default: 1)",
        )
        p.add_argument("--lease-s", type=positive_float("lease_s"), default=lease_default, help=lease_help)
        p.add_argument(
            "--ping-interval-s",
            type=positive_float("ping_interval_s"),
            default=None,
            help="heartbeat interval (default: lease / 3)",
        )
        p.add_argument(
            "--task-timeout-s",
            type=positive_float("task_timeout_s"),
            default=300.0,
            help="time limit of one attempt of a task, unless its kind or the task sets its own (default: 300)",
        )
        p.add_argument("-q", "--quiet", action="store_true", help="no per-task log lines")

    def scenario(p: argparse.ArgumentParser) -> None:
        """The seed scenario's options: shared by run and sim."""
        common(p)
        imports(p)
        tasks(p, doing="run")
        workers(p, lease_default=None, lease_help=f"lease length (default: 30, or {CHAOS_LEASE_S} with --chaos)")
        p.add_argument(
            "--max-attempts",
            type=positive_int("max_attempts"),
            default=None,
            help="attempts before a task is dead-lettered (default: 3, or 10 with --chaos)",
        )
        p.add_argument(
            "--timeout-s",
            type=positive_float("timeout_s"),
            default=None,
            help="listener timeout (default: scaled to the work)",
        )
        p.add_argument(
            "--progress", action="store_true", help="show a progress bar fed by completion events (implies -q)"
        )
        p.add_argument(
            "--arrival-rate",
            type=positive_float("arrival_rate"),
            default=None,
            help="tasks arrive one by one at this many per second (Poisson, seeded by --seed) while the workers "
            "run, instead of all at once (not with --graph or --package-size)",
        )
        shards(p, " (not with --arrival-rate)")
        p.add_argument(
            "--service",
            choices=("fixed", "exponential"),
            default="fixed",
            help="sleep durations: all --duration-ms (fixed), or exponential with that mean, seeded by --seed",
        )
        storage(p, retention=True)
        chaos = p.add_argument_group("failure injection (seedable)")
        chaos.add_argument("--chaos", action="store_true", help=f"inject every kind of fault: {CHAOS_PRESET}")
        chaos.add_argument("--seed", type=int, default=0)
        for name in CHAOS_PRESET:
            chaos.add_argument(f"--{name.replace('_', '-')}", type=probability(name), default=None, dest=name)

    p = sub.add_parser("run", help="the seed scenario: generate, work, listen, reap, audit")
    scenario(p)

    p = sub.add_parser(
        "sim", help="the seed scenario in virtual time (wqsim.sim): the options of run, plus a cost profile"
    )
    scenario(p)
    model = p.add_argument_group("the model")
    model.add_argument(
        "--profile", default=None, metavar="PATH", help="cost profile (JSON) to use (default: the packaged one)"
    )
    model.add_argument(
        "--calibrate",
        action="store_true",
        help="first measure a cost profile on --redis-url (a few seconds); saved to --profile if given",
    )
    model.add_argument(
        "--cores",
        type=non_negative_int("cores"),
        default=None,
        help="CPUs the workers and Redis share (default: the profile's; 0: one per worker, as on many hosts)",
    )

    p = sub.add_parser("generate", help="write tasks (or work packages, or a graph) into a queue, then exit")
    common(p)
    shards(p)
    imports(p)
    tasks(p, doing="write")
    p.add_argument(
        "--max-attempts",
        type=positive_int("max_attempts"),
        default=3,
        help="attempts before a task is dead-lettered (default: 3)",
    )
    p.add_argument(
        "--task-timeout-s",
        type=positive_float("task_timeout_s"),
        default=None,
        help="give every task this time limit of its own (default: the workers' limit applies)",
    )
    p.add_argument("--seed", type=int, default=0, help="with --graph layered: the random graph's seed")
    p.add_argument("--fresh", action="store_true", help="purge the queue first (its keys only)")
    storage(p, retention=True)

    p = sub.add_parser(
        "work", help="a pool of workers on a queue, until stopped (or, with --once, until it is drained)"
    )
    common(p)
    shards(p)
    imports(p)
    workers(p, lease_default=30.0, lease_help="lease length (default: 30)")
    p.add_argument("--id-prefix", default=None, help="worker ids are <prefix><n> (default: <hostname>-<pid>-)")
    p.add_argument("--once", action="store_true", help="exit once every task of the queue is terminal")
    storage(p, retention=False)

    p = sub.add_parser("listen", help="the pub/sub listener: print finished messages and progress")
    common(p)
    shards(p, note="; with shards, each shard's listener waits for --workers")
    p.add_argument(
        "--workers",
        type=positive_int("workers"),
        default=None,
        help="exit once this many workers have finished (default: listen until stopped)",
    )
    p.add_argument(
        "--timeout-s", type=positive_float("timeout_s"), default=None, help="give up after this long (exit code 1)"
    )
    p.add_argument(
        "--every-s", type=positive_float("every_s"), default=1.0, help="print progress at most this often (default: 1)"
    )

    p = sub.add_parser("reap", help="return tasks whose lease expired, in a loop")
    common(p)
    shards(p, note="; one reaper a shard")
    p.add_argument("--interval-s", type=positive_float("interval_s"), default=1.0)
    p.add_argument("--once", action="store_true", help="reap once and exit")

    p = sub.add_parser(
        "status", help="queue counts, leases in flight, dead letters and the audit (exit 1 if tasks were lost)"
    )
    common(p)
    shards(p, note="; each shard's status, then the audit of all of them")
    p.add_argument(
        "--expected",
        type=positive_int("expected"),
        default=None,
        metavar="N",
        help="tasks known to have been enqueued (as generate reported): any Redis has no record of are lost",
    )

    p = sub.add_parser("acl", help="print the least-privilege ACL rule for one queue (ACL SETUSER ...)")
    p.add_argument("--queue", required=True, help="queue name")
    p.add_argument("--user", default=None, help="Redis user name (default: wqsim-<queue>)")
    shards(p, note="; the rule covers the queue and every shard")
    return parser


def _connect(args: argparse.Namespace, url: str) -> redis.Redis:
    """A client for ``url``, once Redis has confirmed (where it can, see acl.check) that this
    user may run what this command needs: a missing permission is one line now, not mid-run.
    Called after the command's arguments are validated."""
    client = connect(url, queue=args.queue)
    acl.check(client, args.queue, acl.needed_by(args.command))
    return client


def _count_or_all(text: str) -> int | None:
    """A retention bound: an integer >= 0, or 'all' to keep everything."""
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'all' (got {text!r})") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'all' (got {text!r})")
    return value


def _retention(args: argparse.Namespace) -> Retention | None:
    """The retention policy the options ask for; None if none was given (the queue's stays)."""
    given = {name: getattr(args, name) for name in ("keep_done", "keep_done_s", "events_maxlen") if hasattr(args, name)}
    return Retention(**given) if given else None


def _run_config(args: argparse.Namespace) -> RunConfig:
    chaos_values = {name: getattr(args, name) for name in CHAOS_PRESET}
    if args.chaos:
        chaos_values = {n: (v if v is not None else CHAOS_PRESET[n]) for n, v in chaos_values.items()}
    chaos_on = any(v for v in chaos_values.values())
    lease_s = args.lease_s if args.lease_s is not None else (CHAOS_LEASE_S if chaos_on else 30.0)
    worker = WorkerConfig(
        lease_s=lease_s,
        batch_size=args.batch_size,
        ping_interval_s=args.ping_interval_s,
        task_timeout_s=args.task_timeout_s,
    )
    # A hang outlasts every lease (the heartbeat stalls with it), so the reaper returns a hung task.
    chaos = ChaosConfig(seed=args.seed, hang_s=2 * lease_s, **{n: v or 0.0 for n, v in chaos_values.items()})
    return RunConfig(
        queue=args.queue,
        tasks=args.tasks,
        duration_ms=args.duration_ms,
        kind=args.kind,
        package_size=args.package_size,
        workers=args.workers,
        max_attempts=args.max_attempts if args.max_attempts is not None else (10 if chaos_on else 3),
        mode=args.mode,
        timeout_s=args.timeout_s,
        worker=worker,
        chaos=chaos,
        graph=args.graph,
        allow_failure=args.allow_failure,
        graph_seed=args.seed,
        retention=_retention(args) or Retention(),
        allow_eviction=args.allow_eviction,
        arrival_rate=args.arrival_rate,
        arrival_seed=args.seed,
        service=args.service,
        shards=args.shards,
    )


def _check_kind(kind: str) -> None:
    """Refuse, before anything is written, a kind no worker could run: a typo, or a
    module not imported (here, after --import and $WQSIM_IMPORTS have been)."""
    try:
        registry.get(kind)
    except UnknownKind as exc:
        raise UnknownKind(f"{exc}; name the module that registers it with --import MODULE or ${IMPORTS_ENV}") from None


def _cmd_run(args: argparse.Namespace) -> int:
    config = _run_config(args)
    _check_kind(args.kind)
    _connect(args, resolve_url(args.redis_url))
    if args.quiet or args.progress:
        logging.getLogger("wqsim.worker").setLevel(logging.WARNING)
    with StopRequest() as stop:
        report = run(config, url=args.redis_url, progress=args.progress, should_stop=stop.is_set)
    a = report.audit
    log.info("Audit: %s", a.summary())
    if config.chaos.active:
        faults = injected(Queue(connect(resolve_url(args.redis_url), queue=config.queue), config.queue))
        log.info(
            "Chaos (seed %d): %d failures, %d hangs, %d crashes and %d stragglers injected; "
            "%d executions for %d tasks (%d re-executions), %d late results rejected, "
            "%d leases expired, %d worker processes replaced",
            config.chaos.seed,
            faults["fail"],
            faults["hang"],
            faults["crash"],
            faults["straggle"],
            a.executions,
            a.generated,
            a.duplicate_executions,
            a.rejected,
            a.expired,
            report.restarts,
        )
    if stop.is_set():
        print(f"wqsim: interrupted by {stop.reason}; workers stopped, nothing in flight was lost", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if report.ok else EXIT_UNCLEAN


def _cmd_sim(args: argparse.Namespace) -> int:
    from .sim import CostProfile, calibrate, default_profile, simulate

    config = _run_config(args)
    if config.kind not in SIMULATED_KINDS:
        raise ValueError(f"wqsim sim models the kinds {', '.join(SIMULATED_KINDS)} (got {config.kind!r})")
    if args.calibrate:
        url = resolve_url(args.redis_url)
        _connect(args, url)
        profile = calibrate(url)
        log.info("Calibrated on %s: %s", redact(url), profile.to_json().replace("\n", " "))
        if args.profile:
            profile.save(args.profile)
            log.info("Saved the profile to %s", args.profile)
    else:
        profile = CostProfile.load(args.profile) if args.profile else default_profile()
    report = simulate(config, profile, cores=args.cores)
    log.info(report.summary())
    log.info(report.makespan_summary())
    log.info(report.redis_summary())
    if not report.finished:
        log.error("The simulation stopped at its virtual-time limit (%.0f s) with tasks unfinished", report.wall_s)
    return EXIT_OK if report.ok else EXIT_UNCLEAN


def _cmd_generate(args: argparse.Namespace) -> int:
    if args.graph and args.package_size:
        raise ValueError("a graph cannot be bundled into work packages (drop --package-size)")
    _check_kind(args.kind)
    url = resolve_url(args.redis_url)
    _connect(args, url)  # unreachable Redis or a missing permission: one line, now
    sharded = ShardedQueue.connect(url, args.queue, args.shards)
    retention = _retention(args)
    check_each_server((shard.client for shard in sharded), f"Redis at {redact(url)}", args.allow_eviction)
    if args.fresh:  # the whole queue, as it was laid out too: nothing of another layout is left behind
        recorded = recorded_layout(url, args.queue)
        for shards in {recorded or 1, 1} - {args.shards}:
            ShardedQueue.connect(url, args.queue, shards).purge()
        sharded.purge()
    check_layout(url, args.queue, args.shards)  # tasks added in another layout would go unserved
    if (uneven := sharded.placement_warning()) is not None:
        log.warning("%s", uneven)
    for shard in sharded:
        if retention is not None:
            shard.set_retention(retention)
    queue: Queue | ShardedQueue = sharded if args.shards > 1 else sharded.queues[0]
    if args.graph:
        tasks = generate_graph(
            queue,
            args.graph,
            args.tasks,
            args.duration_ms,
            args.seed,
            args.max_attempts,
            args.task_timeout_s,
            args.allow_failure,
        )
        log.info("Created a %s graph of %d tasks on queue %r at %s", args.graph, len(tasks), args.queue, redact(url))
        return EXIT_OK
    generate(
        queue,
        args.tasks,
        args.duration_ms,
        args.kind,
        args.max_attempts,
        args.package_size,
        timeout_s=args.task_timeout_s,
    )
    total = queue.counters().get("total", 0)
    if args.shards > 1:
        log.info(
            "Queue %r at %s now holds %d task(s) in %d shards, %s:0 to %s:%d (wqsim status --queue %s:N shows one)",
            args.queue,
            redact(url),
            total,
            args.shards,
            args.queue,
            args.queue,
            args.shards - 1,
            args.queue,
        )
        return EXIT_OK
    log.info(
        "Queue %r at %s now holds %d task(s) (check later with: wqsim status --queue %s --expected %d)",
        args.queue,
        redact(url),
        total,
        args.queue,
        total,
    )
    return EXIT_OK


def _cmd_work(args: argparse.Namespace) -> int:
    config = WorkerConfig(
        lease_s=args.lease_s,
        batch_size=args.batch_size,
        ping_interval_s=args.ping_interval_s,
        exit_when_drained=args.once,
        task_timeout_s=args.task_timeout_s,
    )
    if args.quiet:
        logging.getLogger("wqsim.worker").setLevel(logging.WARNING)
    prefix = args.id_prefix if args.id_prefix is not None else f"{socket.gethostname()}-{os.getpid()}-"
    ids = [check_id("worker id", f"{prefix}{i}") for i in range(1, args.workers + 1)]
    url = resolve_url(args.redis_url)
    # Unreachable Redis, a missing permission, or a Redis that may evict keys: fail now, in one line.
    client = _connect(args, url)
    check_eviction_policy(client, f"Redis at {redact(url)}", args.allow_eviction)
    check_layout(url, args.queue, args.shards)  # another number of shards would leave some unserved
    sharded = ShardedQueue.connect(url, args.queue, args.shards)
    if (uneven := sharded.placement_warning()) is not None:
        log.warning("%s", uneven)
    vanished_before = sharded.counters().get("vanished", 0)
    with StopRequest() as stop:  # from here on SIGTERM and SIGINT are only recorded, never raised
        pool = WorkerPool(url, args.queue, ids, config, mode=args.mode, on_exit=stop.set, shards=args.shards)
        log.info(
            "Working on queue %r at %s with %d worker(s): %s%s",
            args.queue,
            redact(url),
            len(ids),
            ", ".join(ids),
            "; exiting once it is drained" if args.once else "; Ctrl-C or SIGTERM to stop",
        )
        pool.start()
        stop.wait()  # a signal, or every worker has exited (--once), or Redis refused a permission
        if pool.refused:
            raise acl.PermissionDenied(pool.refused)
        if not pool.join(0):
            log.info("Stopping (%s): workers finish the task in hand and hand back what they hold", stop.reason)
            pool.stop()
            if not pool.join(STOP_GRACE_S):
                log.error(
                    "Workers did not stop within %g s; killing them (the reaper returns their tasks)", STOP_GRACE_S
                )
                pool.terminate()
                return EXIT_UNCLEAN
    if pool.queue_vanished():
        log.error(
            "Queue %r vanished from Redis while it was worked on: its tasks were lost "
            "(wqsim status --expected N counts them)",
            args.queue,
        )
        return EXIT_UNCLEAN
    hashless = sharded.counters().get("vanished", 0) - vanished_before
    if hashless > 0:
        log.error(
            "%d task id(s) of queue %r had no hash when claimed (deleted, or evicted by Redis): "
            "dead-lettered, their data is lost",
            hashless,
            args.queue,
        )
        return EXIT_UNCLEAN
    log.info("All workers stopped")
    return EXIT_OK


def _cmd_listen(args: argparse.Namespace) -> int:
    url = resolve_url(args.redis_url)
    printer = _ProgressPrinter(args.every_s)
    with StopRequest() as stop:
        listener = Listeners(
            [Listener(q.client, q.name, args.workers, on_progress=printer) for q in _queues(args, url)]
        ).start()
        log.info(
            "Listening on queue %r%s at %s%s",
            args.queue,
            f" ({args.shards} shards)" if args.shards > 1 else "",
            redact(url),
            f" for {args.workers} worker(s)" if args.workers else "; Ctrl-C or SIGTERM to stop",
        )
        result = listener.wait(args.timeout_s, should_stop=stop.is_set, on_idle=printer.flush_if_due)
    printer.flush()
    return EXIT_UNCLEAN if result.timed_out else EXIT_OK


class _ProgressPrinter:
    """Counts terminal outcomes from the progress channel; logs a line at most every ``every_s``.

    The listener also calls ``flush_if_due`` while no message comes, so the last
    count is printed within about ``every_s`` of the last event, not at exit.
    """

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.counts: dict[str, int] = {}
        self._last = 0.0
        self._dirty = False
        self._lock = threading.Lock()  # a sharded queue's listeners call it from a thread each

    def __call__(self, status: str, task_id: str) -> None:
        with self._lock:
            self.counts[status] = self.counts.get(status, 0) + 1
            self._dirty = True
        self.flush_if_due()

    def flush_if_due(self) -> None:
        if self._dirty and time.monotonic() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if self._dirty:
                log.info("Progress: %s", ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items())))
                self._last = time.monotonic()
                self._dirty = False


def _cmd_reap(args: argparse.Namespace) -> int:
    reapers = [Reaper(q, interval_s=args.interval_s) for q in _queues(args, resolve_url(args.redis_url))]
    # Here, not in the threads: a refused permission ends the command in one line.
    results = [reaper.reap_once() for reaper in reapers]
    if args.once:
        returned, buried = sum(r.returned for r in results), sum(r.buried for r in results)
        log.info("Returned %d task(s), dead-lettered %d", returned, buried)
        return EXIT_OK
    log.info(
        "Reaping queue %r%s every %g s; Ctrl-C or SIGTERM to stop",
        args.queue,
        f" ({args.shards} shards)" if args.shards > 1 else "",
        args.interval_s,
    )
    with StopRequest() as stop:
        for reaper in reapers:
            reaper.start()
        stop.wait()
        for reaper in reapers:
            reaper.stop()
    return EXIT_OK


def _queues(args: argparse.Namespace, url: str) -> list[Queue]:
    """The queue, or with ``--shards`` S its S shards (each a queue on the master of its own slot).

    A reaper or status given another number of shards than the queue's is refused (one line): it
    would miss some shards without a word. A listener is not checked: it may read nothing else.
    """
    client = _connect(args, url)  # the permission check, in one line, before anything starts
    if args.command != "listen":
        check_layout(url, args.queue, args.shards)
    if args.shards == 1:
        return [Queue(client, args.queue)]
    client.close()
    return list(ShardedQueue.connect(url, args.queue, args.shards))


def _cmd_status(args: argparse.Namespace) -> int:
    url = resolve_url(args.redis_url)
    queues = _queues(args, url)
    if len(queues) == 1:
        print(f"queue {args.queue!r} at {redact(url)}")
        result = _print_status(queues[0], args.expected)
    else:
        print(f"queue {args.queue!r} in {len(queues)} shards at {redact(url)}")
        audits = []
        servers = ShardedQueue(args.queue, tuple(queues)).servers()
        for queue, server in zip(queues, servers, strict=True):
            print(f"  shard {queue.name!r} on {server}")
            audits.append(_print_status(queue, None, indent="    "))
        sharded = ShardedAudit(tuple(audits), args.expected)
        result = sharded.total
        print("  audit, all shards: " + result.summary())
    if result.lost or result.counters_lost:
        print(f"wqsim: {result.lost} task(s) of queue {args.queue!r} lost from Redis", file=sys.stderr)
        return EXIT_UNCLEAN
    return EXIT_OK


def _print_status(queue: Queue, expected: int | None, indent: str = "  ") -> Audit:
    """Print one queue's counts, leases in flight, dead letters and audit; return the audit."""
    lengths = queue.lengths()
    counters = queue.counters()
    print(indent + ", ".join(f"{k} {v}" for k, v in lengths.items()))
    print(f"{indent}counters: " + (", ".join(f"{k} {v}" for k, v in sorted(counters.items())) or "none"))
    now = time.time()
    # wqsim's clients decode replies (see connection.connect): members are str, scores float.
    leases = cast("list[tuple[str, float]]", queue.client.zrange(queue.keys.inflight, 0, 19, withscores=True))
    if leases:
        print(f"{indent}leases in flight ({lengths['inflight']}, soonest deadline first):")
        for lease, deadline in leases:
            held = queue.client.scard(queue.keys.held(lease))
            print(f"{indent}  {lease}: {held} task(s), deadline in {deadline - now:.1f} s")
    dead = cast("list[str]", queue.client.lrange(queue.keys.dead, 0, 9))
    if dead:
        print(f"{indent}dead letters ({lengths['dead']}, newest first):")
        for task_id in dead:
            error = cast("str | None", queue.client.hget(queue.keys.task(task_id), "error"))
            print(f"{indent}  {task_id}: {error}")
    result = audit(queue, expected=expected)
    print(f"{indent}audit: " + result.summary())
    return result


def _cmd_acl(args: argparse.Namespace) -> int:
    user = args.user or acl.default_user(args.queue)
    print(acl.setuser(args.queue, user, args.shards))
    log.info(
        "Then give %s a password (ACL SETUSER %s >password) and connect with redis://%s:password@host:port/0",
        user,
        user,
        user,
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        if "required: command" in str(exc):  # no command at all: the help lists them, as argparse's usage would
            parser.print_help(sys.stderr)
        print(f"wqsim: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s.%(msecs)03d %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    commands = {
        "run": _cmd_run,
        "sim": _cmd_sim,
        "generate": _cmd_generate,
        "work": _cmd_work,
        "listen": _cmd_listen,
        "reap": _cmd_reap,
        "status": _cmd_status,
        "acl": _cmd_acl,
    }
    try:
        Keys(args.queue)  # a bad queue name: one line and EXIT_CONFIG, before anything starts
        if hasattr(args, "imports"):  # before any worker is forked: forked workers inherit the kinds
            import_modules(modules_to_import(args.imports))
        return commands[args.command](args)
    except (BadRedisUrl, acl.PermissionDenied) as exc:
        print(f"wqsim: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RedisUnavailable as exc:
        print(f"wqsim: error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (ValueError, LookupError, ImportFailed) as exc:
        if verbose:
            raise
        print(f"wqsim: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("wqsim: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if acl.is_permission_error(exc) and not verbose:
            user = acl.user_of_url(resolve_url(args.redis_url))
            print(f"wqsim: error: {acl.explain(exc, args.queue, user, getattr(args, 'shards', 1))}", file=sys.stderr)
            return EXIT_CONFIG
        if verbose:
            raise
        print(f"wqsim: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNCLEAN


__all__ = ["main", "build_parser"]
