"""Child processes of a run: one entry for every spawned child, one stop signal, one restart policy.

Every process the supervisor spawns (ingest, tile, inference, post, recorder) starts through
``spawn_child`` -> ``child_main``, which

* names the process ``cs-<stage>[-<camera>]`` (``ps -o comm``, ``top``);
* ignores SIGINT: Ctrl-C in a terminal reaches the whole process group, and the supervisor
  decides how the run stops (drain, then stop flags);
* sets up logging;
* reports a failure of the target as ONE line at ERROR (stage, camera, exception type and the
  first line of its message), the traceback only at DEBUG, and exits with status 1;
* watches its parent: when the supervisor is gone (even SIGKILLed), it sets the child's
  ``StopFlag`` so the child finishes cleanly, and exits after ``ORPHAN_GRACE_S`` at the latest.

A ``StopFlag`` is the only way one process tells another to stop (or that something is ready);
a ``RestartPolicy`` is the only crash-restart rule (exponential backoff, reset after a stable run).

Example::

    ctx = mp.get_context("spawn")
    stop = StopFlag(ctx)
    proc = spawn_child(ctx, ChildSpec("tile", "pipeline.stages.tile:main", stop), stage_args)
    ...
    stop.set(); proc.join()
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import signal
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

from engines.redact import register_secret, registered_secrets

ORPHAN_POLL_S = 0.5  # how often a child checks that its supervisor is still there
ORPHAN_GRACE_S = 2.0  # an orphaned child's time to stop cleanly before it exits anyway


class StopFlag:
    """A cross-process stop/ready flag (``is_set`` / ``set`` / ``wait``) that a killed process
    cannot wedge.

    ``multiprocessing.Event.set()`` waits for every sleeper in ``wait()`` to acknowledge; a waiter
    that was SIGKILLed never does, and ``set()`` then blocks forever (a supervisor that restarted a
    killed ingest hung in ``set()`` on shutdown). Here ``set()`` only flips a shared byte and posts
    a semaphore token; each woken waiter passes the token on, so nobody waits on anybody. It works
    between threads of one process too.

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


@dataclass(frozen=True)
class ChildSpec:
    """What ``child_main`` needs besides the target's own arguments.

    ``name``: the stage (``tile``, ``ingest-lobby``); the process is called ``cs-<name>``.
    ``target``: ``"module:function"``, imported in the child only (the supervisor never imports
    torch). ``stop``: the flag the parent watch sets when the supervisor is gone. ``camera``: the
    camera a per-camera child serves (named in its failure line).
    """

    name: str
    target: str
    stop: StopFlag
    log_level: str | None = None
    parent_pid: int = 0
    # the parent's registered secrets (engines.redact), masked in the child's output too
    secrets: tuple[str, ...] = ()
    camera: str | None = None

    @property
    def process_name(self) -> str:
        return f"cs-{self.name}"

    @property
    def stage(self) -> str:
        """The stage without the camera (``ingest`` for ``ingest-lobby``)."""
        suffix = f"-{self.camera}"
        return self.name[:-len(suffix)] if self.camera and self.name.endswith(suffix) \
            else self.name


def spawn_child(ctx: Any, spec: ChildSpec, *args: Any) -> BaseProcess:
    """Start ``spec.target(*args)`` in a new process through ``child_main`` (not a daemon: it
    must be able to start processes of its own, and the supervisor joins it)."""
    if not spec.parent_pid:
        spec = dataclasses.replace(spec, parent_pid=os.getpid())
    if not spec.secrets:
        spec = dataclasses.replace(spec, secrets=tuple(sorted(registered_secrets())))
    proc = ctx.Process(target=child_main, args=(spec, *args), name=spec.process_name,
                       daemon=False)
    proc.start()
    return proc


