"""One background-worker design for slow outputs: a bounded buffer between a producer that must
never wait (the frame path) and one daemon thread that drains it (the Redis publisher, the
webhook notifier).

* ``put`` never blocks. A full buffer drops either the oldest item (keep the newest data: the
  Redis outage buffer) or the new one (keep what is queued: the webhook), and every drop is
  counted exactly in ``dropped``, also what is left unsent at ``close``.
* The thread hands batches of up to ``batch_max`` items to ``handle``. An optional ``ready``
  hook runs before each batch is taken (connect, back off with ``sleep``); while it says no,
  items stay in the buffer, where the bound applies.
* ``retry_first(items)`` keeps items whose outcome is unknown apart from the droppable buffer:
  they are the next batch, alone, and are never evicted.
* ``sleep`` is the handler's interruptible wait (backoff): it returns early, True, on close.

Example::

    w = BackgroundWorker("webhook", handle=lambda batch: [post(e) for e in batch],
                         max_items=100, drop="newest")
    w.start()
    w.put(event)                     # False when the buffer was full and the event was dropped
    left = w.close(drain_timeout_s=10)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

from engines.log import get_logger

T = TypeVar("T")

log = get_logger("worker")


class BackgroundWorker(Generic[T]):
    """A bounded buffer drained by one thread (see the module docstring).

    ``max_bytes`` bounds the sum of the ``nbytes`` given to ``put`` (the newest item always
    stays). ``on_drop(item)`` is called, under the buffer's lock, for the first drop of an
    episode (until the buffer next runs empty), to log it once instead of per item.
    """

    def __init__(self, name: str, handle: Callable[[list[T]], None], *, max_items: int,
                 max_bytes: int | None = None, drop: Literal["oldest", "newest"] = "oldest",
                 batch_max: int = 1, ready: Callable[[], bool] | None = None,
                 on_drop: Callable[[T], None] | None = None) -> None:
        if max_items < 1 or batch_max < 1:
            raise ValueError(f"{name}: max_items and batch_max must be >= 1")
        self.name = name
        self._handle = handle
        self._ready = ready
        self._on_drop = on_drop
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.drop = drop
        self.batch_max = batch_max
        self._buf: deque[tuple[T, int]] = deque()
        self._bytes = 0
        self._retry: list[T] = []
        self._in_hand = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dropping = False
        self.dropped = 0

    # ------------------------------------------------------------------ producer side
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def put(self, item: T, nbytes: int = 0) -> bool:
        """Buffer ``item`` (never blocks). False when the buffer was full and ``item`` itself was
        dropped (``drop="newest"``); with ``drop="oldest"`` the oldest items make room."""
        with self._cond:
            if self.drop == "newest" and len(self._buf) >= self.max_items:
                self._count_drop(item)
                return False
            self._buf.append((item, nbytes))
            self._bytes += nbytes
            while len(self._buf) > self.max_items or (
                    self.max_bytes is not None and self._bytes > self.max_bytes
                    and len(self._buf) > 1):
                old, n = self._buf.popleft()
                self._bytes -= n
                self._count_drop(old)
            self._cond.notify()
        return True

    def _count_drop(self, item: T) -> None:
        self.dropped += 1
        if not self._dropping:
            self._dropping = True
            if self._on_drop is not None:
                self._on_drop(item)

    @property
    def pending(self) -> int:
        """Items buffered or kept for a retry (not those being handled right now)."""
        with self._cond:
            return len(self._buf) + len(self._retry)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything put so far was handled. True when it was."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._buf or self._retry or self._in_hand:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, drain_timeout_s: float = 10.0,
              keep_draining: Callable[[], bool] = lambda: True,
              join_timeout_s: float = 5.0) -> int:
        """Let the thread drain for up to ``drain_timeout_s`` (while ``keep_draining()``), then
        stop it; what is left unsent is counted in ``dropped``. Returns how many were left."""
        deadline = time.monotonic() + drain_timeout_s
        with self._cond:
            while self._thread is not None and (self._buf or self._retry or self._in_hand) and \
                    time.monotonic() < deadline and keep_draining():
                self._cond.wait(0.05)
            self._stop.set()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(join_timeout_s)
            if self._thread.is_alive():
                log.warning("worker still busy at close", worker=self.name,
                            join_timeout_s=join_timeout_s)
            self._thread = None
        with self._cond:
            left = len(self._buf) + len(self._retry)
            self.dropped += left
            self._buf.clear()
            self._retry.clear()
            self._bytes = 0
        return left

    # ------------------------------------------------------------------ worker side
    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless the worker is closing; True when it is (give up then)."""
        return self._stop.wait(seconds)

    def retry_first(self, items: list[T]) -> None:
        """Hand ``items`` to ``handle`` again before anything else, alone; never dropped."""
        with self._cond:
            self._retry = list(items) + self._retry
            self._cond.notify_all()

    def _take(self) -> list[T]:
        with self._cond:
            if self._retry:
                batch, self._retry = self._retry, []
            else:
                batch = []
                while self._buf and len(batch) < self.batch_max:
                    item, n = self._buf.popleft()
                    self._bytes -= n
                    batch.append(item)
            if not self._buf:
                self._dropping = False
            self._in_hand = len(batch)
            return batch

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop.is_set() and not self._buf and not self._retry:
                    self._cond.wait(0.5)
                if self._stop.is_set():
                    return
            if self._ready is not None and not self._ready():
                continue  # the hook waited (sleep) itself; items stay bounded in the buffer
            batch = self._take()
            try:
                if batch:
                    self._handle(batch)
            except Exception as e:  # noqa: BLE001 - a handler bug must not stop the outputs
                log.error("worker handler failed", worker=self.name, items=len(batch),
                          error=f"{type(e).__name__}: {e}")
            finally:
                with self._cond:
                    self._in_hand = 0
                    self._cond.notify_all()
