"""The one place every published message is built: a frame result, a camera status, an alert, a
heatmap's metadata and a live notification become the JSON-able dicts (envelopes) their schema in
``pipeline/schema`` describes. The Redis sink and the JSON-lines sink both call ``count_envelope``
and ``status_envelope``, so both outputs carry the same fields under the same names.

Example::

    env = count_envelope(result, publish_ts=time.time())
    text = to_json(env)        # {"schema":"crowdstream.count.v1","camera":"mall",...}
    status_envelope(CameraStatus("mall", "online", "first frame", time.time()))
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.events import CameraStatus
from pipeline.results import FrameResult
from pipeline.schema import (
    ALERT_SCHEMA,
    CONTROL_SCHEMA,
    COUNT_SCHEMA,
    HEATMAP_SCHEMA,
    NOTIFY_SCHEMA,
    ROLLUP_SCHEMA,
    SNAPSHOT_SCHEMA,
    STATUS_SCHEMA,
)

__all__ = ["alert_envelope", "control_reply", "control_request", "count_envelope",
           "heatmap_envelope", "heatmap_ref", "notify_envelope", "rollup_envelope",
           "snapshot_envelope", "snapshot_ref", "status_envelope", "to_json"]


def _opt(x: float | None) -> float | None:
    return None if x is None else float(x)


def zone_fields(r: FrameResult) -> dict[str, dict[str, float]]:
    """``{zone: {count, density, density_m2?}}``: people, people per map cell, people per m²."""
    zones: dict[str, dict[str, float]] = {}
    for name, c in r.zone_counts.items():
        z = {"count": max(0.0, float(c)), "density": max(0.0, float(r.zone_density.get(name, 0.0)))}
        if name in r.zone_density_m2:
            z["density_m2"] = float(r.zone_density_m2[name])
        zones[name] = z
    return zones


def count_envelope(r: FrameResult, *, publish_ts: float | None = None,
                   heatmap: dict[str, Any] | None = None,
                   run_id: str | None = None) -> dict[str, Any]:
    """The ``crowdstream.count.v1`` envelope of a frame result.

    ``publish_ts`` is when the message was handed to its output (the Redis sink sets it when it
    sends); ``heatmap`` the reference from ``heatmap_ref`` when one was stored; ``run_id`` is
    added when given; ``model`` (the label of the model that counted the frame) when known, and
    ``reused_tiles`` (how many of the frame's tiles, and which, kept the density of an earlier
    frame) on cameras with the motion gate on. The dict holds no numpy types, so it stays valid
    after ``r`` is reused.
    """
    result_ts = float(r.result_ts or r.capture_ts)
    env: dict[str, Any] = {
        "schema": COUNT_SCHEMA,
        "camera": r.camera,
        "frame_index": int(r.frame_index),
        "pts": _opt(r.pts),
        "capture_ts": float(r.capture_ts),
        "result_ts": result_ts,
        "publish_ts": float(result_ts if publish_ts is None else publish_ts),
        "latency_ms": round((result_ts - float(r.capture_ts)) * 1000.0, 3),
        "count": max(0.0, float(r.count)),
        "raw_count": max(0.0, float(r.raw_count)),
        "density_m2": _opt(r.density_m2),
        "zones": zone_fields(r),
        "frame_size": [int(r.frame_size[0]), int(r.frame_size[1])],
        "cell_pixels": float(r.cell_pixels),
        "engine_id": str(r.engine_id),
        "heatmap": heatmap,
    }
    if r.model:
        env["model"] = r.model
    if r.reused_tiles is not None:
        env["reused_tiles"] = {"count": len(r.reused_tiles), "of": int(r.tiles),
                               "indices": [int(i) for i in r.reused_tiles]}
    if run_id is not None:
        env["run_id"] = run_id
    return env


def status_envelope(st: CameraStatus, run_id: str | None = None) -> dict[str, Any]:
    """The ``crowdstream.status.v1`` envelope of a camera state change."""
    env: dict[str, Any] = {"schema": STATUS_SCHEMA, "camera": st.camera, "state": st.state,
                           "reason": str(st.reason), "ts": float(st.ts)}
    if run_id is not None:
        env["run_id"] = run_id
    return env


def alert_envelope(*, event: str, alert_id: str, rule: str, camera: str, zone: str | None,
                   metric: str, severity: str, threshold: float, clear: float,
                   before: float | None, after: float, peak: float, started_ts: float, ts: float,
                   frame_index: int, reason: str | None = None,
                   run_id: str | None = None) -> dict[str, Any]:
    """The ``crowdstream.alert.v1`` event (the Redis alerts stream and the webhook body)."""
    env: dict[str, Any] = {
        "schema": ALERT_SCHEMA, "event": event, "alert_id": alert_id, "rule": rule,
        "camera": camera, "zone": zone, "metric": metric, "severity": severity,
        "threshold": float(threshold), "clear": float(clear), "before": _opt(before),
        "after": float(after), "peak": float(peak), "started_ts": float(started_ts),
        "ts": float(ts), "duration_s": max(0.0, float(ts) - float(started_ts)),
        "frame_index": int(frame_index),
    }
    if reason:
        env["reason"] = reason
    if run_id is not None:
        env["run_id"] = run_id
    return env


def heatmap_envelope(*, camera: str, frame_index: int, capture_ts: float, fmt: str,
                     shape: tuple[int, int], scale: float, frame_size: tuple[int, int],
                     cell_pixels: float, count: float, bits: int | None) -> dict[str, Any]:
    """The ``crowdstream.heatmap.v1`` metadata (stored beside the ``data`` bytes)."""
    env: dict[str, Any] = {
        "schema": HEATMAP_SCHEMA, "camera": camera, "frame_index": int(frame_index),
        "capture_ts": float(capture_ts), "format": fmt, "height": int(shape[0]),
        "width": int(shape[1]), "scale": float(scale), "frame_height": int(frame_size[0]),
        "frame_width": int(frame_size[1]), "cell_pixels": float(cell_pixels),
        "count": float(count),
    }
    if bits is not None:
        env["bits"] = int(bits)
    return env


def heatmap_ref(key: str, fmt: str, ttl_s: int) -> dict[str, Any]:
    """The ``heatmap`` field of a count envelope whose heatmap was stored under ``key``."""
    return {"key": key, "format": fmt, "ttl_s": int(ttl_s)}


def snapshot_envelope(*, camera: str, frame_index: int, capture_ts: float, size: tuple[int, int],
                      frame_size: tuple[int, int], quality: int, heatmap_key: str | None = None,
                      run_id: str | None = None) -> dict[str, Any]:
    """The ``crowdstream.snapshot.v1`` metadata (stored beside the JPEG ``data`` bytes);
    ``size`` and ``frame_size`` are (height, width) of the JPEG and of the decoded frame."""
    env: dict[str, Any] = {
        "schema": SNAPSHOT_SCHEMA, "camera": camera, "frame_index": int(frame_index),
        "capture_ts": float(capture_ts), "width": int(size[1]), "height": int(size[0]),
        "frame_width": int(frame_size[1]), "frame_height": int(frame_size[0]),
        "quality": int(quality)}
    if heatmap_key:
        env["heatmap_key"] = heatmap_key
    if run_id is not None:
        env["run_id"] = run_id
    return env


def snapshot_ref(key: str, frame_index: int, ttl_s: int) -> dict[str, Any]:
    """The ``snapshot`` field of a count envelope whose frame's JPEG was stored under ``key``."""
    return {"key": key, "frame_index": int(frame_index), "ttl_s": int(ttl_s)}


