"""Shared-memory frame rings and tile batch buffers: frames never go through pickling.

A ``FrameRing`` is a fixed pool of frame slots inside ONE shared-memory segment. The control
channel is a pair of index FIFOs (free slots, ready slots) kept in the same segment, guarded by one
lock and two counting semaphores, so a ``put``/``get`` moves only a slot number; the per-frame
metadata (``FrameMeta``) is written into a fixed-size record next to the slot. Two policies:

* ``lossless`` -- ``put`` blocks until a slot is free: every frame is handed out exactly once, in
  order (files, evaluation).
* ``latest`` -- when no slot is free, ``put`` takes back the oldest frame nobody has read yet and
  counts it in ``drops`` (live cameras: latency never builds up).

Slots handed out by ``get`` are zero-copy views; the reader gives them back with ``release``. A
ring made with ``aux_bytes`` also carries a small byte blob per frame (``commit(..., aux=...)``,
read back with ``aux(slot)``): the recorder's overlay data travels that way.

The ring is transport only. The tile and post stages' bookkeeping about a camera's frames
(sequence numbers, tiled / emitted / lost counts, latency samples, the last counted index, the end
seen) is a separate ``FrameCounters`` record in the same segment, reached as ``ring.counters``:
one segment per camera, so the run's cleanup and leak check cover both.

Example (parent creates and owns the segment; a spawned child attaches through the handle)::

    ring = FrameRing.create("cs_1_cam0", slots=8, max_height=1080, max_width=1920, policy="lossless")
    child = ctx.Process(target=work, args=(ring.handle(),))      # work(): FrameRing.attach(h)
    ring.put(frame, FrameMeta("cam0", 0, 0.0, time.time(), 1080, 1920))
    got = ring.get(timeout=1.0)          # (slot, meta, view) | EndOfStream | None
    ...; ring.release(slot)
    ring.close(); ring.unlink()

``BatchPool`` is the same machinery for batches of tiles (tile -> inference -> post) with the model
outputs written back into the same slot (one pool per model; ``PoolSet`` serves a run's pools
together). ``ValueBoard`` is a fixed record of float64 values
(the post stage's live people counts, densities and alert flags, read by the supervisor for the
metrics). ``RunSegments`` names every segment of a run under one
run prefix (``run_prefix()``) and unlinks them all at the end; nothing of a run is made elsewhere.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any, Literal

import numpy as np

from engines.paths import cut_utf8
from pipeline.events import CameraStatus, EndOfStream

__all__ = [
    "BatchPool", "BatchPoolHandle", "CameraStatus", "EndOfStream", "FrameCounters", "FrameMeta",
    "FrameRing", "FrameRingHandle", "LATENCY_BUCKETS", "PoolSet", "RunSegments", "ShmSpaceError",
    "ValueBoard", "ValueBoardHandle", "check_shm_space", "default_rows",
    "run_prefix", "shm_free_bytes", "shm_segments",
]

Policy = Literal["lossless", "latest"]

# slot states (what a slot is doing right now; used to recover after a crashed process)
FREE, WRITING, READY, HELD, POSTED = 0, 1, 2, 3, 4
# batch slot states
B_FREE, B_FILLING, B_QUEUED, B_INFERRING, B_DONE, B_POSTING = 0, 1, 2, 3, 4, 5

# int64 header words (transport only: the stages' bookkeeping is a FrameCounters record)
_HDR_WORDS = 64
H_DROPS, H_PUTS, H_GETS, H_END, H_LAST_PUT, H_REFUSED = 0, 1, 2, 3, 4, 5
H_BATCHES, H_TILES, H_REQUEUED, H_INFER_NS, H_REUSED = 10, 11, 12, 13, 14
_FIFO_BASE = 32  # head, tail pairs from here on
_REASON_BYTES = 128
LATENCY_SAMPLES = 2048
# capture->result latency histogram bucket bounds (seconds, Prometheus ``le``): 10 ms .. 60 s
LATENCY_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)
_ALIGN = 64


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class ShmSpaceError(RuntimeError):
    """/dev/shm cannot hold the segments a run needs (raised at start, not as a bus error later)."""


def shm_free_bytes() -> int | None:
    """Free bytes in /dev/shm (None where there is no /dev/shm, e.g. macOS)."""
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return None


def check_shm_space(need_bytes: int, what: str = "this run") -> None:
    """Raise ``ShmSpaceError`` naming the computed need when /dev/shm is too small.

    tmpfs allocates pages lazily, so an oversized segment is created fine and the process dies
    with SIGBUS the first time it touches a page that does not fit: check up front instead.
    """
    free = shm_free_bytes()
    if free is not None and need_bytes > free:
        raise ShmSpaceError(
            f"/dev/shm too small: {what} needs {need_bytes / 2**20:.1f} MiB of shared memory, "
            f"only {free / 2**20:.1f} MiB free. Lower runtime.frame_slots / runtime.batch_slots / "
            f"runtime.max_frame_width/height, or enlarge /dev/shm (docker run --shm-size=...)")


NAME_BYTES = 96  # a camera name's room in a frame record (UTF-8)


def fit_name(name: str, max_bytes: int = NAME_BYTES) -> str:
    """``name`` as a fixed-size record holds it: unchanged when its UTF-8 fits ``max_bytes``,
    else cut at a character boundary with ``~`` and 8 hex digits of its SHA-1 appended (two
    long names never collide; a consumer maps it back with the ring's ``camera``).

    Example::

        fit_name("lobby") == "lobby"
        len(fit_name("大厅" * 40).encode()) <= 96     # '大厅大厅...~3f2a9c01'
    """
    data = name.encode()
    if len(data) <= max_bytes:
        return name
    tag = "~" + hashlib.sha1(data).hexdigest()[:8]
    return cut_utf8(name, max_bytes - len(tag)) + tag


_FRAME_META = np.dtype([
    ("camera", f"S{NAME_BYTES}"), ("frame_index", "<i8"), ("pts", "<f8"), ("capture_ts", "<f8"),
    ("height", "<i4"), ("width", "<i4"), ("aux_len", "<i8"),
    ("session", "<i8"),  # the source session (FrameMeta.session)
])

# the stages' per-camera bookkeeping, followed by LATENCY_SAMPLES float64 latencies and the
# latency histogram (one int64 per LATENCY_BUCKETS bound, plus +Inf; not cumulative)
_COUNTERS = np.dtype([
    ("seq", "<i8"), ("tiled", "<i8"), ("emitted", "<i8"), ("lost", "<i8"), ("eos_seen", "<i8"),
    ("last_index", "<i8"), ("lat_n", "<i8"), ("lat_sum", "<f8"), ("first_capture_ts", "<f8"),
    ("last_result_ts", "<f8"),
    # the post process's outputs: messages queued for / delivered to Redis, frames not recorded
    ("out_queued", "<i8"), ("out_delivered", "<i8"), ("unrecorded", "<i8"),
    ("tiles", "<i8"), ("tiles_reused", "<i8"),  # tile stage: tiles cut / reused (motion gate)
    ("ends_out", "<i8"),  # post: end states (finished, offline) handed to the sinks
])

_TILE_DESC = np.dtype([
    ("cam", "<i4"), ("fslot", "<i4"), ("tile", "<i4"), ("ntiles", "<i4"), ("seq", "<i8"),
    ("frame_index", "<i8"), ("pts", "<f8"), ("capture_ts", "<f8"), ("height", "<i4"),
    ("width", "<i4"), ("frame_height", "<i4"), ("frame_width", "<i4"),
    ("out", "<i4"), ("pad", "<i4"),
])  # height/width: the frame as tiled (after the resize rule); frame_*: as decoded; out: the
# row of tiles()/outputs() holding this tile, -1 for a tile the motion gate reused (not run)

# n: descriptor rows, k: tiles to run (rows of tiles()/outputs(); k <= n, k = n without reuse)
_BATCH_META = np.dtype([("n", "<i4"), ("k", "<i4"), ("batch_id", "<i8"), ("t_submit", "<f8")])


@dataclass
class FrameMeta:
    """What travels with a frame: camera, monotonic per-camera index, source PTS, wall-clock time,
    and the source session it came from (``session``: ingest gives each opening of the source, a
    reconnect or a file's loop, a new id; 0: unknown. The motion gate recounts a whole frame when
    it changes)."""

    camera: str
    frame_index: int
    pts: float | None
    capture_ts: float
    height: int
    width: int
    session: int = 0


class _Queues:
    """Slots + index FIFOs + state in one segment. All FIFO edits happen under ``lock``; each FIFO
    has a counting semaphore holding one token per entry (plus one sticky token after an end)."""

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool, slots: int, nfifo: int,
                 meta_dtype: np.dtype, extra_bytes: int, lock: Any, sems: tuple[Any, ...]) -> None:
        self.shm = shm
        self.owner = owner
        self.slots = slots
        self.cap = slots + 1
        self.lock = lock
        self.sems = sems
        base = np.ndarray((shm.size,), np.uint8, buffer=shm.buf)
        self._base = base
        off = 0
        self.hdr = base[off:off + _HDR_WORDS * 8].view(np.int64)
        off += _HDR_WORDS * 8
        self.reason = base[off:off + _REASON_BYTES]
        off += _REASON_BYTES
        n = nfifo * self.cap * 4
        self.fifos = base[off:off + n].view(np.int32).reshape(nfifo, self.cap)
        off = _align(off + n)
        self.state = base[off:off + slots]
        off = _align(off + slots)
        n = slots * meta_dtype.itemsize
        self.meta = base[off:off + n].view(meta_dtype)
        off = _align(off + n)
        self.extra = base[off:off + extra_bytes]
        self.data_off = _align(off + extra_bytes)

    @staticmethod
    def header_bytes(slots: int, nfifo: int, meta_dtype: np.dtype, extra_bytes: int) -> int:
        off = _HDR_WORDS * 8 + _REASON_BYTES
        off = _align(off + nfifo * (slots + 1) * 4)
        off = _align(off + slots)
        off = _align(off + slots * meta_dtype.itemsize)
        return _align(off + extra_bytes)

    # --- FIFO primitives (caller holds the lock) ---
    def _len(self, f: int) -> int:
        return int(self.hdr[_FIFO_BASE + 2 * f + 1] - self.hdr[_FIFO_BASE + 2 * f])

    def _push(self, f: int, slot: int, front: bool = False) -> None:
        h = _FIFO_BASE + 2 * f
        if front:
            head = int(self.hdr[h]) - 1
            self.fifos[f, head % self.cap] = slot
            self.hdr[h] = head
        else:
            tail = int(self.hdr[h + 1])
            self.fifos[f, tail % self.cap] = slot
            self.hdr[h + 1] = tail + 1

    def _pop(self, f: int) -> int:
        h = _FIFO_BASE + 2 * f
        head = int(self.hdr[h])
        slot = int(self.fifos[f, head % self.cap])
        self.hdr[h] = head + 1
        return slot

    def _acquire(self, f: int, timeout: float | None) -> bool:
        if timeout is not None and timeout <= 0:
            return self.sems[f].acquire(False)
        return self.sems[f].acquire(True, timeout)

    def _reset_sem(self, f: int, value: int) -> None:
        while self.sems[f].acquire(False):
            pass
        for _ in range(value):
            self.sems[f].release()

    def break_stale_lock(self, wait_s: float = 2.0) -> bool:
        """Release the lock if a process died holding it (SIGKILL inside a critical section).

        Critical sections last microseconds, so a lock nobody can take for ``wait_s`` belongs to
        a dead process. Only the supervisor calls this, right after it saw a child die. Returns
        True when it broke the lock."""
        if self.lock.acquire(True, wait_s):
            self.lock.release()
            return False
        self.lock.release()  # an mp.Lock may be released by any process
        return True

    def close(self) -> None:
        for attr in ("hdr", "reason", "fifos", "state", "meta", "extra", "_base"):
            setattr(self, attr, None)
        try:
            self.shm.close()
        except BufferError:
            # a caller still holds a zero-copy view; the mapping goes away with the process
            pass

    def unlink(self) -> None:
        try:
            self.shm.unlink()
        except FileNotFoundError:
            pass


def _create_segment(name: str, size: int, what: str) -> shared_memory.SharedMemory:
    check_shm_space(size, what)
    return shared_memory.SharedMemory(name=name, create=True, size=size)


class FrameCounters:
    """The tile and post stages' bookkeeping about one camera's frames, in shared memory.

    Kept apart from the ring's transport (slots, FIFOs, drops) but in the ring's segment, so it
    survives a stage restart: the sequence number the tile stage gives each frame, how many frames
    were tiled, emitted (counted) and lost, the last counted frame index, recent capture->result
    latencies with a histogram of all of them (``LATENCY_BUCKETS``), the capture time of the
    first counted frame and the time of the last result (the camera's counting rate), whether
    the tile stage has seen the end of the stream, the tiles cut and those the motion gate
    reused, what became of the counted frames' outputs: messages queued for Redis and
    delivered to it (``queued - delivered`` were never published: evicted from the outage buffer,
    unsent at close, lost with a killed post process, refused) and frames the recorder skipped,
    and how many end states (finished, offline) the post stage handed to the sinks. Each field
    has one writer (tile: seq, tiled, eos_seen, tiles, tiles_reused; post: emitted, last_index,
    latencies, out_queued, unrecorded, ends_out; post's publisher thread: out_delivered; lost:
    post, or the supervisor while the readers are stopped), so no lock is needed; a restarted
    process adds to what its predecessor left.

    Example::

        c = ring.counters
        seq = c.next_seq()                       # tile stage
        c.record_result(0.08, frame_index=12)    # post stage
        c.stats()["emitted"], c.latency_histogram()
    """

    NBYTES = (_align(_COUNTERS.itemsize) + LATENCY_SAMPLES * 8
              + (len(LATENCY_BUCKETS) + 1) * 8)

    def __init__(self, buf: np.ndarray) -> None:
        self._rec = buf[:_COUNTERS.itemsize].view(_COUNTERS)
        off = _align(_COUNTERS.itemsize)
        self._lat = buf[off:off + LATENCY_SAMPLES * 8].view(np.float64)
        off += LATENCY_SAMPLES * 8
        self._hist = buf[off:off + (len(LATENCY_BUCKETS) + 1) * 8].view(np.int64)

    def reset(self) -> None:
        """All zero, no frame counted yet (the owner does this once, at creation)."""
        self._rec[0] = 0
        self._rec[0]["last_index"] = -1
        self._hist[:] = 0

    def _add(self, key: str, n: int = 1) -> int:
        v = int(self._rec[0][key])
        self._rec[0][key] = v + n
        return v

    def next_seq(self) -> int:
        """Per-camera sequence number for the next tiled frame (survives a tile-stage restart)."""
        self._add("tiled")
        return self._add("seq")

    def set_eos_seen(self) -> None:
        self._rec[0]["eos_seen"] = 1

    def record_tiles(self, total: int, reused: int = 0) -> None:
        """Tile stage: a frame was cut into ``total`` tiles, ``reused`` of them not run again
        (the motion gate kept their last density)."""
        self._add("tiles_reused", reused)
        self._add("tiles", total)

    def record_result(self, latency_s: float, frame_index: int = -1) -> None:
        """Post stage: frame ``frame_index`` was counted, capture->result ``latency_s`` later.
        Everything else is written before ``emitted``, so a reader that sees the frame emitted
        also sees its latency."""
        rec = self._rec[0]
        now = time.time()
        if not rec["emitted"]:
            rec["first_capture_ts"] = now - latency_s
        rec["last_result_ts"] = now
        rec["last_index"] = frame_index
        n = self._add("lat_n")
        self._lat[n % LATENCY_SAMPLES] = latency_s
        self._hist[bisect.bisect_left(LATENCY_BUCKETS, latency_s)] += 1
        rec["lat_sum"] += latency_s
        self._add("emitted")

    def record_lost(self, n: int = 1) -> None:
        """Frames that will never be counted (incomplete tiles, readers killed holding them)."""
        self._add("lost", n)

    def record_output(self, queued: int = 0, delivered: int = 0, unrecorded: int = 0) -> None:
        """Post process: messages queued for / delivered to Redis, frames the recorder skipped
        (each argument from one thread only: see the class docstring)."""
        if queued:
            self._add("out_queued", queued)
        if delivered:
            self._add("out_delivered", delivered)
        if unrecorded:
            self._add("unrecorded", unrecorded)

    def record_end_out(self) -> None:
        """Post stage: an end state of the camera reached the sinks (the supervisor waits for
        it before the run ends, so every sink has the end before the stages stop)."""
        self._add("ends_out")

    def latency_samples(self) -> np.ndarray:
        n = min(int(self._rec[0]["lat_n"]), LATENCY_SAMPLES)
        return self._lat[:n].copy()

    def latency_histogram(self) -> tuple[list[int], float]:
        """Every latency recorded so far: per-bucket counts (one per ``LATENCY_BUCKETS`` bound,
        then +Inf; not cumulative) and their sum in seconds."""
        return [int(v) for v in self._hist], float(self._rec[0]["lat_sum"])

    def counting_span(self) -> tuple[float, float] | None:
        """(capture time of the first counted frame, time of the last result), wall clock; None
        before the first result. Frames counted / its length = the camera's counting rate."""
        r = self._rec[0]
        if not int(r["emitted"]):
            return None
        return float(r["first_capture_ts"]), float(r["last_result_ts"])

    def stats(self) -> dict[str, int]:
        r = self._rec[0]
        return {k: int(r[k]) for k in ("tiled", "emitted", "lost", "eos_seen", "last_index",
                                        "out_queued", "out_delivered", "unrecorded", "tiles",
                                        "tiles_reused", "ends_out")}

    def close(self) -> None:
        self._rec = self._lat = self._hist = None  # type: ignore[assignment]


@dataclass
class FrameRingHandle:
    """Everything a spawned child needs to attach (pass it as a ``Process`` argument: the lock
    and semaphores inside may only travel through process creation, not through a queue)."""

    name: str
    slots: int
    max_height: int
    max_width: int
    policy: Policy
    lock: Any
    sems: tuple[Any, ...]
    aux_bytes: int = 0
    camera: str = ""  # the camera whose frames it carries: records hold fit_name(camera)


class FrameRing:
    """A fixed pool of BGR frame slots in one shared-memory segment (see the module docstring)."""

    _F_FREE, _F_READY = 0, 1

    def __init__(self, q: _Queues, handle: FrameRingHandle) -> None:
        self._q = q
        self._h = handle
        self.slot_bytes = handle.max_height * handle.max_width * 3
        self._stride = _align(self.slot_bytes) + _align(handle.aux_bytes)
        self.counters = FrameCounters(q.extra)
        self._fitted = fit_name(handle.camera)

    @staticmethod
    def nbytes(slots: int, max_height: int, max_width: int, aux_bytes: int = 0) -> int:
        """Size of the segment ``create`` makes (for up-front /dev/shm checks)."""
        return (_Queues.header_bytes(slots, 2, _FRAME_META, FrameCounters.NBYTES)
                + slots * (_align(max_height * max_width * 3) + _align(aux_bytes)))

    @classmethod
    def create(cls, name: str, slots: int, max_height: int, max_width: int,
               policy: Policy, aux_bytes: int = 0, camera: str = "") -> FrameRing:
        """Create (and own) a ring; raises ``ShmSpaceError`` when /dev/shm cannot hold it.
        ``aux_bytes``: room for a byte blob beside each frame (``commit(..., aux=...)``);
        ``camera``: the camera it carries (``get`` gives its full name back, however long)."""
        if slots < 2:
            raise ValueError(f"a frame ring needs at least 2 slots, got {slots}")
        if policy not in ("lossless", "latest"):
            raise ValueError(f"policy must be 'lossless' or 'latest', got {policy!r}")
        if max_height < 1 or max_width < 1:
            raise ValueError(f"bad frame size {max_height}x{max_width}")
        ctx = mp.get_context("spawn")
        size = cls.nbytes(slots, max_height, max_width, aux_bytes)
        shm = _create_segment(name, size, f"frame ring {name!r} ({slots} slots of "
                                          f"{max_width}x{max_height})")
        handle = FrameRingHandle(name, slots, max_height, max_width, policy, ctx.Lock(),
                                 (ctx.Semaphore(0), ctx.Semaphore(0)), aux_bytes, camera)
        q = _Queues(shm, True, slots, 2, _FRAME_META, FrameCounters.NBYTES, handle.lock,
                    handle.sems)
        q.hdr[:] = 0
        q.hdr[H_LAST_PUT] = -1
        q.state[:] = FREE
        for s in range(slots):
            q._push(cls._F_FREE, s)
        q._reset_sem(cls._F_FREE, slots)
        ring = cls(q, handle)
        ring.counters.reset()
        return ring

    def handle(self) -> FrameRingHandle:
        return self._h

    @classmethod
    def attach(cls, handle: FrameRingHandle) -> FrameRing:
        shm = shared_memory.SharedMemory(name=handle.name, create=False)
        q = _Queues(shm, False, handle.slots, 2, _FRAME_META, FrameCounters.NBYTES, handle.lock,
                    handle.sems)
        return cls(q, handle)

    @property
    def name(self) -> str:
        return self._h.name

    @property
    def policy(self) -> Policy:
        return self._h.policy

    @property
    def slots(self) -> int:
        return self._h.slots

    @property
    def aux_capacity(self) -> int:
        """Bytes of the blob each slot can carry beside its frame (0: none)."""
        return self._h.aux_bytes

    def _view(self, slot: int, h: int, w: int) -> np.ndarray:
        off = self._q.data_off + slot * self._stride
        return self._q._base[off:off + h * w * 3].reshape(h, w, 3)

    def _aux_view(self, slot: int, n: int) -> np.ndarray:
        off = self._q.data_off + slot * self._stride + _align(self.slot_bytes)
        return self._q._base[off:off + n]

    def aux(self, slot: int) -> bytes:
        """A copy of the blob committed with the frame in ``slot`` (b"" when none)."""
        return self._aux_view(slot, int(self._q.meta[slot]["aux_len"])).tobytes()

    # --- producer side ---
    def _take_free(self, timeout: float | None) -> int | None:
        q = self._q
        if self._h.policy == "latest" and not q._acquire(self._F_FREE, 0):
            # no free slot: reclaim the oldest frame nobody has read yet
            if q._acquire(self._F_READY, 0):
                with q.lock:
                    if q._len(self._F_READY) > 0:
                        slot = q._pop(self._F_READY)
                        q.state[slot] = WRITING
                        q.hdr[H_DROPS] += 1
                        return slot
                    q.sems[self._F_READY].release()  # it was the sticky end token
            if not q._acquire(self._F_FREE, timeout):  # readers hold every slot: wait
                return None
        elif self._h.policy == "lossless" and not q._acquire(self._F_FREE, timeout):
            return None
        with q.lock:
            slot = q._pop(self._F_FREE)
            q.state[slot] = WRITING
        return slot

    def put(self, frame: np.ndarray, meta: FrameMeta, timeout: float | None = None) -> bool:
        """Copy a BGR uint8 (h, w, 3) frame into a slot. ``lossless``: waits for a free slot
        (False on timeout). ``latest``: reclaims the oldest unread slot and counts the drop; when
        readers hold every slot it waits up to ``timeout``, then drops THIS frame (counted too,
        returns False). So under ``latest``: frames offered = read + ``drops`` (+ ``depth``)."""
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected a BGR uint8 (h, w, 3) frame, got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        if h > self._h.max_height or w > self._h.max_width:
            raise ValueError(f"frame {w}x{h} is larger than the ring's slots "
                             f"({self._h.max_width}x{self._h.max_height}); raise "
                             f"runtime.max_frame_width/height")
        got = self.reserve(h, w, timeout)  # under `latest`, a refused frame counts as dropped
        if got is None:
            return False
        slot, view = got
        np.copyto(view, frame)
        self.commit(slot, FrameMeta(meta.camera, meta.frame_index, meta.pts, meta.capture_ts,
                                    h, w, meta.session))
        return True

    def reserve(self, height: int, width: int,
                timeout: float | None = None) -> tuple[int, np.ndarray] | None:
        """Write-in-place path: a free slot and its (height, width, 3) uint8 view, for a producer
        that decodes / converts straight into shared memory (saves ``put``'s copy). Same policy
        rules as ``put`` (None on timeout; under ``latest`` that counts as a drop). Follow with
        ``commit`` (or ``abort``)."""
        if height > self._h.max_height or width > self._h.max_width or height < 1 or width < 1:
            raise ValueError(f"frame {width}x{height} does not fit the ring's slots "
                             f"({self._h.max_width}x{self._h.max_height})")
        slot = self._take_free(timeout)
        if slot is None:
            if self._h.policy == "latest":
                with self._q.lock:
                    self._q.hdr[H_DROPS] += 1
                    self._q.hdr[H_REFUSED] += 1  # dropped without ever entering the ring
            return None
        return slot, self._view(slot, height, width)

    def commit(self, slot: int, meta: FrameMeta, aux: bytes = b"") -> None:
        """Publish a slot filled through ``reserve`` (``meta.height/width`` = the reserved size),
        with an optional blob of at most ``aux_capacity`` bytes."""
        q = self._q
        if q.state[slot] != WRITING:
            raise ValueError(f"slot {slot} of ring {self.name!r} was not reserved")
        if len(aux) > self._h.aux_bytes:
            raise ValueError(f"{len(aux)} bytes of aux data, ring {self.name!r} holds "
                             f"{self._h.aux_bytes} per slot")
        if aux:
            self._aux_view(slot, len(aux))[:] = np.frombuffer(aux, np.uint8)
        m = q.meta[slot]
        m["aux_len"] = len(aux)
        m["camera"] = fit_name(meta.camera).encode()
        m["frame_index"] = meta.frame_index
        m["pts"] = math.nan if meta.pts is None else meta.pts
        m["capture_ts"] = meta.capture_ts
        m["height"] = meta.height
        m["width"] = meta.width
        m["session"] = meta.session
        with q.lock:
            q.state[slot] = READY
            q._push(self._F_READY, slot)
            q.hdr[H_PUTS] += 1
            q.hdr[H_LAST_PUT] = meta.frame_index
        q.sems[self._F_READY].release()

    @property
    def last_frame_index(self) -> int:
        """``frame_index`` of the last frame written (-1: none yet): a restarted producer
        continues from here so a camera's indices stay monotonic across process restarts."""
        return int(self._q.hdr[H_LAST_PUT])

    def abort(self, slot: int) -> None:
        """Give back a reserved slot without publishing it."""
        q = self._q
        with q.lock:
            if q.state[slot] != WRITING:
                raise ValueError(f"slot {slot} of ring {self.name!r} was not reserved")
            q.state[slot] = FREE
            q._push(self._F_FREE, slot)
        q.sems[self._F_FREE].release()

    def put_end(self, reason: str = "finished") -> None:
        """Mark the end of the stream; readers see ``EndOfStream`` after every queued frame."""
        q = self._q
        data = cut_utf8(reason, _REASON_BYTES - 1).encode()
        with q.lock:
            if q.hdr[H_END]:
                return
            q.reason[:] = 0
            q.reason[:len(data)] = np.frombuffer(data, np.uint8)
            q.hdr[H_END] = 1
        q.sems[self._F_READY].release()

    # --- consumer side ---
    def get(self, timeout: float | None = None) -> tuple[int, FrameMeta, np.ndarray] | EndOfStream | None:
        """The oldest ready frame as ``(slot, meta, zero-copy view)``, ``EndOfStream`` once the
        stream has ended and drained, or None on timeout. Give the slot back with ``release``."""
        q = self._q
        if not q._acquire(self._F_READY, timeout):
            return None
        with q.lock:
            if q._len(self._F_READY) == 0:
                if q.hdr[H_END]:
                    q.sems[self._F_READY].release()  # sticky: every later get sees the end too
                    return EndOfStream(bytes(q.reason).rstrip(b"\0").decode(errors="replace"))
                return None  # token without an entry cannot happen; be safe
            slot = q._pop(self._F_READY)
            q.state[slot] = HELD
            q.hdr[H_GETS] += 1
            m = q.meta[slot].copy()
        h, w = int(m["height"]), int(m["width"])
        pts = float(m["pts"])
        meta = FrameMeta(self._camera_of(m["camera"]), int(m["frame_index"]),
                         None if math.isnan(pts) else pts, float(m["capture_ts"]), h, w,
                         int(m["session"]))
        return slot, meta, self._view(slot, h, w)

    def _camera_of(self, record: bytes) -> str:
        """The real camera name of a frame record (``fit_name`` cut a long one)."""
        name = record.decode(errors="replace")
        cam = self._h.camera
        return cam if cam and name == self._fitted else name

    def frame(self, slot: int) -> np.ndarray:
        """Zero-copy view of a slot's frame (for a later stage that was handed the slot number)."""
        m = self._q.meta[slot]
        return self._view(slot, int(m["height"]), int(m["width"]))

    def mark_posted(self, slot: int) -> None:
        """The tile stage is done with a slot; the post stage will ``release`` it."""
        self._q.state[slot] = POSTED

    def release(self, slot: int) -> None:
        """Give a slot back to the free pool."""
        q = self._q
        with q.lock:
            if q.state[slot] not in (HELD, POSTED):
                raise ValueError(f"slot {slot} of ring {self.name!r} is not held by a reader")
            q.state[slot] = FREE
            q._push(self._F_FREE, slot)
        q.sems[self._F_FREE].release()

    # --- recovery (supervisor) ---
    def recover_readers(self) -> int:
        """Return every slot held by readers to the free pool (after the reading processes were
        stopped). Returns how many frames were lost that way (also added to ``counters.lost``)."""
        q = self._q
        n = 0
        with q.lock:
            for s in range(self.slots):
                if q.state[s] in (HELD, POSTED):
                    q.state[s] = FREE
                    q._push(self._F_FREE, s)
                    n += 1
        self.counters.record_lost(n)
        for _ in range(n):
            q.sems[self._F_FREE].release()
        return n

    def break_stale_lock(self, wait_s: float = 2.0) -> bool:
        """See ``_Queues.break_stale_lock`` (supervisor only, after a child died)."""
        return self._q.break_stale_lock(wait_s)

    def recover_writer(self) -> int:
        """Free the slot a crashed producer was writing into (or had marked ready without
        queueing it: killed inside ``commit``)."""
        q = self._q
        n = 0
        with q.lock:
            h = _FIFO_BASE + 2 * self._F_READY
            queued = {int(q.fifos[self._F_READY, i % q.cap])
                      for i in range(int(q.hdr[h]), int(q.hdr[h + 1]))}
            for s in range(self.slots):
                if q.state[s] == WRITING or (q.state[s] == READY and s not in queued):
                    q.state[s] = FREE
                    q._push(self._F_FREE, s)
                    n += 1
        for _ in range(n):
            q.sems[self._F_FREE].release()
        return n

    # --- transport counters ---
    @property
    def drops(self) -> int:
        """Exact number of frames the ``latest`` policy dropped."""
        return int(self._q.hdr[H_DROPS])

    @property
    def depth(self) -> int:
        """Frames waiting to be read."""
        q = self._q
        return q._len(self._F_READY)

    @property
    def ended(self) -> bool:
        return bool(self._q.hdr[H_END])

    def stats(self) -> dict[str, int]:
        """The transport's counters and, for the metrics' convenience, the stages' ones.

        ``puts``: frames written; ``refused``: frames ``latest`` dropped before they got a slot
        (also in ``drops``, with the unread frames it reclaimed). So frames offered = ``puts`` +
        ``refused`` = emitted + drops + lost + in flight. The counters are read downstream first
        (emitted, lost, drops) and the frames offered last, so a frame moving while they are
        read can only make "in flight" look larger, never negative."""
        c = self.counters.stats()
        h = self._q.hdr
        drops = int(h[H_DROPS])
        return {"drops": drops, "refused": int(h[H_REFUSED]), "puts": int(h[H_PUTS]),
                "gets": int(h[H_GETS]), "depth": self.depth, "ended": int(h[H_END]), **c}

    def close(self) -> None:
        self.counters.close()
        self._q.close()

    def unlink(self) -> None:
        self._q.unlink()


@dataclass
class BatchPoolHandle:
    """Name + lock/semaphores of a batch pool. Made before the pool's geometry is known (the
    inference process learns the model's window), so it can be handed to that process at spawn.
    ``wake``: two semaphores (a batch to run, a batch to post) shared by the pools of one run
    when it has several (one per model), so one process can wait on all of them (``PoolSet``)."""

    name: str
    slots: int
    lock: Any
    sems: tuple[Any, ...]
    wake: tuple[Any, Any] | None = None


_H_GEOM = 20  # max_batch, window h, window w, block, descriptor rows


def default_rows(max_batch: int) -> int:
    """Descriptor rows per batch slot: room for tiles the motion gate reuses (a row each, no
    tile data) beside the ``max_batch`` tiles that run, so reuse never shrinks engine batches."""
    return max(4 * max_batch, 32)


class BatchPool:
    """Shared-memory batch buffers: ``max_batch`` tiles (float32 RGB, 3 x window) per slot, the
    model's outputs for them, and ``rows`` descriptors per slot (which camera / frame / tile each
    row is, and ``out``: its row of ``tiles``/``outputs``, or -1 for a tile the motion gate
    reused: it has a descriptor but is not run, so a frame whose tiles are all reused still
    travels to the post stage in order).

    Flow: tile ``acquire`` -> fill ``tiles(slot)`` and ``desc(slot)`` -> ``submit(slot, n, k)``
    (n rows, the first k tiles to run) -> inference ``take_infer`` -> write ``outputs(slot)[:k]``
    -> ``done_infer`` -> post ``take_post`` -> ``release``. Batches reach post in submission
    order, also across an inference restart (``requeue_inference`` puts the batch a dead
    inference process held back at the front). The geometry lives in the segment's header:
    ``attach`` needs only the handle.

    Example::

        pool = BatchPool.create("cs_1_batches", slots=4, max_batch=8, window=(384, 384), block=8)
        slot = pool.acquire(timeout=1.0); pool.tiles(slot)[:n] = ...; pool.submit(slot, n)
    """

    _F_FREE, _F_INFER, _F_POST = 0, 1, 2

    def __init__(self, q: _Queues, handle: BatchPoolHandle) -> None:
        self._q = q
        self._h = handle
        mb, wh, ww, b, rows = (int(v) for v in q.hdr[_H_GEOM:_H_GEOM + 5])
        self.window = (wh, ww)
        self.block = b
        self._max_batch = mb
        self.max_rows = rows
        self.tile_shape = (3, wh, ww)
        self.out_shape = (1, wh // b, ww // b)
        self._tile_bytes, self._out_bytes, self._desc_bytes = self._sizes(mb, (wh, ww), b, rows)
        self._slot_bytes = (_align(self._tile_bytes) + _align(self._out_bytes)
                            + _align(self._desc_bytes))

    @staticmethod
    def _sizes(max_batch: int, window: tuple[int, int], block: int,
               rows: int) -> tuple[int, int, int]:
        wh, ww = window
        return (max_batch * 3 * wh * ww * 4, max_batch * (wh // block) * (ww // block) * 4,
                rows * _TILE_DESC.itemsize)

    @staticmethod
    def nbytes(slots: int, max_batch: int, window: tuple[int, int], block: int,
               rows: int | None = None) -> int:
        """Size of the segment (for up-front /dev/shm checks)."""
        rows = default_rows(max_batch) if rows is None else rows
        per = sum(_align(n) for n in BatchPool._sizes(max_batch, window, block, rows))
        return _Queues.header_bytes(slots, 3, _BATCH_META, 0) + slots * per

    @staticmethod
    def prepare(name: str, slots: int, wake: tuple[Any, Any] | None = None) -> BatchPoolHandle:
        """The handle (name, lock, semaphores) of a pool ``create_from`` makes later; ``wake``:
        the run's shared wake-up semaphores when it has several pools (``PoolSet.wake_pair``)."""
        if slots < 2:
            raise ValueError(f"a batch pool needs at least 2 slots, got {slots}")
        ctx = mp.get_context("spawn")
        return BatchPoolHandle(name, slots, ctx.Lock(),
                               (ctx.Semaphore(0), ctx.Semaphore(0), ctx.Semaphore(0)), wake)

    @classmethod
    def create_from(cls, handle: BatchPoolHandle, max_batch: int, window: tuple[int, int],
                    block: int, rows: int | None = None) -> BatchPool:
        """Create (and own) the segment for a prepared handle (``rows``: descriptor rows per
        slot, default ``default_rows(max_batch)``)."""
        rows = default_rows(max_batch) if rows is None else rows
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if rows < max_batch:
            raise ValueError(f"rows ({rows}) must be >= max_batch ({max_batch})")
        if window[0] % block or window[1] % block:
            raise ValueError(f"window {window} is not a multiple of the block size {block}")
        size = cls.nbytes(handle.slots, max_batch, window, block, rows)
        shm = _create_segment(handle.name, size, f"batch pool {handle.name!r} ({handle.slots} x "
                                                 f"{max_batch} tiles of {window[1]}x{window[0]})")
        q = _Queues(shm, True, handle.slots, 3, _BATCH_META, 0, handle.lock, handle.sems)
        q.hdr[:] = 0
        q.hdr[_H_GEOM:_H_GEOM + 5] = (max_batch, window[0], window[1], block, rows)
        pool = cls(q, handle)
        pool.reset()
        return pool

    @classmethod
    def create(cls, name: str, slots: int, max_batch: int, window: tuple[int, int],
               block: int, rows: int | None = None) -> BatchPool:
        return cls.create_from(cls.prepare(name, slots), max_batch, window, block, rows)

    def handle(self) -> BatchPoolHandle:
        return self._h

    @classmethod
    def attach(cls, handle: BatchPoolHandle) -> BatchPool:
        shm = shared_memory.SharedMemory(name=handle.name, create=False)
        return cls(_Queues(shm, False, handle.slots, 3, _BATCH_META, 0, handle.lock,
                           handle.sems), handle)

    @property
    def max_batch(self) -> int:
        return self._max_batch

    def _region(self, slot: int, start: int, nbytes: int) -> np.ndarray:
        off = self._q.data_off + slot * self._slot_bytes + start
        return self._q._base[off:off + nbytes]

    def tiles(self, slot: int) -> np.ndarray:
        """(max_batch, 3, wh, ww) float32 view: the tile stage cuts straight into it."""
        return self._region(slot, 0, self._tile_bytes).view(np.float32).reshape(
            self._max_batch, *self.tile_shape)

    def outputs(self, slot: int) -> np.ndarray:
        """(max_batch, 1, wh/b, ww/b) float32 view the inference stage writes into."""
        return self._region(slot, _align(self._tile_bytes), self._out_bytes).view(
            np.float32).reshape(self._max_batch, *self.out_shape)

    def desc(self, slot: int) -> np.ndarray:
        """Per-tile descriptors, ``max_rows`` of them (camera index, frame slot, tile index, seq,
        ``out``: the tile's row of ``tiles``/``outputs``, -1 when reused, ...)."""
        start = _align(self._tile_bytes) + _align(self._out_bytes)
        return self._region(slot, start, self._desc_bytes).view(_TILE_DESC)

    def count(self, slot: int) -> int:
        """Descriptor rows of the batch in ``slot``."""
        return int(self._q.meta[slot]["n"])

    def tile_count(self, slot: int) -> int:
        """Tiles of the batch in ``slot`` to run (rows ``[:k]`` of ``tiles``/``outputs``)."""
        return int(self._q.meta[slot]["k"])

    def _take(self, f: int, state: int, timeout: float | None) -> int | None:
        q = self._q
        if not q._acquire(f, timeout):
            return None
        with q.lock:
            slot = q._pop(f)
            q.state[slot] = state
        return slot

    def _give(self, f: int, slot: int, state: int, front: bool = False) -> None:
        q = self._q
        with q.lock:
            q.state[slot] = state
            q._push(f, slot, front)
        q.sems[f].release()

    def acquire(self, timeout: float | None = None) -> int | None:
        """A free batch slot for the tile stage (None on timeout)."""
        return self._take(self._F_FREE, B_FILLING, timeout)

    def submit(self, slot: int, n: int, t_submit: float = 0.0, k: int | None = None) -> None:
        """Queue ``n`` descriptor rows for inference, of which the first ``k`` tiles run
        (default: all ``n``; fewer when the motion gate reused some)."""
        k = n if k is None else k
        if not 1 <= n <= self.max_rows:
            raise ValueError(f"batch of {n} rows, pool holds 1..{self.max_rows}")
        if not 0 <= k <= min(n, self._max_batch):
            raise ValueError(f"batch of {k} tiles to run, pool holds 0..{self._max_batch}")
        q = self._q
        q.meta[slot]["n"] = n
        q.meta[slot]["k"] = k
        q.meta[slot]["t_submit"] = t_submit
        q.hdr[H_BATCHES] += 1 if k else 0  # a batch of reused tiles only is not run
        q.hdr[H_TILES] += k
        q.hdr[H_REUSED] += n - k
        self._give(self._F_INFER, slot, B_QUEUED)
        self._wake(0)

    def _wake(self, which: int, n: int = 1) -> None:
        if self._h.wake is not None:
            for _ in range(n):
                self._h.wake[which].release()

    def take_infer(self, timeout: float | None = None) -> int | None:
        return self._take(self._F_INFER, B_INFERRING, timeout)

    def done_infer(self, slot: int, infer_ns: int = 0) -> None:
        self._q.hdr[H_INFER_NS] += infer_ns
        self._give(self._F_POST, slot, B_DONE)
        self._wake(1)

    def take_post(self, timeout: float | None = None) -> int | None:
        return self._take(self._F_POST, B_POSTING, timeout)

    def release(self, slot: int) -> None:
        self._give(self._F_FREE, slot, B_FREE)

    def break_stale_lock(self, wait_s: float = 2.0) -> bool:
        """See ``_Queues.break_stale_lock`` (supervisor only, after a child died)."""
        return self._q.break_stale_lock(wait_s)

    def requeue_inference(self) -> int:
        """Put the batches a dead inference process held back at the FRONT of its queue, so they
        are run again first and results keep their order."""
        q = self._q
        with q.lock:
            held = [s for s in range(self._h.slots) if q.state[s] == B_INFERRING]
            for s in reversed(held):
                q.state[s] = B_QUEUED
                q._push(self._F_INFER, s, front=True)
            q.hdr[H_REQUEUED] += len(held)
        for _ in held:
            q.sems[self._F_INFER].release()
        self._wake(0, len(held))
        return len(held)

    def reset(self) -> None:
        """Every slot free, queues empty (only while no stage process is using the pool)."""
        q = self._q
        with q.lock:
            for f in range(3):
                q.hdr[_FIFO_BASE + 2 * f] = 0
                q.hdr[_FIFO_BASE + 2 * f + 1] = 0
            q.state[:] = B_FREE
            for s in range(self._h.slots):
                q._push(self._F_FREE, s)
            q._reset_sem(self._F_FREE, self._h.slots)
            q._reset_sem(self._F_INFER, 0)
            q._reset_sem(self._F_POST, 0)

    def stats(self) -> dict[str, int]:
        q = self._q
        with q.lock:
            return {"batches": int(q.hdr[H_BATCHES]), "tiles": int(q.hdr[H_TILES]),
                    "reused": int(q.hdr[H_REUSED]), "max_batch": self._max_batch,
                    "requeued": int(q.hdr[H_REQUEUED]), "infer_ns": int(q.hdr[H_INFER_NS]),
                    "queued_infer": q._len(self._F_INFER), "queued_post": q._len(self._F_POST)}

    def close(self) -> None:
        self._q.close()

    def unlink(self) -> None:
        self._q.unlink()


class PoolSet:
    """The batch pools of one run (one per model), served together by one process: the
    inference stage runs whichever has a batch queued, the post stage posts whichever has one
    done, round robin so no model's batches starve another's. Each pool keeps its own order, and
    a camera uses one pool, so each camera's frames stay in order. With several pools the
    processes wait on the run's shared wake-up semaphores (``wake_pair``, given to every pool's
    ``prepare``); one pool is served exactly as before.

    Example::

        wake = PoolSet.wake_pair()
        handles = [BatchPool.prepare(f"cs_1_b{i}", 4, wake) for i in range(2)]
        ...                                       # pools created from them once engines load
        pools = PoolSet([BatchPool.attach(h) for h in handles])
        got = pools.take_infer(timeout=0.2)       # (pool index, slot) | None
    """

    def __init__(self, pools: list[BatchPool]) -> None:
        if not pools:
            raise ValueError("a pool set needs at least one pool")
        self.pools = pools
        self._next = [0, 0]  # where the next round robin scan starts: infer, post

    @staticmethod
    def wake_pair() -> tuple[Any, Any]:
        """The (batch queued, batch done) semaphores a run's pools share."""
        ctx = mp.get_context("spawn")
        return ctx.Semaphore(0), ctx.Semaphore(0)

    def __len__(self) -> int:
        return len(self.pools)

    def __getitem__(self, i: int) -> BatchPool:
        return self.pools[i]

    def take_infer(self, timeout: float) -> tuple[int, int] | None:
        """(pool index, slot) of a batch to run, or None after ``timeout`` seconds."""
        return self._take(0, timeout)

    def take_post(self, timeout: float) -> tuple[int, int] | None:
        """(pool index, slot) of a batch to post, or None after ``timeout`` seconds."""
        return self._take(1, timeout)

    def _take_one(self, which: int, pool: BatchPool, timeout: float) -> int | None:
        return pool.take_infer(timeout) if which == 0 else pool.take_post(timeout)

    def _take(self, which: int, timeout: float) -> tuple[int, int] | None:
        pools = self.pools
        if len(pools) == 1:
            slot = self._take_one(which, pools[0], timeout)
            return None if slot is None else (0, slot)
        wake = pools[0].handle().wake
        deadline = time.monotonic() + timeout
        while True:
            start = self._next[which]
            for j in range(len(pools)):
                i = (start + j) % len(pools)
                slot = self._take_one(which, pools[i], 0)
                if slot is not None:
                    self._next[which] = (i + 1) % len(pools)
                    return i, slot
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            # one token per batch queued (done): a scan after each; a stale token costs one
            # empty scan, a missing one (a process killed between the two) at most ``timeout``
            if wake is not None:
                wake[which].acquire(True, left)
            else:
                time.sleep(min(left, 0.002))

    def close(self) -> None:
        for p in self.pools:
            p.close()


@dataclass
class ValueBoardHandle:
    """What a child needs to attach to a ``ValueBoard``: its segment and its keys, in order."""

    name: str
    keys: tuple[tuple[str, ...], ...]


class ValueBoard:
    """The latest value of each of a fixed set of keys, one float64 per key in one segment (NaN:
    no value yet). One writer per key (the post stage), any number of readers (the supervisor);
    an aligned 8-byte store is atomic, so no lock: a reader sees each value old or new, whole.

    The post stage publishes its live values here (people per camera and zone, density, alert
    flags) so the supervisor can serve them as metrics without a message per frame.

    Example::

        board = ValueBoard.create("cs_1_values", [("people", "lobby")])   # supervisor
        w = ValueBoard.attach(board.handle()); w.set(w.index[("people", "lobby")], 31.5)
        board.read()                      # {("people", "lobby"): 31.5}
    """

    def __init__(self, shm: shared_memory.SharedMemory, handle: ValueBoardHandle) -> None:
        self._shm = shm
        self._h = handle
        self.values = np.ndarray((len(handle.keys),), np.float64, buffer=shm.buf)
        self.index = {k: i for i, k in enumerate(handle.keys)}

    @staticmethod
    def nbytes(nkeys: int) -> int:
        return max(8, nkeys * 8)

    @classmethod
    def create(cls, name: str, keys: list[tuple[str, ...]]) -> ValueBoard:
        if len(set(keys)) != len(keys):
            raise ValueError("value board keys must be unique")
        shm = _create_segment(name, cls.nbytes(len(keys)), f"value board {name!r}")
        board = cls(shm, ValueBoardHandle(name, tuple(tuple(k) for k in keys)))
        board.values[:] = np.nan
        return board

    @classmethod
    def attach(cls, handle: ValueBoardHandle) -> ValueBoard:
        return cls(shared_memory.SharedMemory(name=handle.name, create=False), handle)

    def handle(self) -> ValueBoardHandle:
        return self._h

    def set(self, i: int, value: float | None) -> None:
        """Write key number ``i`` (``index[key]``); None clears it to NaN."""
        self.values[i] = math.nan if value is None else value

    def read(self) -> dict[tuple[str, ...], float]:
        """Every key with a value (NaN ones left out)."""
        vals = self.values.copy()
        return {k: float(v) for k, v in zip(self._h.keys, vals, strict=True) if not math.isnan(v)}

    def close(self) -> None:
        self.values = None  # type: ignore[assignment]
        try:
            self._shm.close()
        except BufferError:
            pass

    def unlink(self) -> None:
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass


def run_prefix() -> str:
    """A run-unique segment name prefix (``cs_<pid>_<random>_``) so runs never collide and a
    leftover segment names the run that made it."""
    return f"cs_{os.getpid()}_{os.urandom(3).hex()}_"


def shm_segments(prefix: str) -> list[str]:
    """Names of the segments in /dev/shm that start with ``prefix`` (a leak check)."""
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))
    except OSError:  # no /dev/shm (macOS): nothing to check
        return []


class RunSegments:
    """Every shared-memory segment of one run: frame rings, the batch pool, the recorder's rings
    and the post stage's value board are all made here, named ``<run prefix><role>``, and ``unlink_all`` removes each one
    (also a segment whose creator died before wrapping it), then checks nothing under the prefix
    is left. The one owner is the supervisor; children only ``attach`` through handles.

    Example::

        segs = RunSegments()
        ring = segs.frame_ring("r0", slots=8, max_height=720, max_width=1280, policy="latest")
        ...
        leaked = segs.unlink_all()            # [] when every segment is gone
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or run_prefix()
        self.names: list[str] = []
        self._owned: list[FrameRing | BatchPool | ValueBoard] = []

    def _name(self, role: str) -> str:
        name = self.prefix + role
        if name in self.names:
            raise ValueError(f"segment role {role!r} used twice in this run")
        self.names.append(name)
        return name

    def frame_ring(self, role: str, slots: int, max_height: int, max_width: int,
                   policy: Policy, aux_bytes: int = 0, camera: str = "") -> FrameRing:
        ring = FrameRing.create(self._name(role), slots, max_height, max_width, policy, aux_bytes,
                                camera)
        self._owned.append(ring)
        return ring

    def value_board(self, role: str, keys: list[tuple[str, ...]]) -> ValueBoard:
        board = ValueBoard.create(self._name(role), keys)
        self._owned.append(board)
        return board

    def batch_pool_handle(self, role: str, slots: int,
                          wake: tuple[Any, Any] | None = None) -> BatchPoolHandle:
        """The handle of the batch pool ``batch_pool`` creates once the engine's geometry is
        known (the inference process gets the handle at spawn); ``wake``: see ``PoolSet``."""
        return BatchPool.prepare(self._name(role), slots, wake)

    def batch_pool(self, handle: BatchPoolHandle, max_batch: int, window: tuple[int, int],
                   block: int, rows: int | None = None) -> BatchPool:
        if handle.name not in self.names:
            raise ValueError(f"batch pool {handle.name!r} was not prepared by this run")
        pool = BatchPool.create_from(handle, max_batch, window, block, rows)
        self._owned.append(pool)
        return pool

    def leftovers(self) -> list[str]:
        """Segments of this run still in /dev/shm."""
        return shm_segments(self.prefix)

    def unlink_all(self) -> list[str]:
        """Close and unlink every segment of the run; returns what could not be removed."""
        for seg in self._owned:
            seg.close()
            seg.unlink()
        self._owned.clear()
        for name in [*self.names, *self.leftovers()]:
            try:
                shared_memory.SharedMemory(name=name).unlink()
            except (FileNotFoundError, OSError):
                pass
        return self.leftovers()
