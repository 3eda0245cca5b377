"""Result sinks the post stage calls in order: zones, alerts, JSON lines, Redis, recording
(``pipeline.outputs.build_output_sinks``; the JSON line of a frame is on disk before its message
is queued for Redis, so a killed post process never leaves a frame in Redis that is missing from
the file). Every sink implements ``pipeline.results.Sink``.

Example::

    sinks = build_sinks(cfg, redis_url="redis://127.0.0.1:16379")
    for s in sinks: s.open()
    for s in sinks: s.write(result)
    for s in sinks: s.write_status(status)
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import AppConfig
from pipeline.outputs import build_output_sinks
from pipeline.results import OutputTally, Sink
from pipeline.shm import FrameRingHandle, ValueBoardHandle
from pipeline.sinks.jsonl import JsonlSink

__all__ = ["build_sinks", "jsonl_path"]


def jsonl_path(cfg: AppConfig) -> str | None:
    """Where the JSON lines go: ``jsonl:`` as given for ``-`` (stdout) or an absolute path, else
    relative to ``run_dir``; None when not configured."""
    target = cfg.jsonl
    if target and target != "-" and not Path(target).is_absolute():
        target = str(Path(cfg.run_dir) / target)
    return target or None


def build_sinks(cfg: AppConfig, *, redis_url: str | None = None, run_id: str | None = None,
                recorder_rings: dict[str, FrameRingHandle] | None = None,
                values: ValueBoardHandle | None = None,
                tally: OutputTally | None = None) -> list[Sink]:
    """The run's sinks, in the order the post stage must call them (zone counts first, so later
    sinks see them). ``redis_url`` / ``run_id`` / ``recorder_rings`` / ``values`` / ``tally``: see
    ``build_output_sinks``; with a ``run_id`` the JSON lines go to one file per run
    (``JsonlSink``)."""
    path = jsonl_path(cfg)
    jsonl = JsonlSink(path, run_id=run_id) if path is not None else None
    return build_output_sinks(cfg, redis_url=redis_url, run_id=run_id,
                              recorder_rings=recorder_rings, values=values, tally=tally,
                              jsonl=jsonl)
