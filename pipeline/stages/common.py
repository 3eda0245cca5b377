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
from pipeline.shm import BatchPoolHandle, FrameRingHandle, ValueBoardHandle


@dataclass
class StageArgs:
    """Spawn arguments of a stage: the config, the cameras (index -> name, the index is what
    travels in tile descriptors), their ring handles, the batch pool handle, the stop flag, the
    Redis URL the sinks publish to (None: Redis disabled), the recorder's rings (camera ->
    handle, for the recording sink) and the value board (the post stage's live values for the
    metrics; None: not collected)."""

    cfg: AppConfig
    cameras: list[str]
    rings: list[FrameRingHandle]
    pool: BatchPoolHandle
    stop: StopFlag  # set by the supervisor (or the parent watch): finish the current item, exit
    redis_url: str | None = None
    recorder_rings: dict[str, FrameRingHandle] = field(default_factory=dict)
    run_id: str | None = None  # in every published record: which run it came from
    values: ValueBoardHandle | None = None
    resize: dict[str, Any] | None = None  # the engine's resize rule (engines.predict.ResizeRule)
