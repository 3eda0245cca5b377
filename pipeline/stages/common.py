"""What every stage process gets at spawn.

Example::

    args = StageArgs(cfg, ["lobby"], [ring.handle()], [ModelSlot(pool_handle)], stop,
                     redis_url=url)
    spawn_child(ctx, ChildSpec("tile", "pipeline.stages.tile:main", stop), args)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.config import AppConfig
from pipeline.process import StopFlag
from pipeline.shm import BatchPoolHandle, FrameRingHandle, ValueBoardHandle


@dataclass(frozen=True)
class ModelSlot:
    """One model of the run as the stages see it: its batch pool (tiles of the cameras it
    counts, batched together), and once its engine has loaded, the engine's id, the model's
    label (its card's name, unique in the run) and its resize rule
    (``engines.predict.ResizeRule.to_dict``)."""

    pool: BatchPoolHandle
    engine_id: str = ""
    label: str = ""
    resize: dict[str, Any] | None = None


@dataclass
class StageArgs:
    """Spawn arguments of a stage: the config, the cameras (index -> name, the index is what
    travels in tile descriptors), their ring handles, the models (one ``ModelSlot`` each), the
    stop flag, the Redis URL the sinks publish to (None: Redis disabled), the recorder's rings
    (camera -> handle, for the recording sink), the value board (the post stage's live values
    for the metrics; None: not collected) and which model counts each camera (camera index ->
    model index; empty: the first model counts every camera)."""

    cfg: AppConfig
    cameras: list[str]
    rings: list[FrameRingHandle]
    models: list[ModelSlot]
    stop: StopFlag  # set by the supervisor (or the parent watch): finish the current item, exit
    redis_url: str | None = None
    recorder_rings: dict[str, FrameRingHandle] = field(default_factory=dict)
    run_id: str | None = None  # in every published record: which run it came from
    values: ValueBoardHandle | None = None
    camera_models: list[int] = field(default_factory=list)

    def model_of(self, cam: int) -> int:
        """The model index of camera number ``cam``."""
        return self.camera_models[cam] if self.camera_models else 0
