"""Result sinks the post stage calls in order: the outputs area's sinks (zones, alerts, Redis,
recording: ``pipeline.outputs.build_output_sinks``) when that module exists, then JSON lines.

Example::

    sinks = build_sinks(cfg, redis_url="redis://127.0.0.1:16379")
    for s in sinks: s.open()
    for s in sinks: s.write(result)
"""

from __future__ import annotations

import importlib
from pathlib import Path

from pipeline.config import AppConfig
from pipeline.results import Sink
from pipeline.shm import FrameRingHandle

__all__ = ["build_sinks"]


def build_sinks(cfg: AppConfig, redis_url: str | None = None,
                recorder_rings: dict[str, FrameRingHandle] | None = None) -> list[Sink]:
    """The run's sinks, in the order the post stage must call them (zone counts first, so later
    sinks see them). ``redis_url``: where the Redis sink publishes (the supervisor's embedded
    server or ``redis.url``); ``recorder_rings``: camera -> the recorder's ring."""
    sinks: list[Sink] = []
    try:
        outputs = importlib.import_module("pipeline.outputs")
    except ModuleNotFoundError as e:
        if e.name != "pipeline.outputs":
            raise  # the module exists but one of its imports is missing: say so
    else:
        sinks.extend(outputs.build_output_sinks(cfg, redis_url=redis_url,
                                                recorder_rings=recorder_rings))
    if cfg.jsonl:
        from pipeline.sinks.jsonl import JsonlSink

        target = cfg.jsonl
        if target != "-" and not Path(target).is_absolute():
            target = str(Path(cfg.run_dir) / target)
        sinks.append(JsonlSink(target))
    return sinks
