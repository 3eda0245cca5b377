"""JSON-lines sink: one line per counted frame (and per camera state change) to stdout or a file.

Each line is the envelope the Redis sink publishes, built by the same encoder
(``pipeline.envelopes``): a ``crowdstream.count.v1`` per frame, a ``crowdstream.status.v1`` per
state change, plus a ``type`` field (``"count"`` / ``"status"``) for line-oriented readers. Count
lines carry ``"heatmap": null`` (heatmaps go to Redis and recordings) and ``publish_ts`` is when
the line was written. Every line is flushed as it is written, so a crash of the post process
loses no line that was written before it.

One file per run: with a ``run_id`` (the supervisor's, also in every record) the lines go to
``<stem>-<run_id><suffix>`` beside ``path`` (``counts-20261121T101500Z-3fa2c1.jsonl``) and
``path`` itself becomes a symlink to the newest run's file, so ``runs/demo/counts.jsonl`` always
reads the latest run. A regular file already at ``path`` (written before files were per run) is
kept, renamed to ``<stem>-before-<run_id><suffix>``. Without a ``run_id`` lines are appended to
``path``.

Example line::

    {"type":"count","schema":"crowdstream.count.v1","camera":"mall","frame_index":12,"pts":0.48,
     "capture_ts":1718000000.1,"result_ts":1718000000.2,"publish_ts":1718000000.2,
     "latency_ms":85.1,"count":31.2,"raw_count":33.0,"density_m2":null,
     "zones":{"door":{"count":4.1,"density":0.02}},"frame_size":[480,640],"cell_pixels":8.0,
     "engine_id":"...","heatmap":null}

Example::

    sink = JsonlSink("runs/demo/counts.jsonl", run_id=run_id)   # counts-<run_id>.jsonl
    sink.open(); sink.write(result); sink.close()
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from engines.log import get_logger
from pipeline.envelopes import count_envelope, status_envelope, to_json
from pipeline.events import CameraStatus
from pipeline.results import FrameResult, Sink


def jsonl_record(kind: str, envelope: dict[str, Any]) -> dict[str, Any]:
    """A JSON-lines record: the envelope with the line's ``type`` first."""
    return {"type": kind, **envelope}


def run_file(path: str | Path, run_id: str) -> Path:
    """The per-run file behind ``path``: ``counts.jsonl`` -> ``counts-<run_id>.jsonl``."""
    p = Path(path)
    return p.with_name(f"{p.stem}-{run_id}{p.suffix}")


def point_link(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target`` (relative, replaced atomically); a regular file
    already there is kept under ``<stem>-before-<target's run><suffix>``."""
    log = get_logger("jsonl")
    if link.exists() and not link.is_symlink():
        kept = link.with_name(f"{link.stem}-before-{target.stem[len(link.stem) + 1:]}"
                              f"{link.suffix}")
        link.rename(kept)
        log.info("kept the previous JSON-lines file", file=str(kept))
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target.name)
        os.replace(tmp, link)
    except OSError as e:  # a file system without symlinks: the per-run file is still written
        tmp.unlink(missing_ok=True)
        log.warning("cannot link the newest JSON-lines file", link=str(link), error=str(e))


class JsonlSink(Sink):
    """Writes envelope lines; ``path`` "-" means stdout. With a ``run_id`` one file per run
    (``file``) and ``path`` a symlink to it, else appends to ``path``."""

    def __init__(self, path: str, run_id: str | None = None) -> None:
        self.path = path
        self.run_id = run_id
        self.file = str(run_file(path, run_id)) if run_id and path != "-" else path
        self._f: IO[str] | None = None

    def open(self) -> None:
        if self.path == "-":
            self._f = sys.stdout
            return
        Path(self.file).parent.mkdir(parents=True, exist_ok=True)
        # line-buffered: each record reaches the file as one write, flushed at its newline
        self._f = open(self.file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        if self.file != self.path:
            point_link(Path(self.path), Path(self.file))

    def _line(self, doc: dict[str, Any]) -> None:
        if self._f is None:
            raise RuntimeError("JsonlSink.write before open()")
        self._f.write(to_json(doc) + "\n")
        if self._f is sys.stdout:
            self._f.flush()

    def write(self, result: FrameResult) -> None:
        env = count_envelope(result, publish_ts=time.time(), run_id=self.run_id)
        self._line(jsonl_record("count", env))

    def write_status(self, status: CameraStatus) -> None:
        self._line(jsonl_record("status", status_envelope(status, run_id=self.run_id)))

    def close(self) -> None:
        if self._f is None:
            return
        self._f.flush()
        if self._f is not sys.stdout:
            self._f.close()
        self._f = None
