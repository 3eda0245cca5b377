"""JSON-lines sink: one line per counted frame (and per camera state change) to stdout or a file.

Each line is the envelope the Redis sink publishes, built by the same encoder
(``pipeline.envelopes``): a ``crowdstream.count.v1`` per frame, a ``crowdstream.status.v1`` per
state change, plus a ``type`` field (``"count"`` / ``"status"``) for line-oriented readers. Count
lines carry ``"heatmap": null`` (heatmaps go to Redis and recordings) and ``publish_ts`` is when
the line was written. Every line is flushed as it is written, so a crash of the post process
loses no line that was written before it.

Example line::

    {"type":"count","schema":"crowdstream.count.v1","camera":"mall","frame_index":12,"pts":0.48,
     "capture_ts":1718000000.1,"result_ts":1718000000.2,"publish_ts":1718000000.2,
     "latency_ms":85.1,"count":31.2,"raw_count":33.0,"density_m2":null,
     "zones":{"door":{"count":4.1,"density":0.02}},"frame_size":[480,640],"cell_pixels":8.0,
     "engine_id":"...","heatmap":null}

Example::

    sink = JsonlSink("runs/demo/counts.jsonl"); sink.open(); sink.write(result); sink.close()
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO, Any

from pipeline.envelopes import count_envelope, status_envelope, to_json
from pipeline.events import CameraStatus
from pipeline.results import FrameResult, Sink


def jsonl_record(kind: str, envelope: dict[str, Any]) -> dict[str, Any]:
    """A JSON-lines record: the envelope with the line's ``type`` first."""
    return {"type": kind, **envelope}


class JsonlSink(Sink):
    """Writes envelope lines; ``path`` "-" means stdout. Appends to an existing file."""

    def __init__(self, path: str, run_id: str | None = None) -> None:
        self.path = path
        self.run_id = run_id
        self._f: IO[str] | None = None

    def open(self) -> None:
        if self.path == "-":
            self._f = sys.stdout
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # line-buffered: each record reaches the file as one write, flushed at its newline
            self._f = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

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
