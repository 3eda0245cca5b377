"""Recording: H.264 MP4 segments of each recorded camera, with the overlay drawn (the default) or
clean (``recording.overlay: false``).

The sink (``RecordingSink``, in the post process) only copies each frame into a free slot of its
camera's recorder ring (a ``FrameRing`` the supervisor made under the run prefix) together with
the overlay data (count, zone counts, the small density map, active alerts with their current
values) as the slot's aux blob. When every slot is busy (the encoder is behind) the frame is
skipped and counted (``OutputTally.unrecorded``): recording never slows counting.

The recorder process (``recorder_main``, a child the supervisor spawns, watches and restarts like
any stage) draws the overlay with ``pipeline.overlay.render_overlay`` (the one overlay picture: a
header strip above the scene, the heatmap on a FIXED colour scale with its legend -- people per
map cell, ``recording.heatmap_max_per_cell`` red; people per m^2 for a calibrated camera,
``recording.heatmap_max_m2`` red -- zones with their counts, and one strip per alert rule below
the scene, so nothing in the scene is hidden and the picture's size is constant) and encodes with
libx264 (yuv420p, ``+faststart`` so browsers start playing before the whole file is loaded) into
segments of ``segment_s`` seconds named ``<dir>/<camera>/<camera>-<UTC start>-<frame>.mp4``
(written as ``.part``, renamed when complete), and applies retention by age and by total size
after each segment. On its stop flag it records what is still queued, closes the open segments
and exits.

Example (what the supervisor does)::

    rings = recorder_rings(segments, cfg, {"lobby": (720, 1280)}, block=8)
    spawn_child(ctx, ChildSpec("recorder", RECORDER_TARGET, stop),
                RecorderArgs(cfg, {c: r.handle() for c, r in rings.items()}, stop))
    sink = RecordingSink(cfg.cameras, rings={c: r.handle() ...}, active_alerts=alerts.active)
    sink.open(); sink.write(result); sink.close()       # in the post process
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engines.log import get_logger
from engines.paths import safe_name
from pipeline.config import AppConfig, CameraConfig, RecordingConfig
from pipeline.events import EndOfStream
from pipeline.overlay import AlertView, OverlayView, ZoneView, render_overlay
from pipeline.process import StopFlag
from pipeline.results import FrameResult, OutputTally, Sink
from pipeline.shm import FrameMeta, FrameRing, FrameRingHandle

if TYPE_CHECKING:
    from pipeline.shm import RunSegments

RECORDER_TARGET = "pipeline.sinks.recorder:recorder_main"
OVERLAY_EXTRA_BYTES = 64 * 1024  # room for the overlay data besides the density map

RESTART_BACKOFF_S = 5.0  # a crashed recorder process is restarted at most this often


# ---------------------------------------------------------------------------------- overlay
def _even(n: int) -> int:
    return max(2, n - (n % 2))


def overlay_view(camera: str, cam: CameraConfig, meta: dict[str, Any],
                 density_m2_cells: np.ndarray | None = None) -> OverlayView:
    """What ``pipeline.overlay.render_overlay`` draws for one recorded frame: the overlay data
    that travelled beside it (``RecordingSink``) and the camera's recording settings (colour
    scale, opacity, zone m^2 labels). ``density_m2_cells``: people per m^2 per cell of a
    calibrated camera (the colours then follow ``heatmap_max_m2``)."""
    rc = cam.recording
    m2 = meta.get("zone_density_m2", {})
    zones = [ZoneView(z.name, z.polygon, float(meta["zone_counts"].get(z.name, 0.0)),
                      m2.get(z.name) if rc.draw_density_m2 else None) for z in cam.zones]
    rules = {r.name: r for r in cam.alerts}
    alerts = [AlertView(a["rule"], a["severity"], a["metric"], float(a.get("value") or 0.0),
                        rules[a["rule"]].threshold if a["rule"] in rules else float("nan"),
                        a.get("zone")) for a in meta["alerts"]]
    return OverlayView(camera=camera, ts=meta["capture_ts"], count=meta["count"],
                       density=meta["density"], density_m2=meta.get("density_m2"),
                       density_m2_cells=density_m2_cells, zones=zones, alerts=alerts,
                       cell_pixels=float(meta.get("cell_pixels", 8.0)),
                       opacity=rc.heatmap_opacity, max_m2=rc.heatmap_max_m2,
                       max_per_cell=rc.heatmap_max_per_cell)


# ---------------------------------------------------------------------------------- encoder
@dataclass
class _Segment:
    """One MP4 file being written (``.part`` until complete)."""

    part: Path
    container: Any
    stream: Any
    start_pts: int  # encoder pts (ms) of its first frame: its own timestamps start at 0


class SegmentWriter:
    """H.264 MP4 segments for one camera, with retention applied after each segment.

    ONE encoder per camera lives across segments (a new one only when the frame size changes):
    the first frame of a segment is forced to be an IDR frame, and the packets are muxed into the
    segment their frame belongs to, each segment's timestamps starting at 0. Opening a fresh
    libx264 per segment made the recorder's memory saw-tooth by its ramp (about 10 MB per encoder
    at 640x480) and fragment the heap.
    """

    def __init__(self, camera: str, cfg: RecordingConfig, base_dir: Path) -> None:
        self.camera = camera
        self.cfg = cfg
        self.dir = base_dir / safe_name(camera)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = get_logger("recorder", camera=camera)
        for stale in self.dir.glob("*.mp4.part"):  # left by a crash: unplayable, no index
            stale.unlink(missing_ok=True)
        self._enc: Any = None
        self._size: tuple[int, int] | None = None
        self._seg: _Segment | None = None
        self._cuts: list[tuple[int, Path]] = []  # (encoder pts, file) of segments to start
        self._t0 = 0.0  # media time of the current segment's first frame
        self._t_last: float | None = None
        self._last_pts = -1
        self.segments: list[Path] = []
        self.frames = 0

    def _encoder(self, size: tuple[int, int]) -> Any:
        import av

        enc = av.CodecContext.create("libx264", "w")
        enc.height, enc.width = size
        enc.pix_fmt = "yuv420p"
        enc.time_base = Fraction(1, 1000)  # ms timestamps: variable frame rate
        enc.framerate = Fraction(round(self.cfg.fps) if self.cfg.fps else 30, 1)
        # forced-idr: a frame asked to be a keyframe is an IDR, so a segment starts decodable
        enc.options = {"crf": str(self.cfg.crf), "preset": self.cfg.preset, "forced-idr": "1"}
        return enc

    def _part(self, capture_ts: float, frame_index: int) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(capture_ts))
        return self.dir / f"{safe_name(self.camera)}-{stamp}-{frame_index:08d}.mp4.part"

    def write(self, bgr: np.ndarray, t: float, capture_ts: float, frame_index: int) -> None:
        """Encode one frame at media time ``t`` seconds (source PTS or capture time)."""
        import av
        from av.video.frame import PictureType

        size = (bgr.shape[0], bgr.shape[1])
        if self._enc is not None and size != self._size:
            self.close_segment()  # another size: finish with this encoder, start a new one
        if self._enc is None:
            self._enc, self._size, self._t_last = self._encoder(size), size, None
        # encoder time only moves forward: a source that jumps back (a looped file) goes on
        step = 0 if self._t_last is None else int(round((t - self._t_last) * 1000))
        pts = max(self._last_pts + max(step, 1), 0) if self._last_pts >= 0 else 0
        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
        frame.pts = pts
        if self._t_last is None or t < self._t0 or t - self._t0 >= self.cfg.segment_s:
            frame.pict_type = PictureType.I
            self._cuts.append((pts, self._part(capture_ts, frame_index)))
            self._t0 = t
        self._t_last, self._last_pts = t, pts
        for packet in self._enc.encode(frame):
            self._mux(packet)
        self.frames += 1

    def _mux(self, packet: Any) -> None:
        """Into the segment its frame belongs to: the keyframe that starts the next segment
        completes the current one (packets come in decode order; none before it is later)."""
        if self._cuts and packet.is_keyframe and packet.pts >= self._cuts[0][0]:
            pts, part = self._cuts.pop(0)
            self._finish()
            self._seg = self._open(part, pts)
        if self._seg is None:
            return  # cannot happen: the first frame is always a cut
        packet.pts -= self._seg.start_pts
        packet.dts -= self._seg.start_pts
        packet.stream = self._seg.stream
        self._seg.container.mux(packet)

    def _open(self, part: Path, start_pts: int) -> _Segment:
        import av

        container = av.open(str(part), "w", format="mp4", options={"movflags": "+faststart"})
        assert self._size is not None
        stream = container.add_mux_stream("h264", rate=round(self.cfg.fps or 30),
                                          width=self._size[1], height=self._size[0])
        stream.time_base = Fraction(1, 1000)
        return _Segment(part, container, stream, start_pts)

    def _finish(self) -> None:
        """Close the current segment's file and make it final (``.part`` dropped)."""
        seg, self._seg = self._seg, None
        if seg is None:
            return
        seg.container.close()
        final = seg.part.with_suffix("")  # drop ".part"
        seg.part.rename(final)
        self.segments.append(final)
        self.log.info("segment", file=final.name, size_kb=final.stat().st_size // 1024)
        self.apply_retention()

    def close_segment(self) -> None:
        """Flush the encoder into the open segment(s) and finish them (at stop, or before a new
        frame size); the next frame starts a new encoder and segment."""
        enc, self._enc = self._enc, None
        try:
            if enc is not None:
                for packet in enc.encode(None):
                    self._mux(packet)
            self._finish()
        finally:
            self._cuts.clear()
            self._last_pts = -1

    def abandon(self) -> None:
        """Drop the encoder and the open segment after an encoding error (its ``.part`` file is
        deleted); the next frame starts afresh."""
        seg, self._seg, self._enc = self._seg, None, None
        self._cuts.clear()
        self._last_pts = -1
        if seg is not None:
            try:
                seg.container.close()
            except Exception:  # noqa: BLE001 - already broken
                pass
            seg.part.unlink(missing_ok=True)

    def apply_retention(self) -> None:
        """Delete segments older than ``retain_hours``, then the oldest beyond ``retain_gb``
        (never the newest one)."""
        files = sorted(self.dir.glob("*.mp4"), key=lambda p: p.stat().st_mtime)
        cutoff = time.time() - self.cfg.retain_hours * 3600
        keep = []
        for f in files:
            if f.stat().st_mtime < cutoff:
                f.unlink(missing_ok=True)
                self.log.info("retention: deleted old segment", file=f.name)
            else:
                keep.append(f)
        limit = self.cfg.retain_gb * 1024 ** 3
        total = sum(f.stat().st_size for f in keep)
        while len(keep) > 1 and total > limit:  # the segment just written always stays
            f = keep.pop(0)
            total -= f.stat().st_size
            f.unlink(missing_ok=True)
            self.log.info("retention: deleted segment over size limit", file=f.name)


# ---------------------------------------------------------------------------------- process
def _downscale(frame: np.ndarray, max_width: int) -> np.ndarray:
    import cv2

    h, w = frame.shape[:2]
    if w > max_width:
        nh = _even(round(h * max_width / w))
        return cv2.resize(frame, (_even(max_width), nh), interpolation=cv2.INTER_AREA)
    if w % 2 or h % 2:  # yuv420p needs even sides
        return frame[: _even(h), : _even(w)]
    return frame


def recording_dir(cfg: AppConfig, camera: str) -> Path:
    """Where a camera's segments go: ``recording.dir`` or ``<run_dir>/recordings``."""
    rc = cfg.cameras[camera].recording
    return Path(rc.dir) if rc.dir else Path(cfg.run_dir) / "recordings"


def overlay_aux_bytes(height: int, width: int, block: int) -> int:
    """Aux room per recorder slot: a float32 density map of a (height, width) frame at ``block``
    pixels per cell, plus the rest of the overlay data."""
    cells = (-(-height // block) + 1) * (-(-width // block) + 1)
    return cells * 4 + OVERLAY_EXTRA_BYTES


def recorder_rings(segments: RunSegments, cfg: AppConfig, sizes: dict[str, tuple[int, int]],
                   block: int) -> dict[str, FrameRing]:
    """One lossless ring per recorded camera (``sizes``: camera -> largest (height, width)),
    ``recording.queue_slots`` slots each, made under the run's prefix."""
    rings = {}
    for i, (cam, (h, w)) in enumerate(sizes.items()):
        rc = cfg.cameras[cam].recording
        rings[cam] = segments.frame_ring(f"rec{i}", max(2, rc.queue_slots), h, w, "lossless",
                                         overlay_aux_bytes(h, w, block), camera=cam)
    return rings


@dataclass
class RecorderArgs:
    """Spawn arguments of the recorder process."""

    cfg: AppConfig
    rings: dict[str, FrameRingHandle]  # recorded camera -> its ring
    stop: StopFlag  # set after the post stage stopped: record what is queued, then exit


class _Recorder:
    """The recorder process's state: a segment writer and a ground calibration per camera."""

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg
        self.log = get_logger("recorder")
        self.writers: dict[str, SegmentWriter] = {}
        self.ground: dict[tuple[str, tuple[int, int]], Any] = {}  # GroundCalibration or None

    def _density_m2(self, cam: str, frame_size: tuple[int, int],
                    meta: dict[str, Any]) -> np.ndarray | None:
        """People per m^2 per cell for a calibrated camera (None otherwise, or when unusable)."""
        cal = self.cfg.cameras[cam].calibration
        if cal is None or meta["density"] is None:
            return None
        key = (cam, frame_size)
        if key not in self.ground:
            try:
                from calibrate.ground import GroundCalibration

                self.ground[key] = GroundCalibration.from_config(cal, frame_size=frame_size,
                                                                 camera=cam)
            except Exception as e:  # noqa: BLE001 - record in people per cell, say why once
                self.ground[key] = None
                self.log.error("ground calibration unusable: heatmap in people per cell",
                               camera=cam, error=f"{type(e).__name__}: {e}")
        ground = self.ground[key]
        if ground is None:
            return None
        return ground.density_m2(meta["density"], float(meta.get("cell_pixels", 8.0)))

    def picture(self, cam: str, frame: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
        """The frame as recorded: downscaled to ``max_width``, with the overlay unless the
        camera records clean (``recording.overlay: false``)."""
        cam_cfg = self.cfg.cameras[cam]
        rc: RecordingConfig = cam_cfg.recording
        size = (frame.shape[0], frame.shape[1])
        frame = _downscale(frame, rc.max_width)
        if not rc.overlay:
            return frame
        view = overlay_view(cam, cam_cfg, meta, self._density_m2(cam, size, meta))
        # a strip per alert rule, always there: the picture's size never changes mid-segment
        return render_overlay(frame, view, alert_rows=len(cam_cfg.alerts))

    def record(self, cam: str, frame: np.ndarray, meta: dict[str, Any]) -> None:
        rc: RecordingConfig = self.cfg.cameras[cam].recording
        frame = self.picture(cam, frame, meta)
        wr = self.writers.get(cam)
        if wr is None:
            wr = self.writers[cam] = SegmentWriter(cam, rc, recording_dir(self.cfg, cam))
        try:
            wr.write(frame, meta["t"], meta["capture_ts"], meta["frame_index"])
        except Exception as e:  # noqa: BLE001 - a bad segment must not end the recorder
            self.log.error("encode failed, starting a new segment", camera=cam,
                           error=f"{type(e).__name__}: {e}")
            wr.abandon()

    def close(self) -> None:
        for wr in self.writers.values():
            try:
                wr.close_segment()
            except Exception as e:  # noqa: BLE001
                self.log.error("closing segment failed", camera=wr.camera, error=str(e))


def _take(ring: FrameRing, timeout: float) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The next queued frame (a copy) and its overlay data; the slot is given back at once."""
    item = ring.get(timeout=timeout)
    if item is None or isinstance(item, EndOfStream):
        return None
    slot, _, view = item
    try:
        frame, blob = view.copy(), ring.aux(slot)
    finally:
        ring.release(slot)
    return frame, pickle.loads(blob)


def recorder_main(args: RecorderArgs) -> None:
    """Process target: record every camera's ring until the stop flag, then drain and finish."""
    log = get_logger("recorder")
    rings = {cam: FrameRing.attach(h) for cam, h in args.rings.items()}
    rec = _Recorder(args.cfg)
    log.info("started", cameras=",".join(rings))
    wait = 0.1 if len(rings) == 1 else 0.0  # several rings: poll them in turn
    try:
        while True:
            stopping = args.stop.is_set()  # read before the pass: what it finds is drained
            got = 0
            for cam, ring in rings.items():
                item = _take(ring, 0.0 if stopping else wait)
                if item is not None:
                    rec.record(cam, *item)
                    got += 1
            if stopping and not got:
                break
            if not got and wait == 0.0:
                time.sleep(0.005)
    finally:
        rec.close()
        for ring in rings.values():
            ring.close()
        log.info("stopped")


class RecordingSink(Sink):
    """Last output sink: feeds the recorder process through its rings (see the module docstring).

    ``rings``: camera -> recorder ring handle (from ``StageArgs.recorder_rings``); a recorded
    camera without one is not recorded (said once at ``open``).
    """

    wants_frames = True

    def __init__(self, cameras: dict[str, CameraConfig],
                 rings: dict[str, FrameRingHandle] | None = None,
                 active_alerts: Callable[[str], list[dict[str, Any]]] | None = None,
                 tally: OutputTally | None = None) -> None:
        self.cams = {n: c for n, c in cameras.items() if c.recording.enabled}
        self._tally = tally
        self._handles = dict(rings or {})
        self._active = active_alerts
        self._rings: dict[str, FrameRing] = {}
        self._last_t: dict[str, float] = {}
        self._warned: set[tuple[str, str]] = set()
        self.sent = 0
        self.skipped = 0  # frames not recorded because the recorder was behind (or restarting)
        self.log = get_logger("recorder")

    def open(self) -> None:
        missing = [c for c in self.cams if c not in self._handles]
        if missing:
            self.log.warning("no recorder ring: not recording", cameras=",".join(missing))
        self._rings = {c: FrameRing.attach(h) for c, h in self._handles.items() if c in self.cams}

    def _warn_once(self, cam: str, event: str, **fields: Any) -> None:
        if (cam, event) not in self._warned:
            self._warned.add((cam, event))
            self.log.warning(event, camera=cam, **fields)

    def _overlay(self, cam: str, result: FrameResult, t: float, room: int) -> bytes:
        drawn = self.cams[cam].recording.overlay  # a clean recording needs no overlay data
        meta = {"t": float(t), "capture_ts": result.capture_ts, "frame_index": result.frame_index,
                "count": result.count, "density_m2": result.density_m2,
                "cell_pixels": float(result.cell_pixels),
                "density": np.asarray(result.density.map, np.float32) if drawn else None,
                "zone_counts": dict(result.zone_counts),
                "zone_density_m2": dict(result.zone_density_m2),
                "alerts": self._active(cam) if self._active and drawn else []}
        blob = pickle.dumps(meta, protocol=pickle.HIGHEST_PROTOCOL)
        if len(blob) > room:  # a density map larger than planned: record without the heatmap
            self._warn_once(cam, "density map too large for the recorder ring; no heatmap",
                            bytes=len(blob), room=room)
            blob = pickle.dumps({**meta, "density": None}, protocol=pickle.HIGHEST_PROTOCOL)
        return blob

    def write(self, result: FrameResult) -> None:
        cam = result.camera
        ring = self._rings.get(cam)
        if ring is None:
            return
        if result.frame is None:
            self._warn_once(cam, "no frame in result; recording needs wants_frames")
            return
        rc = self.cams[cam].recording
        t = result.pts if result.pts is not None else result.capture_ts
        last = self._last_t.get(cam)
        if rc.fps and last is not None and 0 <= t - last < 1.0 / rc.fps:
            return
        h, w = result.frame.shape[:2]
        try:
            got = ring.reserve(h, w, timeout=0)
        except ValueError as e:  # larger than the camera's planned size
            self._skip(cam)
            self._warn_once(cam, "frame does not fit the recorder ring; skipped", error=str(e))
            return
        if got is None:
            self._skip(cam)
            return
        slot, view = got
        try:
            np.copyto(view, result.frame)
            blob = self._overlay(cam, result, t, ring.aux_capacity)
        except BaseException:
            ring.abort(slot)
            raise
        ring.commit(slot, FrameMeta(cam, result.frame_index, result.pts, result.capture_ts, h, w),
                    blob)
        self._last_t[cam] = t
        self.sent += 1

    def _skip(self, cam: str) -> None:
        self.skipped += 1
        if self._tally is not None:
            self._tally.unrecorded(cam)

    def close(self) -> None:
        """Detach; the recorder process finishes the segments when the supervisor stops it."""
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()
        if self.skipped:
            self.log.info("recording skipped frames (encoder behind)", skipped=self.skipped)
