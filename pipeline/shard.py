"""Which worker counts which camera: rendezvous (highest-random-weight) hashing, no coordinator.

Worker ``I`` of ``N`` runs the cameras whose weight ``hash(camera, shard)`` is highest for shard
``I``. Every worker computes the same answer from the camera names alone, so nothing has to be
stored or agreed on: Kubernetes (a StatefulSet) owns placement and restarts, and

* a restarted worker takes back exactly its own cameras (the answer depends only on the name,
  ``I`` and ``N``);
* going from ``N`` to ``N + 1`` workers moves only the cameras the new shard wins, about
  ``1 / (N + 1)`` of them; none moves between the old shards;
* cameras spread evenly (each shard gets about ``1 / N``, binomially).

The hash is BLAKE2b of the camera name and the shard number: the same in every process, Python
version and machine (Python's own ``hash`` is salted per process).

Example::

    spec = parse_shard("auto/4")              # I from $CROWDSTREAM_SHARD or the hostname "...-2"
    mine = [c for c in cfg.cameras if spec.owns(c)]
    assign(["lobby", "gate", "hall"], 2)      # {0: [...], 1: [...]}
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SHARD_ENV = "CROWDSTREAM_SHARD"  # the worker's index, e.g. from the pod-index label
SPEC_RE = re.compile(r"^\s*(auto|\d+)\s*/\s*(\d+)\s*$")
ORDINAL_RE = re.compile(r"-(\d+)$")  # StatefulSet pod names: <statefulset>-<ordinal>


class ShardError(ValueError):
    """A shard spec that cannot be used; the message says what to write instead."""


def shard_weight(camera: str, shard: int) -> int:
    """The rendezvous weight of ``camera`` on ``shard``: 64 bits of BLAKE2b, stable everywhere."""
    digest = hashlib.blake2b(f"{shard}\x00{camera}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def shard_of(camera: str, count: int) -> int:
    """The shard (0 .. ``count`` - 1) that runs ``camera``; ties (never seen with 64 bits) go to
    the lower shard."""
    if count < 1:
        raise ShardError(f"the number of shards must be >= 1, got {count}")
    return max(range(count), key=lambda s: (shard_weight(camera, s), -s))


def assign(cameras: Iterable[str], count: int) -> dict[int, list[str]]:
    """Every shard's cameras (sorted), shards without a camera included."""
    out: dict[int, list[str]] = {s: [] for s in range(count)}
    for cam in sorted(cameras):
        out[shard_of(cam, count)].append(cam)
    return out


def moved(cameras: Iterable[str], before: int, after: int) -> list[str]:
    """The cameras whose shard differs between ``before`` and ``after`` shards."""
    return [c for c in cameras if shard_of(c, before) != shard_of(c, after)]


@dataclass(frozen=True)
class ShardSpec:
    """This worker's place: shard ``index`` of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ShardError(f"the number of shards must be >= 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ShardError(f"shard index {self.index} is not in 0..{self.count - 1} "
                             f"(shards are numbered from 0)")

    def owns(self, camera: str) -> bool:
        return shard_of(camera, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def ordinal_from_env(env: Mapping[str, str] | None = None, hostname: str | None = None) -> int:
    """The worker's index: ``$CROWDSTREAM_SHARD``, else the ordinal a StatefulSet puts at the end
    of the pod's hostname (``crowdstream-worker-3`` -> 3)."""
    env = os.environ if env is None else env
    value = env.get(SHARD_ENV, "").strip()
    if value:
        if not value.isdigit():
            raise ShardError(f"${SHARD_ENV} must be a shard index (0, 1, ...), got {value!r}")
        return int(value)
    host = socket.gethostname() if hostname is None else hostname
    m = ORDINAL_RE.search(host)
    if m is None:
        raise ShardError(f"'auto' needs the worker's index: set ${SHARD_ENV}, or run in a "
                         f"StatefulSet whose pod names end in -<ordinal> (hostname here: "
                         f"{host!r})")
    return int(m.group(1))


def parse_shard(text: str, env: Mapping[str, str] | None = None,
                hostname: str | None = None) -> ShardSpec:
    """``"I/N"`` or ``"auto/N"`` (I from ``ordinal_from_env``) -> ``ShardSpec``; ``ShardError``
    with a one-line reason otherwise."""
    m = SPEC_RE.match(text or "")
    if m is None:
        raise ShardError(f"expected I/N (e.g. 0/3) or auto/N, got {text!r}")
    index = ordinal_from_env(env, hostname) if m.group(1) == "auto" else int(m.group(1))
    return ShardSpec(index, int(m.group(2)))


__all__ = ["SHARD_ENV", "ShardError", "ShardSpec", "assign", "moved", "ordinal_from_env",
           "parse_shard", "shard_of", "shard_weight"]
