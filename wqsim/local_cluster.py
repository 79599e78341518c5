"""A real Redis Cluster on this machine, for tests, benchmarks and demos.

fakeredis and a single redis-server cannot show what a cluster does to a
queue: MOVED redirections, hash tags that must keep a script's keys in one
slot, a master that dies and a replica that takes over. This starts
``masters * (1 + replicas)`` redis-server processes from the installed binary
and joins them with ``redis-cli --cluster create``.

Each node gets two free loopback ports, the client port and the cluster bus
port (set with ``cluster-port``, so ``port + 10000`` need not be free), and a
temporary directory of its own holding its ``nodes.conf`` and log. Snapshots
are off and ``cluster-node-timeout`` is 1000 ms, so a dead master is replaced
within about two seconds. As with wqsim.server's embedded Redis, every node is
SIGTERMed when this process dies (PR_SET_PDEATHSIG), and a janitor process per
node removes its directory even when this process is SIGKILLed.

With ``tls=TlsFiles(...)`` the nodes speak TLS only, to clients and to each
other (``tls-cluster``, ``tls-replication``), and ``url`` is a ``rediss://`` URL
naming the CA.

``python -m wqsim.local_cluster --masters 3 --replicas 1`` keeps one up until
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot  # what redis.cluster.RedisCluster hashes keys with
from redis.retry import Retry

from .arguments import non_negative_int, positive_int
from .config import check_int_at_least
from .server import _die_with_parent, _start_janitor, free_port
from .stopping import StopRequest

log = logging.getLogger("wqsim.local_cluster")

SLOTS = 16384
NODE_TIMEOUT_MS = 1000  # a master unreachable this long is marked failed; its replica takes over soon after
_POLL_S = 0.05
_LOG_TAIL_LINES = 15
_RESTART_TIMEOUT_S = 10.0  # a restarted node answers in milliseconds; loading an append-only file takes longer
_PORT_ATTEMPTS = 5  # a free port can be taken by someone else between free_port() and the bind

EXIT_CONFIG = 2  # bad arguments
EXIT_NO_BINARY = 3  # redis-server (or redis-cli) not installed


@dataclass(frozen=True)
class ClusterNode:
    """One node's address: what tests pass to ``kill``, ``restart`` and ``failover``."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of a TLS cluster: every node's certificate and key (one pair serves all: the
    nodes share a host), and the CA that signed it, which clients are told to trust."""

    cert_file: str
    key_file: str
    ca_file: str


class _PortTaken(Exception):
    """A node could not bind its port: another process took it after free_port() found it free."""


@dataclass
class _Node:
    """What this process holds for one node; kept across kill and restart (same ports, same directory)."""

    node: ClusterNode
    bus_port: int
    dir: str
    process: subprocess.Popen[bytes] | None = None
    janitor: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "redis.log")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-_LOG_TAIL_LINES:])


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found on PATH: install Redis (7.0 or later) to start a local cluster")
    return path


class LocalCluster:
    """A Redis Cluster of local redis-server processes, owned by this Python process.

    ``with LocalCluster(masters=3, replicas=1) as cluster: ...`` starts it and stops it.
    The query methods ask the nodes, not this object's memory: after a failover,
    the cluster decides who is master.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        host: str = "127.0.0.1",
        appendonly: bool = False,
        full_coverage: bool = True,
        tls: TlsFiles | None = None,
    ) -> None:
        """``full_coverage`` False sets ``cluster-require-full-coverage no``: a master lost without a
        replica then takes only its own slots out of service, not the whole cluster's (Redis's default)."""
        # redis-cli --cluster create refuses fewer than three masters: no majority can mark one failed.
        check_int_at_least("masters", masters, 3)
        check_int_at_least("replicas", replicas, 0)
        self.masters = masters
        self.replicas = replicas
        self.host = host
        self.appendonly = appendonly
        self.full_coverage = full_coverage
        self.tls = tls
        self._nodes: dict[ClusterNode, _Node] = {}  # in start order: masters, then replicas
        self._registered = False

    # -- life cycle ------------------------------------------------------------------------

    def start(self, timeout_s: float = 60.0) -> LocalCluster:
        """Start every node, create the cluster, and return once it is fully formed.

        Fully formed: every node reports cluster_state:ok with all 16384 slots assigned
        and knows every other node, every replica's link to its master is up, and all
        nodes agree on who owns which slot, so a client's first request is not redirected
        by a node that has not caught up yet."""
        if self._nodes:
            raise RuntimeError("this LocalCluster was started already")
        server, cli = _binary("redis-server"), _binary("redis-cli")
        deadline = time.monotonic() + timeout_s
        begun = time.monotonic()
        if not self._registered:
            atexit.register(self.stop)
            self._registered = True
        try:
            for _ in range(self.masters * (1 + self.replicas)):
                self._start_new_node(server, deadline)
            self._create(cli, deadline)
            self._wait(self._formed, deadline, "the cluster to form")
        except BaseException:
            self.stop()
            raise
        log.info(
            "Redis Cluster of %d masters and %d replicas up at %s in %.1f s",
            self.masters,
            self.masters * self.replicas,
            self.url,
            time.monotonic() - begun,
        )
        return self

    def stop(self) -> None:
        """SIGTERM every node, SIGKILL those still running after 5 s, remove their directories.

        Idempotent, and safe after a failed start."""
        for state in self._nodes.values():
            if state.alive():
                assert state.process is not None
                state.process.terminate()
                state.process.send_signal(signal.SIGCONT)  # a node paused with SIGSTOP must run to exit
        for state in self._nodes.values():
            self._reap(state, 5.0)
            shutil.rmtree(state.dir, ignore_errors=True)
            if state.janitor is not None:  # nothing left for it to do: let it go
                assert state.janitor.stdin is not None
                state.janitor.stdin.close()
                state.janitor.wait()
                state.janitor = None
        self._nodes.clear()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The first master's URL: a cluster client needs only one node to discover the rest."""
        if not self._nodes:
            raise RuntimeError("the cluster is not running")
        first = next(iter(self._nodes))
        return self._url(f"{first.host}:{first.port}")

    @property
    def startup_url(self) -> str:
        """Every node, as a list of startup nodes (``redis://h:p1,h:p2,.../0``): any one that answers will do."""
        if not self._nodes:
            raise RuntimeError("the cluster is not running")
        return self._url(",".join(f"{n.host}:{n.port}" for n in self._nodes))

    def _url(self, hosts: str) -> str:
        if self.tls is None:
            return f"redis://{hosts}/0"
        return f"rediss://{hosts}/0?ssl_ca_certs={quote(self.tls.ca_file)}"

    @property
    def nodes(self) -> list[ClusterNode]:
        """Every node started, in start order: the masters first, then the replicas."""
        return list(self._nodes)

    def masters_now(self) -> list[ClusterNode]:
        """The nodes that are masters now, by their own account; dead and unreachable nodes are left out."""
        return [node for node, role in self._roles() if role[0] == "master"]

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        """The live nodes replicating ``master``, by their own account (so also while ``master`` is dead)."""
        return [node for node, role in self._roles() if role[0] == "slave" and int(role[2]) == master.port]

    def node_for_slot(self, slot: int) -> ClusterNode:
        """The master that owns ``slot`` now, according to the first live node that answers."""
        if not 0 <= slot < SLOTS:
            raise ValueError(f"slot must be between 0 and {SLOTS - 1} (got {slot!r})")
        for node in self._live():
            try:
                owners = self._slot_owners(node)
            except redis.RedisError:
                continue
            for start, end, owner in owners:
                if start <= slot <= end:
                    return owner
            raise LookupError(f"slot {slot} is not assigned to any node")
        raise RuntimeError("no node of the cluster answers")

    def node_for_key(self, key: str) -> ClusterNode:
        """The master that holds ``key`` now (its slot by redis-py's own hashing, hash tags included)."""
        return self.node_for_slot(key_slot(key.encode()))

    # -- faults ------------------------------------------------------------------------------

    def kill(self, node: ClusterNode, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the node's process and reap it (SIGKILL if it outlives 10 s).

        SIGSTOP and SIGCONT are only sent: a paused node is a hung master, not a dead one."""
        state = self._state(node)
        if not state.alive():
            raise RuntimeError(f"node {node.address} is not running")
        assert state.process is not None
        state.process.send_signal(sig)
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            return
        self._reap(state, 10.0)
        log.info("Node %s stopped by %s", node.address, signal.Signals(sig).name)

    def restart(self, node: ClusterNode) -> None:
        """Start a killed node again on its ports and directory, so it rejoins with its nodes.conf.

        Returns once it answers PING; ``wait_ok`` waits for the cluster to accept it again. Without
        ``appendonly`` it comes back empty, as a real node without persistence would."""
        state = self._state(node)
        if state.alive():
            raise RuntimeError(f"node {node.address} is still running: kill it first")
        # Its old janitor would remove the directory once the old (dead) process is gone: kill it, never
        # release it, and give the new process a janitor of its own.
        if state.janitor is not None:
            state.janitor.kill()
            state.janitor.wait()
            state.janitor = None
        try:
            self._launch(state, _binary("redis-server"), time.monotonic() + _RESTART_TIMEOUT_S)
        except _PortTaken:
            raise RuntimeError(
                f"node {node.address} cannot restart: its port was taken meanwhile\n{state.log_tail()}"
            ) from None
        log.info("Node %s restarted", node.address)

    def failover(self, replica: ClusterNode, timeout_s: float = 30.0) -> None:
        """Promote ``replica`` with CLUSTER FAILOVER (its master agrees and hands over without losing writes).

        Returns once it reports role master and every live node has cluster_state:ok and the same
        slot owners. For a dead master, use ``kill`` and let the cluster promote the replica."""
        role = self._role(replica)
        if role[0] != "slave":
            raise ValueError(f"{replica.address} is not a replica (its role is {role[0]})")
        with self._client(replica) as client:
            client.execute_command("CLUSTER FAILOVER")
        deadline = time.monotonic() + timeout_s
        self._wait(lambda: self._role(replica)[0] == "master", deadline, f"{replica.address} to become master")
        self._wait(self._healthy, deadline, "cluster_state:ok on every live node after the failover")
        log.info("Node %s promoted to master", replica.address)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Wait until every live node reports cluster_state:ok and all of them agree on the slot owners."""
        self._wait(self._healthy, time.monotonic() + timeout_s, "cluster_state:ok on every live node")

    # -- starting ----------------------------------------------------------------------------

    def _start_new_node(self, server: str, deadline: float) -> None:
        """Start one node on fresh free ports, trying other ports if someone took the ones found free."""
        taken = {n.port for n in self._nodes} | {s.bus_port for s in self._nodes.values()}
        for _ in range(_PORT_ATTEMPTS):
            port, bus_port = _free_ports(2, taken)
            state = _Node(ClusterNode(self.host, port), bus_port, tempfile.mkdtemp(prefix=f"wqsim-cluster-{port}-"))
            self._nodes[state.node] = state  # before the launch: stop() must find it whatever happens
            try:
                self._launch(state, server, deadline)
                return
            except _PortTaken:
                log.debug("Port %d or %d was taken meanwhile; trying others", port, bus_port)
                del self._nodes[state.node]
                shutil.rmtree(state.dir, ignore_errors=True)
                if state.janitor is not None:
                    assert state.janitor.stdin is not None
                    state.janitor.stdin.close()
                    state.janitor.wait()
                taken |= {port, bus_port}
        raise RuntimeError(f"no free ports for a cluster node after {_PORT_ATTEMPTS} attempts")

    def _launch(self, state: _Node, server: str, deadline: float) -> None:
        """Start the node's redis-server and its janitor; return once it answers PING."""
        if self.tls is None:
            ports = ["--port", str(state.node.port)]
        else:  # TLS only, between the nodes too
            ports = ["--port", "0", "--tls-port", str(state.node.port), "--tls-cluster", "yes"]
            ports += ["--tls-replication", "yes", "--tls-auth-clients", "no"]
            ports += ["--tls-cert-file", self.tls.cert_file, "--tls-key-file", self.tls.key_file]
            ports += ["--tls-ca-cert-file", self.tls.ca_file]
        args = [
            server,
            *ports,
            "--bind",
            self.host,
            "--protected-mode",
            "yes",
            "--dir",
            state.dir,
            "--logfile",
            state.log_path,
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            str(state.bus_port),
            "--cluster-config-file",
            os.path.join(state.dir, "nodes.conf"),
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            # A replica's first sync: the master would wait 5 s for more replicas to share one transfer.
            "--repl-diskless-sync-delay",
            "0",
            "--cluster-require-full-coverage",
            "yes" if self.full_coverage else "no",
        ]
        with open(state.log_path, "ab") as stderr:  # errors before the log file is open (bad arguments) go there too
            state.process = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=_die_with_parent
            )
        state.janitor = _start_janitor(state.dir, state.process.pid)
        while not self._answers(state.node):
            if state.process.poll() is not None:
                tail = state.log_tail()
                if "Address already in use" in tail:
                    raise _PortTaken(state.node.port)
                raise RuntimeError(
                    f"redis-server for {state.node.address} exited at start (code {state.process.returncode}):\n{tail}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server for {state.node.address} did not answer in time:\n{state.log_tail()}")
            time.sleep(0.01)

    def _create(self, cli: str, deadline: float) -> None:
        """Join the nodes with redis-cli, which assigns the slots and pairs replicas with masters."""
        addresses = [node.address for node in self._nodes]
        command = [cli, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        if self.tls is not None:
            command += ["--tls", "--cacert", self.tls.ca_file]
        try:
            proc = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=max(deadline - time.monotonic(), 1.0),
                preexec_fn=_die_with_parent,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"redis-cli --cluster create did not finish in time\n{self._log_tails()}") from None
        if proc.returncode != 0:
            output = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-_LOG_TAIL_LINES:])
            raise RuntimeError(f"redis-cli --cluster create failed (code {proc.returncode}):\n{output}")

    # -- waiting -----------------------------------------------------------------------------

    def _wait(self, condition: Callable[[], bool], deadline: float, what: str) -> None:
        """Poll ``condition`` until it holds; past ``deadline``, raise with every node's log tail."""
        while True:
            try:
                if condition():
                    return
            except redis.RedisError as exc:  # a node restarting or just promoted: ask again
                log.debug("Waiting for %s: %s", what, exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}\n{self._log_tails()}")
            time.sleep(_POLL_S)

    def _formed(self) -> bool:
        """The cluster as created: all nodes up, all slots ok, all links up, one view of the slots."""
        if len(self._live()) != len(self._nodes):
            dead = [n.address for n, s in self._nodes.items() if not s.alive()]
            raise RuntimeError(f"nodes exited while the cluster was forming: {dead}\n{self._log_tails()}")
        for node in self._nodes:
            info = self._cluster_info(node)
            if (
                info.get("cluster_state") != "ok"
                or info.get("cluster_slots_assigned") != str(SLOTS)
                or info.get("cluster_known_nodes") != str(len(self._nodes))
            ):
                return False
        for node, role in self._roles():
            if role[0] == "slave" and role[3] != "connected":
                return False
            if role[0] == "slave" and self._replication(node).get("master_link_status") != "up":
                return False
        return len(self.masters_now()) == self.masters and self._healthy()

    def _healthy(self) -> bool:
        """cluster_state:ok on every live node, and every live node names the same owner for each slot."""
        live = self._live()
        if not live or any(self._cluster_info(node).get("cluster_state") != "ok" for node in live):
            return False
        views = {tuple(self._slot_owners(node)) for node in live}
        return len(views) == 1

    # -- asking the nodes --------------------------------------------------------------------

    @contextlib.contextmanager
    def _client(self, node: ClusterNode) -> Iterator[redis.Redis]:
        """A plain (not cluster) connection to one node: these questions are about that node.

        No retries: redis-py's default retry spends ~4 s on a refused connection, and a node that is
        down or still starting is an answer here, asked again at the next poll."""
        tls: dict[str, Any] = {} if self.tls is None else {"ssl": True, "ssl_ca_certs": self.tls.ca_file}
        client = redis.Redis(
            host=node.host,
            port=node.port,
            socket_connect_timeout=0.5,
            socket_timeout=2.0,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
            **tls,
        )
        try:
            yield client
        finally:
            client.close()

    def _answers(self, node: ClusterNode) -> bool:
        try:
            with self._client(node) as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False

    def _cluster_info(self, node: ClusterNode) -> dict[str, str]:
        with self._client(node) as client:
            text = str(client.execute_command("CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def _replication(self, node: ClusterNode) -> dict[str, Any]:
        with self._client(node) as client:
            return dict(client.info("replication"))

    def _role(self, node: ClusterNode) -> list[Any]:
        """ROLE: ["master", offset, replicas] or ["slave", master host, master port, link state, offset]."""
        with self._client(node) as client:
            return list(client.execute_command("ROLE"))

    def _roles(self) -> list[tuple[ClusterNode, list[Any]]]:
        roles = []
        for node in self._live():
            try:
                roles.append((node, self._role(node)))
            except (redis.ConnectionError, redis.TimeoutError):
                continue
        return roles

    def _slot_owners(self, node: ClusterNode) -> list[tuple[int, int, ClusterNode]]:
        """``node``'s view of the slots: (first, last, owning master), sorted."""
        with self._client(node) as client:
            reply = client.execute_command("CLUSTER", "SLOTS")
        owners = []
        for start, end, master, *_ in reply:
            owners.append((int(start), int(end), self._node_at(int(master[1]))))
        return sorted(owners, key=lambda owner: owner[0])

    def _node_at(self, port: int) -> ClusterNode:
        for node in self._nodes:
            if node.port == port:
                return node
        return ClusterNode(self.host, port)

    def _live(self) -> list[ClusterNode]:
        return [node for node, state in self._nodes.items() if state.alive()]

    def _state(self, node: ClusterNode) -> _Node:
        try:
            return self._nodes[node]
        except KeyError:
            raise ValueError(f"{node.address} is not a node of this cluster") from None

    def _reap(self, state: _Node, timeout_s: float) -> None:
        if state.process is None:
            return
        try:
            state.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            state.process.kill()
            state.process.wait()

    def _log_tails(self) -> str:
        return "\n".join(f"--- {node.address} ---\n{state.log_tail()}" for node, state in self._nodes.items())


def _free_ports(count: int, taken: set[int]) -> list[int]:
    """``count`` distinct free loopback ports, none of them in ``taken``."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in taken and port not in ports:
            ports.append(port)
    return ports


# -- python -m wqsim.local_cluster -----------------------------------------------------------


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)  # one line, no usage block


def main(argv: Sequence[str] | None = None) -> int:
    """Start a cluster, print its URL, keep it up until SIGINT or SIGTERM. Returns the exit code."""
    parser = _Parser(prog="python -m wqsim.local_cluster", description="Run a local Redis Cluster until stopped.")
    parser.add_argument("--masters", type=positive_int("masters"), default=3, help="master nodes, at least 3")
    parser.add_argument("--replicas", type=non_negative_int("replicas"), default=0, help="replicas per master")
    parser.add_argument("--appendonly", action="store_true", help="turn on append-only persistence on every node")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    prog = "wqsim.local_cluster"
    try:
        args = parser.parse_args(argv)
        cluster = LocalCluster(args.masters, args.replicas, appendonly=args.appendonly)
    except (_UsageError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # The entry point of its own process: the only place in this module that configures logging.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s.%(msecs)03d %(message)s",
        datefmt="%H:%M:%S",
    )
    with StopRequest() as stop:  # installed first: a Ctrl-C during the start stops it cleanly afterwards
        try:
            cluster.start()
        except FileNotFoundError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return EXIT_NO_BINARY
        except RuntimeError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 1
        try:
            print(
                f"Redis Cluster up: {cluster.url} ({args.masters} masters, {args.replicas} replicas)",
                flush=True,
            )
            stop.wait()
            log.info("Stopping the cluster (%s)", stop.reason)
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
