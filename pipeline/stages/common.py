"""What every stage process gets at spawn.

Example::

    args = StageArgs(cfg, ["lobby"], [ring.handle()], pool_handle, stop, redis_url=url)
    spawn_child(ctx, ChildSpec("tile", "pipeline.stages.tile:main", stop), args)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.config import AppConfig
from pipeline.process import StopFlag
from pipeline.shm import BatchPoolHandle, FrameRingHandle


@dataclass
class StageArgs:
    """Spawn arguments of a stage: the config, the cameras (index -> name, the index is what
    travels in tile descriptors), their ring handles, the batch pool handle, the stop flag, the
    Redis URL the sinks publish to (None: Redis disabled) and the recorder's rings (camera ->
    handle, for the recording sink)."""

    cfg: AppConfig
    cameras: list[str]
    rings: list[FrameRingHandle]
    pool: BatchPoolHandle
    stop: StopFlag  # set by the supervisor (or the parent watch): finish the current item, exit
    redis_url: str | None = None
    recorder_rings: dict[str, FrameRingHandle] = field(default_factory=dict)
    run_id: str | None = None  # in every published record: which run it came from
    resize: dict[str, Any] | None = None  # the engine's resize rule (engines.predict.ResizeRule)
