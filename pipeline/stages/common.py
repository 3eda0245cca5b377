"""What every stage process gets at spawn, and the small helpers they share."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any

from pipeline.config import AppConfig
from pipeline.shm import BatchPoolHandle, FrameRingHandle


class StopFlag:
    """A cross-process stop/ready flag with ``multiprocessing.Event``'s interface that a killed
    process cannot wedge.

    ``multiprocessing.Event.set()`` waits for every sleeper in ``wait()`` to acknowledge; a waiter
    that was SIGKILLed never does, and ``set()`` then blocks forever (a supervisor that restarted a
    killed ingest hung in ``set()`` on shutdown). Here ``set()`` only flips a shared byte and posts
    a semaphore token; each woken waiter passes the token on, so nobody waits on anybody.

    Example::

        stop = StopFlag(mp.get_context("spawn"))   # pass to children as a Process argument
        stop.set(); stop.wait(1.0) -> True
    """

    def __init__(self, ctx: Any) -> None:
        self._flag = ctx.RawValue("b", 0)
        self._sem = ctx.Semaphore(0)

    def is_set(self) -> bool:
        return bool(self._flag.value)

    def set(self) -> None:
        if not self._flag.value:
            self._flag.value = 1
            self._sem.release()

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag.value:
            return True
        if self._sem.acquire(True, timeout):
            self._sem.release()  # pass the token on to the next waiter
        return bool(self._flag.value)


@dataclass
class StageArgs:
    """Spawn arguments of a stage: the config, the cameras (index -> name, the index is what
    travels in tile descriptors), their ring handles, the batch pool handle and the stop event."""

    cfg: AppConfig
    cameras: list[str]
    rings: list[FrameRingHandle]
    pool: BatchPoolHandle
    stop: Any  # multiprocessing Event: finish the current item and exit
    log_level: str | None = None
    parent_pid: int = 0


def enter_stage(args: StageArgs) -> None:
    """Per-process setup: logging, and leave Ctrl-C to the supervisor (a terminal's SIGINT
    reaches the whole process group; the supervisor drains and then stops the stages)."""
    from engines.log import setup_logging
    from pipeline.secrets import register_config_secrets

    register_config_secrets(args.cfg)
    setup_logging(args.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def orphaned(args: StageArgs) -> bool:
    """True when the supervisor is gone (SIGKILLed): the stage exits instead of running on."""
    return args.parent_pid != 0 and os.getppid() != args.parent_pid


def set_process_name(name: str) -> None:
    """Name this process for ``ps -o comm`` / ``top`` (Linux: 15 chars of /proc/self/comm), so
    a stage can be told from its siblings (spawned children share one command line)."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass  # not Linux: names are a convenience only