def rollup_envelope(*, camera: str, start_ts: float, end_ts: float, frames: int,
                    count_mean: float, count_max: float, count_min: float,
                    density_m2_mean: float | None, zones: dict[str, dict[str, Any]],
                    run_id: str | None = None) -> dict[str, Any]:
    """The ``crowdstream.rollup.v1`` summary of one camera's counts over a time window."""
    env: dict[str, Any] = {
        "schema": ROLLUP_SCHEMA, "camera": camera, "start_ts": float(start_ts),
        "end_ts": float(end_ts), "frames": int(frames), "count_mean": float(count_mean),
        "count_max": float(count_max), "count_min": float(count_min),
        "density_m2_mean": _opt(density_m2_mean),
        "zones": {str(n): {k: _opt(v) for k, v in z.items()} for n, z in zones.items()}}
    if run_id is not None:
        env["run_id"] = run_id
    return env


def control_request(kind: str, request_id: str, ts: float, *, camera: str | None = None,
                    origin: str = "") -> dict[str, Any]:
    """A ``crowdstream.control.v1`` request to the running pipelines (``kind``: ``reload``)."""
    env: dict[str, Any] = {"schema": CONTROL_SCHEMA, "kind": kind, "request_id": request_id,
                           "ts": float(ts), "camera": camera}
    if origin:
        env["origin"] = origin
    return env


def control_reply(request_id: str, ts: float, *, run_id: str, ok: bool, message: str,
                  applied: list[str] | None = None) -> dict[str, Any]:
    """A pipeline's ``crowdstream.control.v1`` reply to a request."""
    return {"schema": CONTROL_SCHEMA, "kind": "reply", "request_id": request_id, "ts": float(ts),
            "run_id": run_id, "ok": bool(ok), "message": " ".join(str(message).split()),
            "applied": list(applied or [])}


def notify_envelope(camera: str, kind: str, ts: float, **fields: Any) -> dict[str, Any]:
    """A small ``crowdstream.notify.v1`` (pub/sub): references, never blobs."""
    return {"schema": NOTIFY_SCHEMA, "camera": camera, "kind": kind, "ts": float(ts), **fields}


def to_json(env: dict[str, Any]) -> str:
    """Compact JSON of an envelope; NaN or infinity is an error (not valid JSON)."""
    return json.dumps(env, separators=(",", ":"), allow_nan=False)
