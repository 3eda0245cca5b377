"""Small control messages that travel between processes on ordinary queues (never frames).

Example::

    events.put(CameraStatus("lobby", "online", "first frame", time.time()))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CameraState = Literal["starting", "online", "reconnecting", "offline", "finished"]
CAMERA_STATES: tuple[str, ...] = ("starting", "online", "reconnecting", "offline", "finished")
END_STATES: tuple[str, ...] = ("finished", "offline")  # no frame of the camera follows them
# the reason of the last ``offline`` a camera reports when the run stops it (SIGINT / SIGTERM):
# an operator's stop, not a failure (alerts end with reason "shutdown", the exit status stays 0)
STOP_REASON = "stopped"


@dataclass(frozen=True)
class CameraStatus:
    """A camera's state changed (sent by ingest, relayed by the supervisor to the post stage)."""

    camera: str
    state: CameraState
    reason: str
    ts: float

    def __post_init__(self) -> None:
        if self.state not in CAMERA_STATES:
            raise ValueError(f"camera state must be one of {CAMERA_STATES}, got {self.state!r}")

    @property
    def ended(self) -> bool:
        """No frame of the camera follows this state (the post stage delivers it after the
        camera's last counted frame)."""
        return self.state in END_STATES

    @property
    def stopped(self) -> bool:
        """The run stopped this camera (``offline`` with ``STOP_REASON``), not a failure."""
        return self.state == "offline" and self.reason == STOP_REASON


@dataclass(frozen=True)
class EndOfStream:
    """Returned by ``FrameRing.get`` once every frame before ``put_end`` has been handed out."""

    reason: str = "finished"
