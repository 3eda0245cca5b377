"""One progress display for every long-running command (training, ``crowdstream run``).

On a terminal it keeps ONE live status region at the bottom (a bar when the total is known, then
status lines, each cut to the terminal's width, so an 80-column terminal shows whole lines) and
prints every log line above it. Log lines are caught at the file descriptor: while the region is
shown, stderr (fd 2) is a pipe this class reads, so this process's logging, tracebacks, FFmpeg's
messages and the output of child processes (they inherit fd 2) all scroll above the region, never
glued to it. When stderr is not a terminal it prints plain lines instead, at most every
``plain_every_s`` seconds (logs, CI, ``2> file``).

Example::

    with Progress(total=steps, label="epoch 1/3") as p:
        for i in range(steps):
            ...
            p.update(done=i + 1, info=f"loss {loss:.3f}")     # redrawn at most every every_s
            log.info("checkpoint")                             # printed above the region
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

STDERR_FD = 2


def format_eta(seconds: float) -> str:
    """``h:mm:ss`` (``--:--`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0 or seconds > 360000:
        return "--:--"
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Rate:
    """Units per second from successive counter values, smoothed so a display does not flicker:
    each new interval's rate gets ``weight`` (1.0: no smoothing).

    Example::

        r = Rate(); r.update(0.0, 0); r.update(1.0, 25)  # -> 25.0
    """

    def __init__(self, weight: float = 0.3) -> None:
        self.weight = weight
        self.last: tuple[float, int] | None = None
        self.value = 0.0

    def update(self, now: float, total: int) -> float:
        if self.last is not None and now > self.last[0]:
            inst = (total - self.last[1]) / (now - self.last[0])
            self.value = inst if self.value == 0.0 else (self.weight * inst
                                                         + (1.0 - self.weight) * self.value)
        self.last = (now, total)
        return self.value


class Progress:
    """A bar plus status lines at the bottom of the terminal (see the module docstring).

    ``total``/``done``: the bar (none while ``total`` is None); ``label``: before the bar;
    ``info``: a line under the bar; ``lines``: status lines under that. ``every_s``: redraw at
    most this often on a terminal; ``plain_every_s``: one plain line at most this often
    otherwise. ``live``: force the terminal mode on/off (default: whether ``stream`` is a
    terminal). ``enabled=False``: show nothing (``print`` still prints).
    """

    def __init__(self, total: int | None = None, *, label: str = "", stream: TextIO | None = None,
                 every_s: float = 0.5, plain_every_s: float = 20.0, live: bool | None = None,
                 enabled: bool = True) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.info = ""
        self.lines: list[str] = []
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.plain_every_s = plain_every_s
        self.enabled = enabled
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.live = enabled and (isatty() if live is None else live)
        self._rate = Rate()
        self._last_draw = -math.inf
        self._lock = threading.RLock()
        self._live: Any = None  # rich.live.Live while the region is shown
        self._term: TextIO | None = None
        self._reader: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ public
    def __enter__(self) -> Progress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Show the region (terminal mode); ``update`` starts it too. Idempotent."""
        if self.live and self._live is None and not self._closed:
            self._start_live()

    def update(self, *, done: int | None = None, total: int | None = None,
               label: str | None = None, info: str | None = None,
               lines: Sequence[str] | None = None, force: bool = False) -> None:
        """Change what the region shows; redraws when due (``force``: now)."""
        now = time.monotonic()
        with self._lock:
            if total is not None:
                self.total = total
            if label is not None:
                self.label = label
            if info is not None:
                self.info = info
            if lines is not None:
                self.lines = list(lines)
            if done is not None:
                self.done = done
                self._rate.update(now, done)
            finished = self.total is not None and self.done >= self.total
            every = self.every_s if self.live else self.plain_every_s
            if not self.enabled or (now - self._last_draw < every and not force
                                    and not finished):
                return
            self._last_draw = now
            if self.live:
                self.start()
                if self._live is not None:
                    self._fit_width()
                    self._live.update(self._renderable(), refresh=True)
            else:
                self.stream.write(self.plain_text() + "\n")
                self.stream.flush()

    def print(self, text: str) -> None:
        """One line above the region (or a plain line)."""
        with self._lock:
            if self._live is not None:
                self._print_above(text)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    def close(self, final: Sequence[str] = ()) -> None:
        """Stop the region (its last state stays on screen), give stderr back, print ``final``."""
        with self._lock:
            if self._closed:
                for line in final:
                    self.print(line)
                return
            self._closed = True
            if self._live is not None:
                self._stop_live()
            for line in final:
                self.stream.write(line + "\n")
            self.stream.flush()

    # ------------------------------------------------------------------ text
    @property
    def eta_s(self) -> float:
        if self.total is None or self._rate.value <= 0:
            return math.nan
        return max(0, self.total - self.done) / self._rate.value

    def bar_text(self, width: int = 24) -> str:
        """``label [#####-----]  45.0% 450/1000 ETA 0:01:23`` (plain form)."""
        if self.total is None:
            return self.label
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        fill = int(frac * width)
        bar = f"[{'#' * fill}{'-' * (width - fill)}] {frac * 100:5.1f}% {self.done}/{self.total}"
        return " ".join(p for p in (self.label, bar, f"ETA {format_eta(self.eta_s)}") if p)

    def plain_text(self) -> str:
        """Everything the region shows, as one line (the non-terminal form)."""
        parts = [p for p in (self.bar_text(), self.info, *self.lines) if p]
        return " | ".join(parts)

    # ------------------------------------------------------------------ terminal
    def _renderable(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        rows: list[Any] = []
        if self.total is not None:
            grid = Table.grid(padding=(0, 1), expand=True)
            grid.add_column(no_wrap=True, overflow="ellipsis", max_width=30)
            grid.add_column(ratio=1, min_width=10)
            grid.add_column(no_wrap=True, justify="right")
            frac = min(1.0, self.done / self.total) if self.total else 1.0
            grid.add_row(Text(self.label), ProgressBar(total=max(self.total, 1),
                                                      completed=min(self.done, self.total)),
                         Text(f"{frac * 100:5.1f}% {self.done}/{self.total} "
                              f"ETA {format_eta(self.eta_s)}"))
            rows.append(grid)
        elif self.label:
            rows.append(Text(self.label, no_wrap=True, overflow="ellipsis"))
        for line in ([self.info] if self.info else []) + self.lines:
            rows.append(Text(line, no_wrap=True, overflow="ellipsis"))
        return Group(*rows)

    def _fit_width(self) -> None:
        assert self._live is not None and self._term is not None
        try:
            cols, rows = os.get_terminal_size(self._term.fileno())
        except OSError:
            return
        if cols > 0 and rows > 0:
            self._live.console.size = (cols, rows)

    def _start_live(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self._term = self._capture_stderr()
        console = Console(file=self._term, force_terminal=True, highlight=False,
                          soft_wrap=False)
        self._live = Live(console=console, auto_refresh=False, transient=False,
                          redirect_stdout=False, redirect_stderr=False)
        self._fit_width()
        self._live.start()
        atexit.register(self.close)  # an exception that skips close() must not keep fd 2

    def _capture_stderr(self) -> TextIO:
        """Point fd 2 at a pipe read by a thread that prints each line above the region; return
        the terminal (a duplicate of the old fd 2) the region is drawn on."""
        self.stream.flush()
        sys.stderr.flush()
        term_fd = os.dup(STDERR_FD)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, STDERR_FD)
        os.close(write_fd)
        self._reader = threading.Thread(target=self._pump, args=(read_fd,), name="progress-log",
                                        daemon=True)
        self._reader.start()
        return os.fdopen(term_fd, "w", encoding="utf-8", errors="replace")

    def _pump(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            for raw in pipe:
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                with self._lock:
                    self._print_above(text)

    def _print_above(self, text: str) -> None:
        from rich.text import Text

        if self._live is None:
            return
        try:
            self._live.console.print(Text(text), soft_wrap=True)
        except (OSError, ValueError):  # the terminal went away: nothing to show it on
            pass

    def _stop_live(self) -> None:
        assert self._live is not None and self._term is not None
        sys.stderr.flush()
        os.dup2(self._term.fileno(), STDERR_FD)  # our end of the pipe closes with this
        reader, self._reader = self._reader, None
        self._lock.release()  # the reader prints what is left under the lock
        try:
            if reader is not None:
                reader.join(2.0)  # EOF once no process (a child that lingers) holds the pipe
        finally:
            self._lock.acquire()
        self._fit_width()
        self._live.update(self._renderable(), refresh=True)
        self._live.stop()
        self._live = None
        self._term.close()
        self._term = None


__all__ = ["Progress", "Rate", "format_eta"]
