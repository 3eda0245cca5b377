"""Redis key names of the published schema, shared by the publisher and the client.

Every per-camera key carries the camera in a hash tag (``{lobby}``) so all keys of one camera land
in the same slot on Redis Cluster and can be pipelined together.

Example::

    k = RedisKeys("crowdstream")
    k.counts("lobby")   # 'crowdstream:{lobby}:counts'
"""

from __future__ import annotations

from dataclasses import dataclass


def camera_tag(camera: str) -> str:
    """The camera id as used inside a hash tag: braces would end the tag early, so they go."""
    return camera.replace("{", "_").replace("}", "_")


@dataclass(frozen=True)
class RedisKeys:
    namespace: str = "crowdstream"

    def _cam(self, camera: str, suffix: str) -> str:
        return f"{self.namespace}:{{{camera_tag(camera)}}}:{suffix}"

    def counts(self, camera: str) -> str:
        """Stream of ``crowdstream.count.v1`` (XADD MAXLEN ~)."""
        return self._cam(camera, "counts")

    def status(self, camera: str) -> str:
        """Stream of ``crowdstream.status.v1``."""
        return self._cam(camera, "status")

    def latest(self, camera: str) -> str:
        """Hash with the latest count, status and heatmap key."""
        return self._cam(camera, "latest")

    def live(self, camera: str) -> str:
        """Pub/sub channel of small ``crowdstream.notify.v1`` notifications."""
        return self._cam(camera, "live")

    def heatmap(self, camera: str, frame_index: int) -> str:
        """Hash (with a TTL) holding one ``crowdstream.heatmap.v1``."""
        return self._cam(camera, f"heatmap:{frame_index}")

    def snapshot(self, camera: str) -> str:
        """Hash (with a TTL) holding the camera's latest ``crowdstream.snapshot.v1`` JPEG."""
        return self._cam(camera, "snapshot")

    def frame(self, camera: str) -> str:
        """Hash (with a TTL): a full-resolution ``crowdstream.snapshot.v1``, stored on request."""
        return self._cam(camera, "frame")

    def frame_request(self, camera: str) -> str:
        """String key a client sets to ask for one full-resolution frame (read and deleted by
        the publisher with its next snapshot)."""
        return self._cam(camera, "frame:request")

    def rollup(self, camera: str) -> str:
        """Stream of ``crowdstream.rollup.v1``: counts summarised per time window."""
        return self._cam(camera, "counts:rollup")

    def control(self) -> str:
        """Stream of ``crowdstream.control.v1`` requests to the running pipelines."""
        return f"{self.namespace}:control"

    def control_replies(self) -> str:
        """Stream of ``crowdstream.control.v1`` replies from the running pipelines."""
        return f"{self.namespace}:control:replies"

    def alerts(self) -> str:
        """Stream of ``crowdstream.alert.v1`` for all cameras."""
        return f"{self.namespace}:alerts"

    def cameras(self) -> str:
        """Set of camera ids that have published."""
        return f"{self.namespace}:cameras"