def child_main(spec: ChildSpec, *args: Any) -> None:
    """The first function of every spawned child (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_process_name(spec.process_name)
    from engines.log import setup_logging

    for secret in spec.secrets:
        register_secret(secret)

    setup_logging(spec.log_level)
    watch_parent(spec.parent_pid, spec.stop)
    module, _, func = spec.target.partition(":")
    try:
        getattr(importlib.import_module(module), func)(*args)
    except Exception as e:  # noqa: BLE001 - reported as one line; the supervisor restarts us
        report_failure(spec, e)
        raise SystemExit(1) from None


def report_failure(spec: ChildSpec, e: BaseException) -> None:
    """The one line a failed child leaves at ERROR (its traceback only at DEBUG)."""
    import logging

    from engines.log import error_line, get_logger

    fields = {"camera": spec.camera} if spec.camera else {}
    log = get_logger(spec.stage, **fields)
    log.error("failed", stage=spec.stage, error=error_line(e))
    logging.getLogger(f"crowdstream.{spec.stage}").debug(
        "traceback:\n%s", "".join(traceback.format_exception(e)).rstrip())


def watch_parent(parent_pid: int, stop: StopFlag) -> threading.Thread:
    """A daemon thread: once the process ``parent_pid`` is no longer our parent (it died; we were
    re-parented), set ``stop`` and exit after ``ORPHAN_GRACE_S`` if we are still running."""

    def watch() -> None:
        if not parent_pid:  # started by hand, not by spawn_child: nobody to watch
            return
        while os.getppid() == parent_pid:
            time.sleep(ORPHAN_POLL_S)
        stop.set()
        time.sleep(ORPHAN_GRACE_S)
        os._exit(3)

    t = threading.Thread(target=watch, name="parent-watch", daemon=True)
    t.start()
    return t


def set_process_name(name: str) -> None:
    """Name this process for ``ps -o comm`` / ``top`` (Linux: 15 chars of /proc/self/comm), so
    a stage can be told from its siblings (spawned children share one command line)."""
    # 15 bytes, cut at a character boundary (a camera name may be in any script)
    short = name.encode()[:15].decode(errors="ignore")
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(short)
    except OSError:
        pass  # not Linux: names are a convenience only


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a crashed child: ``backoff_s`` after the first crash, doubling with every
    crash in a row up to ``cap_s``; a child that ran ``stable_s`` before crashing starts over.

    Example::

        policy = RestartPolicy(1.0, 30.0)
        state = RestartState(started=time.monotonic())
        delay = policy.crashed(state, time.monotonic())   # 1.0, then 2.0, 4.0 ...
    """

    backoff_s: float
    cap_s: float
    stable_s: float = 60.0

    def delay(self, streak: int) -> float:
        return min(self.cap_s, self.backoff_s * 2 ** max(0, streak - 1))

    def crashed(self, state: RestartState, now: float) -> float:
        """Count a crash in ``state``, schedule its restart and return the delay."""
        if now - state.started > self.stable_s:
            state.streak = 0  # it had been running fine: start the backoff over
        state.crashes += 1
        state.streak += 1
        delay = self.delay(state.streak)
        state.restart_at = now + delay
        return delay


@dataclass
class RestartState:
    """One child's crash bookkeeping (see ``RestartPolicy``)."""

    crashes: int = 0
    streak: int = 0  # crashes since it last ran stably (drives the backoff)
    started: float = 0.0
    restart_at: float | None = None  # set while it waits for its restart


# Blocks reading the pipe until its writer (the supervisor) is gone, then ends $1: SIGTERM, and
# SIGKILL if it is still there after about 5 s.
_LIFELINE_SH = ('read -r _; kill -TERM "$1" 2>/dev/null; n=0; '
                'while kill -0 "$1" 2>/dev/null; do n=$((n+1)); '
                'if [ "$n" -gt 50 ]; then kill -KILL "$1" 2>/dev/null; break; fi; sleep 0.1; done')


class Lifeline:
    """Ends process ``pid`` when this process is gone, however it ended (SIGKILL included).

    For a helper process that runs in its own session (so a terminal's Ctrl-C does not reach it
    before the run has flushed into it) and would otherwise outlive the run: the embedded Redis.
    A tiny ``/bin/sh`` watchdog (also in its own session) blocks reading a pipe whose only writer
    is this process; the kernel closes the pipe when this process exits, the read returns, and the
    watchdog sends SIGTERM (SIGKILL after about 5 s). Nothing polls, and no pid of ours can be
    mistaken for another after it was reused.

    Example::

        line = Lifeline(server_pid)
        ...
        line.release()      # before stopping the server ourselves
    """

    def __init__(self, pid: int, name: str = "cs-lifeline") -> None:
        read_fd, self._write_fd = os.pipe()  # neither end is inherited by other children
        try:
            self._proc = subprocess.Popen(["/bin/sh", "-c", _LIFELINE_SH, name, str(pid)],
                                          stdin=read_fd, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            os.close(self._write_fd)
            raise
        finally:
            os.close(read_fd)
        self.pid = pid

    @property
    def watchdog_pid(self) -> int:
        return self._proc.pid

    def release(self) -> None:
        """Stop watching (the caller ends ``pid`` itself). Idempotent."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1


__all__ = ["ChildSpec", "Lifeline", "RestartPolicy", "RestartState", "StopFlag", "child_main",
           "report_failure", "set_process_name", "spawn_child", "watch_parent"]
