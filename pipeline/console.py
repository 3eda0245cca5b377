"""What ``crowdstream run`` shows on the terminal: notes, the live status, the summary.

Built on the house's one progress display (``engines.progress.Progress``): on a terminal one
status region stays at the bottom -- a bar over the file cameras (decoded frames of the known
total, with the ETA), one line per camera and one for the pipeline -- and every log line of every
process of the run scrolls above it. Not on a terminal: one plain status line every
``metrics.status_every_s``.

Example::

    console = RunConsole(metrics, every_s=5.0)
    console.start()
    console.note("engine ...")          # "crowdstream: engine ..." above the region
    console.update(snapshot)            # every poll; drawn when due
    console.close(["crowdstream: all sources ended; ..."])
"""

from __future__ import annotations

from typing import TextIO

import numpy as np

from engines.progress import Progress
from pipeline.metrics import PipelineMetrics, Snapshot


def camera_line(name: str, snap: Snapshot, metrics: PipelineMetrics) -> str:
    """``lobby online in 25.0 out 24.9 fps q1 drop 0 lat 85/140ms``; then ``reused 93%`` (tiles
    the motion gate reused) when it reused any, and ``model <label>`` when the cameras of the
    run are counted by different models."""
    c = snap.cameras[name]
    r = c.ring
    lat = ""
    if len(c.latencies):
        p50, p99 = np.percentile(c.latencies, [50, 99]) * 1000.0
        lat = f" lat {p50:.0f}/{p99:.0f}ms"
    extra = f" lost {r['lost']}" if r["lost"] else ""
    if r.get("tiles_reused"):
        extra += f" reused {100 * r['tiles_reused'] / r['tiles']:.0f}%"
    if c.model and len({x.model for x in snap.cameras.values()}) > 1:
        extra += f" model {c.model}"
    return (f"{name} {c.state} in {metrics.rate(f'in:{name}'):.1f} "
            f"out {metrics.rate(f'out:{name}'):.1f} fps q{r['depth']} drop {r['drops']}"
            f"{extra}{lat}")


def pipeline_line(snap: Snapshot, metrics: PipelineMetrics) -> str:
    """``infer 120.0 tiles/s | restarts 1`` (restarts only when there were any)."""
    parts = []
    if snap.pool:
        parts.append(f"infer {metrics.rate('inference'):.1f} tiles/s")
    crashes = sum(snap.restarts.values())
    if crashes:
        parts.append(f"restarts {crashes}")
    return " | ".join(parts)


def file_progress(snap: Snapshot) -> tuple[int, int]:
    """(decoded frames counted so far, frames expected) over the cameras of known length."""
    done = total = 0
    for c in snap.cameras.values():
        if c.total_frames:
            total += c.total_frames
            done += min(c.total_frames, c.ring["last_index"] + 1)
    return done, total


class RunConsole:
    """The run's terminal output (see the module docstring). ``status=False``: notes and the
    summary only, no status (``crowdstream run --quiet``)."""

    def __init__(self, metrics: PipelineMetrics | None = None, stream: TextIO | None = None,
                 status: bool = True, every_s: float = 5.0) -> None:
        self.metrics = metrics
        self.progress = Progress(stream=stream, every_s=min(1.0, every_s),
                                 plain_every_s=every_s, enabled=status)

    def start(self) -> None:
        self.progress.start()

    def note(self, text: str) -> None:
        """``crowdstream: <text>`` above the status."""
        self.progress.print(f"crowdstream: {text}")

    def update(self, snap: Snapshot, force: bool = False) -> None:
        if self.metrics is None:
            return
        lines = [camera_line(name, snap, self.metrics) for name in snap.cameras]
        tail = pipeline_line(snap, self.metrics)
        done, total = file_progress(snap)
        post = f"post {self.metrics.rate('post'):.1f} fps" if total else ""
        last = " | ".join(p for p in (post, tail) if p)
        self.progress.update(done=done if total else None, total=total or None,
                             label="files" if total else "",
                             lines=[*lines, last] if last else lines, force=force)

    def close(self, final: list[str] | None = None) -> None:
        self.progress.close([f"crowdstream: {t}" for t in final or []])


__all__ = ["RunConsole", "camera_line", "file_progress", "pipeline_line"]
