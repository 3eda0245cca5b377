"""The background worker behind the Redis publisher and the webhook: bounded, exact drop counts,
retries first and never dropped, interruptible backoff, leftovers counted at close."""

from __future__ import annotations

import threading
import time

from pipeline.worker import BackgroundWorker


def test_drop_oldest_by_count_and_bytes_is_exact() -> None:
    gate = threading.Event()
    handled: list[int] = []
    w: BackgroundWorker[int] = BackgroundWorker(
        "t", handled.extend, max_items=10, max_bytes=500, batch_max=100,
        ready=lambda: gate.wait(0.05))  # "not connected" until the gate opens
    w.start()
    for i in range(25):
        assert w.put(i, nbytes=10)
    assert w.dropped == 15 and w.pending == 10  # the count bound: oldest went first
    for i in range(25, 30):
        w.put(i, nbytes=100)  # 5 x 100 + the newest ones: the byte bound bites too
    assert w.pending == 5 and w.dropped == 25
    gate.set()
    assert w.flush(5)
    assert handled == list(range(25, 30))  # in order, only what was kept
    assert w.close() == 0 and w.dropped == 25


def test_drop_newest_keeps_what_is_queued() -> None:
    release = threading.Event()
    handled: list[str] = []

    def slow(batch: list[str]) -> None:
        release.wait(5)
        handled.extend(batch)

    first_drop: list[str] = []
    w: BackgroundWorker[str] = BackgroundWorker("t", slow, max_items=2, drop="newest",
                                                on_drop=first_drop.append)
    w.start()
    assert w.put("a")
    deadline = time.monotonic() + 5
    while w.pending and time.monotonic() < deadline:  # "a" is in hand now
        time.sleep(0.01)
    assert w.put("b") and w.put("c")
    assert not w.put("d") and not w.put("e")  # full: the new ones are refused, counted
    assert w.dropped == 2 and first_drop == ["d"]  # reported once per episode
    release.set()
    assert w.flush(5) and handled == ["a", "b", "c"]
    w.close()


def test_retries_go_first_alone_and_are_never_dropped() -> None:
    batches: list[list[int]] = []
    failed_once = threading.Event()

    def handle(batch: list[int]) -> None:
        batches.append(list(batch))
        if not failed_once.is_set():
            failed_once.set()
            for i in range(10, 20):
                w.put(i)  # the buffer overflows meanwhile (3 kept)
            w.retry_first(batch)  # outcome unknown: must be sent again, first

    w: BackgroundWorker[int] = BackgroundWorker("t", handle, max_items=3, batch_max=10)
    w.start()
    w.put(1)
    assert w.flush(5)
    assert batches == [[1], [1], [17, 18, 19]]
    assert w.dropped == 7
    w.close()


def test_close_interrupts_backoff_and_counts_leftovers() -> None:
    slept: list[bool] = []

    def never_ready() -> bool:
        slept.append(w.sleep(30))  # a long backoff: close must cut it short
        return False

    w: BackgroundWorker[int] = BackgroundWorker("t", lambda b: None, max_items=100,
                                                ready=never_ready)
    w.start()
    for i in range(4):
        w.put(i)
    time.sleep(0.1)
    t0 = time.monotonic()
    assert w.close(drain_timeout_s=0.2) == 4
    assert time.monotonic() - t0 < 3 and slept == [True]
    assert w.dropped == 4


def test_close_without_start_does_not_wait() -> None:
    w: BackgroundWorker[int] = BackgroundWorker("t", lambda b: None, max_items=5)
    w.put(1)
    t0 = time.monotonic()
    assert w.close(drain_timeout_s=10) == 1
    assert time.monotonic() - t0 < 1


def test_a_failing_handler_does_not_stop_the_worker() -> None:
    seen: list[int] = []

    def handle(batch: list[int]) -> None:
        if batch == [0]:
            raise RuntimeError("boom")
        seen.extend(batch)

    w: BackgroundWorker[int] = BackgroundWorker("t", handle, max_items=10)
    w.start()
    for i in range(3):
        w.put(i)
    assert w.flush(5) and seen == [1, 2]
    w.close()
