"""JSON-lines sink: one line per counted frame (and per camera state change) to stdout or a file.

Example line::

    {"type": "count", "camera": "mall", "frame_index": 12, "pts": 0.48, "count": 31.2,
     "raw_count": 33.0, "latency_ms": 85.1, ...}

Example::

    sink = JsonlSink("runs/demo/counts.jsonl"); sink.open(); sink.write(result); sink.close()
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any

from pipeline.results import FrameResult


def result_record(r: FrameResult) -> dict[str, Any]:
    """The JSON-able summary of a result (density maps are left to the Redis / recording sinks)."""
    return {
        "type": "count", "camera": r.camera, "frame_index": r.frame_index, "pts": r.pts,
        "capture_ts": r.capture_ts, "result_ts": r.result_ts, "count": round(r.count, 4),
        "raw_count": round(r.raw_count, 4), "latency_ms": round(r.latency_s * 1000.0, 2),
        "frame_size": list(r.frame_size), "map_shape": list(r.density.shape),
        "cell_pixels": r.cell_pixels, "engine_id": r.engine_id,
        "zone_counts": r.zone_counts, "zone_density_m2": r.zone_density_m2,
        "density_m2": r.density_m2,
    }


class JsonlSink:
    """Writes ``result_record`` lines; ``path`` "-" means stdout. Flushes at most every
    ``flush_every_s`` (and on close) so a line per frame costs no syscall per frame."""

    wants_frames = False

    def __init__(self, path: str, flush_every_s: float = 0.5) -> None:
        self.path = path
        self.flush_every_s = flush_every_s
        self._f: IO[str] | None = None
        self._last_flush = 0.0

    def open(self) -> None:
        if self.path == "-":
            self._f = sys.stdout
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _line(self, doc: dict[str, Any]) -> None:
        if self._f is None:
            raise RuntimeError("JsonlSink.write before open()")
        self._f.write(json.dumps(doc, allow_nan=False, default=_jsonable) + "\n")
        now = time.monotonic()
        if now - self._last_flush >= self.flush_every_s:
            self._f.flush()
            self._last_flush = now

    def write(self, result: FrameResult) -> None:
        self._line(result_record(result))

    def write_status(self, camera: str, state: str, reason: str, ts: float) -> None:
        self._line({"type": "status", "camera": camera, "state": state, "reason": reason, "ts": ts})

    def close(self) -> None:
        if self._f is None:
            return
        self._f.flush()
        if self._f is not sys.stdout:
            self._f.close()
        self._f = None


def _jsonable(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)
