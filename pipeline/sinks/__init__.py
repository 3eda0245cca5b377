"""Result sinks the post stage calls in order: the outputs area's sinks (zones, alerts, Redis,
recording: ``pipeline.outputs.build_output_sinks``) when that module exists, then JSON lines.

Example::

    sinks = build_sinks(cfg)
    for s in sinks: s.open()
    for s in sinks: s.write(result)
"""

from __future__ import annotations

import importlib
from pathlib import Path

from pipeline.config import AppConfig
from pipeline.results import Sink

__all__ = ["build_sinks"]


def build_sinks(cfg: AppConfig) -> list[Sink]:
    """The run's sinks, in the order the post stage must call them (zone counts first, so later
    sinks see them)."""
    sinks: list[Sink] = []
    try:
        outputs = importlib.import_module("pipeline.outputs")
    except ModuleNotFoundError as e:
        if e.name != "pipeline.outputs":
            raise  # the module exists but one of its imports is missing: say so
    else:
        sinks.extend(outputs.build_output_sinks(cfg))
    if cfg.jsonl:
        from pipeline.sinks.jsonl import JsonlSink

        target = cfg.jsonl
        if target != "-" and not Path(target).is_absolute():
            target = str(Path(cfg.run_dir) / target)
        sinks.append(JsonlSink(target))
    return sinks
