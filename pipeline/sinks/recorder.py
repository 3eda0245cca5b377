"""Overlay recording: H.264 MP4 segments with the heatmap, count, zones and active alerts drawn.

The sink (``RecordingSink``, in the post process) only copies each frame into a free slot of a
small per-camera shared-memory ring and sends the slot number plus the overlay data (count, zone
counts, the small density map, active alerts) to a separate recorder process. When every slot is
busy (the encoder is behind) the frame is skipped and counted: recording never slows counting.

The recorder process draws the overlay and encodes with libx264 (yuv420p, ``+faststart`` so
browsers start playing before the whole file is loaded) into segments of ``segment_s`` seconds
named ``<dir>/<camera>/<camera>-<UTC start>-<frame>.mp4`` (written as ``.part``, renamed when
complete), and applies retention by age and by total size after each segment.

Example::

    sink = RecordingSink(cfg.cameras, run_dir=cfg.run_dir, active_alerts=alert_sink.active)
    sink.open()          # starts the recorder process
    sink.write(result)   # result.frame must be set (wants_frames = True)
    sink.close()         # finishes the open segments
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import queue
import re
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

from engines.log import get_logger
from pipeline.config import CameraConfig, RecordingConfig, ZoneConfig
from pipeline.results import FrameResult

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
RESTART_BACKOFF_S = 5.0  # a crashed recorder process is restarted at most this often


def safe_name(camera: str) -> str:
    """A file-name-safe id for a camera: no separators, no leading dots, no spaces.

    Any id that had to change gets a short hash of the original appended, so two different ids
    never map to the same name ("../x" -> "x-3f2a..."; "lobby 1" -> "lobby_1-..." ).
    """
    s = _SAFE.sub("_", camera).strip("._-")[:64]
    if s == camera and s:
        return s
    return f"{s or 'camera'}-{hashlib.sha1(camera.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------------------------- overlay
def _even(n: int) -> int:
    return max(2, n - (n % 2))


def draw_overlay(frame: np.ndarray, density: np.ndarray | None, count: float, camera: str,
                 ts: float, zones: list[ZoneConfig], zone_counts: dict[str, float],
                 zone_m2: dict[str, float], alerts: list[dict[str, Any]], opacity: float,
                 heat_scale: float, draw_m2: bool = False) -> np.ndarray:
    """Draw the heatmap (colour map, weighted by density), zones, count and alerts in place.

    ``heat_scale`` is the density drawn at full colour (a slowly decaying running maximum, so the
    colours do not flicker frame to frame).
    """
    import cv2

    h, w = frame.shape[:2]
    if density is not None and density.size and heat_scale > 0:
        grey = np.clip(density / heat_scale * 255.0, 0, 255).astype(np.uint8)
        grey = cv2.resize(grey, (w, h), interpolation=cv2.INTER_LINEAR)
        colour = cv2.applyColorMap(grey, cv2.COLORMAP_TURBO)
        # alpha grows with density so empty floor keeps its real colours
        alpha = (np.sqrt(grey.astype(np.float32) / 255.0) * opacity)[..., None]
        frame[:] = (frame * (1.0 - alpha) + colour * alpha).astype(np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.4, w / 1600)
    thick = max(1, round(scale * 2))
    line = int(28 * scale / 0.6)
    header = line + 8
    for z in zones:
        pts = (np.asarray(z.polygon, np.float64) * [w, h]).round().astype(np.int32)
        cv2.polylines(frame, [pts.reshape(-1, 1, 2)], True, (255, 255, 255), thick, cv2.LINE_AA)
        label = f"{z.name}: {zone_counts.get(z.name, 0.0):.1f}"
        if draw_m2 and z.name in zone_m2:
            label += f" ({zone_m2[z.name]:.2f}/m2)"
        # above the zone, or just inside it when that would hide it under the header bar
        x = max(int(pts[:, 0].min()) + 4, 4)
        y = int(pts[:, 1].min()) - 6
        if y < 2 * header:
            y = int(pts[:, 1].min()) + header + 4
        cv2.putText(frame, label, (x, y), font, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(frame, label, (x, y), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    head = f"{camera}  count {count:.1f}  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(ts))}Z"
    cv2.rectangle(frame, (0, 0), (w, header), (0, 0, 0), -1)
    cv2.putText(frame, head, (8, line), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    for i, a in enumerate(alerts):
        where = f" zone {a['zone']}" if a.get("zone") else ""
        val = a.get("value")
        text = f"ALERT {a['severity']}: {a['rule']}{where} {a['metric']} " + \
            (f"{val:.2f}" if isinstance(val, (int, float)) else "")
        y = h - 10 - i * (line + 6)
        cv2.rectangle(frame, (0, y - line), (w, y + 6), (0, 0, 200), -1)
        cv2.putText(frame, text, (8, y), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return frame


# ---------------------------------------------------------------------------------- encoder
class SegmentWriter:
    """H.264 MP4 segments for one camera, with retention applied after each segment."""

    def __init__(self, camera: str, cfg: RecordingConfig, base_dir: Path) -> None:
        self.camera = camera
        self.cfg = cfg
        self.dir = base_dir / safe_name(camera)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = get_logger("recorder", camera=camera)
        for stale in self.dir.glob("*.mp4.part"):  # left by a crash: unplayable, no index
            stale.unlink(missing_ok=True)
        self._container: Any = None
        self._stream: Any = None
        self._part: Path | None = None
        self._t0 = 0.0
        self._last_pts = -1
        self._size: tuple[int, int] | None = None
        self.segments: list[Path] = []
        self.frames = 0

    def _open(self, t: float, capture_ts: float, frame_index: int, size: tuple[int, int]) -> None:
        import av

        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(capture_ts))
        name = f"{safe_name(self.camera)}-{stamp}-{frame_index:08d}.mp4"
        self._part = self.dir / (name + ".part")
        self._container = av.open(str(self._part), "w", format="mp4",
                                  options={"movflags": "+faststart"})
        rate = round(self.cfg.fps) if self.cfg.fps else 30
        st = self._container.add_stream("libx264", rate=rate,
                                        options={"crf": str(self.cfg.crf),
                                                 "preset": self.cfg.preset})
        st.height, st.width = size
        st.pix_fmt = "yuv420p"
        from fractions import Fraction

        st.codec_context.time_base = Fraction(1, 1000)  # ms timestamps: variable frame rate
        self._stream = st
        self._t0, self._last_pts, self._size = t, -1, size

    def write(self, bgr: np.ndarray, t: float, capture_ts: float, frame_index: int) -> None:
        """Encode one frame at media time ``t`` seconds (source PTS or capture time)."""
        import av

        size = (bgr.shape[0], bgr.shape[1])
        if self._container is not None and (size != self._size or t < self._t0 or
                                            t - self._t0 >= self.cfg.segment_s):
            self.close_segment()
        if self._container is None:
            self._open(t, capture_ts, frame_index, size)
        pts = max(int(round((t - self._t0) * 1000)), self._last_pts + 1)
        self._last_pts = pts
        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
        frame.pts = pts
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close_segment(self) -> None:
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
        finally:
            self._container = None
        assert self._part is not None
        final = self._part.with_suffix("")  # drop ".part"
        self._part.rename(final)
        self.segments.append(final)
        self.log.info("segment", file=final.name, size_kb=final.stat().st_size // 1024)
        self.apply_retention()

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


def recorder_main(cameras: dict[str, dict[str, Any]], inq: Any, freeq: Any) -> None:
    """The recorder process: attach rings, draw, encode, hand slots back, until ``None``."""
    from pipeline.config import RecordingConfig, ZoneConfig

    log = get_logger("recorder")
    rings: dict[str, tuple[int, shared_memory.SharedMemory]] = {}
    writers: dict[str, SegmentWriter] = {}
    heat_scale: dict[str, float] = {}
    cfgs = {c: RecordingConfig(**d["recording"]) for c, d in cameras.items()}
    zones = {c: [ZoneConfig(**z) for z in d["zones"]] for c, d in cameras.items()}
    try:
        while True:
            msg = inq.get()
            if msg is None:
                break
            kind, cam = msg[0], msg[1]
            if kind == "ring":
                _, _, gen, name = msg
                old = rings.pop(cam, None)
                if old:
                    old[1].close()
                try:
                    shm = shared_memory.SharedMemory(name=name)
                except FileNotFoundError:  # already replaced by a larger ring; that one follows
                    continue
                rings[cam] = (gen, shm)
                continue
            _, _, gen, slot, offset, shape, meta = msg
            ring = rings.get(cam)
            if ring is None or ring[0] != gen:
                freeq.put((cam, gen, slot))
                continue
            frame = np.ndarray(shape, np.uint8, buffer=ring[1].buf, offset=offset).copy()
            freeq.put((cam, gen, slot))  # the slot is free as soon as the frame is copied out
            rc = cfgs[cam]
            frame = _downscale(frame, rc.max_width)
            dens = meta["density"]
            peak = float(dens.max()) if dens is not None and dens.size else 0.0
            heat_scale[cam] = max(heat_scale.get(cam, 0.0) * 0.995, peak, 1e-6)
            draw_overlay(frame, dens, meta["count"], cam, meta["capture_ts"], zones[cam],
                         meta["zone_counts"], meta["zone_density_m2"], meta["alerts"],
                         rc.heatmap_opacity, heat_scale[cam], rc.draw_density_m2)
            base = Path(cameras[cam]["dir"])
            wr = writers.get(cam)
            if wr is None:
                wr = writers[cam] = SegmentWriter(cam, rc, base)
            try:
                wr.write(frame, meta["t"], meta["capture_ts"], meta["frame_index"])
            except Exception as e:  # noqa: BLE001 - a bad segment must not end the recorder
                log.error("encode failed, starting a new segment", camera=cam,
                          error=f"{type(e).__name__}: {e}")
                wr._container = None
    finally:
        for wr in writers.values():
            try:
                wr.close_segment()
            except Exception as e:  # noqa: BLE001
                log.error("closing segment failed", camera=wr.camera, error=str(e))
        for _, shm in rings.values():
            shm.close()


class _Ring:
    """The post-process side of one camera's shared-memory frame slots."""

    def __init__(self, gen: int, slots: int, slot_bytes: int) -> None:
        self.gen = gen
        self.slot_bytes = slot_bytes
        self.shm = shared_memory.SharedMemory(create=True, size=slots * slot_bytes)
        self.free = list(range(slots))

    def close(self) -> None:
        self.shm.close()
        try:
            self.shm.unlink()
        except FileNotFoundError:
            pass


class RecordingSink:
    """Last output sink: feeds the recorder process (see the module docstring)."""

    wants_frames = True

    def __init__(self, cameras: dict[str, CameraConfig], run_dir: str = "runs/default",
                 active_alerts: Callable[[str], list[dict[str, Any]]] | None = None) -> None:
        self.cams = {n: c for n, c in cameras.items() if c.recording.enabled}
        self.run_dir = run_dir
        self._active = active_alerts
        self._rings: dict[str, _Ring] = {}
        self._gen = 0
        self._last_t: dict[str, float] = {}
        self._proc: Any = None
        self._inq: Any = None
        self._freeq: Any = None
        self._warned: set[str] = set()
        self.sent = 0
        self.skipped = 0  # frames not recorded because the recorder was behind (or restarting)
        self.restarts = 0
        self._started_at = 0.0
        self.log = get_logger("recorder")

    def dir_for(self, camera: str) -> Path:
        rc = self.cams[camera].recording
        return Path(rc.dir) if rc.dir else Path(self.run_dir) / "recordings"

    def open(self) -> None:
        if self.cams:
            self._start()

    def _start(self) -> None:
        # fresh queues and rings: a process killed mid-get can leave a queue's lock held
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()
        self._started_at = time.monotonic()
        ctx = mp.get_context("spawn")
        self._inq = ctx.Queue(maxsize=64)
        self._freeq = ctx.Queue()
        spec = {n: {"recording": c.recording.model_dump(), "dir": str(self.dir_for(n)),
                    "zones": [z.model_dump() for z in c.zones]} for n, c in self.cams.items()}
        self._proc = ctx.Process(target=recorder_main, args=(spec, self._inq, self._freeq),
                                 name="crowdstream-recorder", daemon=True)
        self._proc.start()
        self.log.info("recorder started", pid=self._proc.pid, cameras=",".join(self.cams))

    def _reclaim(self) -> None:
        while True:
            try:
                cam, gen, slot = self._freeq.get_nowait()
            except queue.Empty:
                return
            ring = self._rings.get(cam)
            if ring is not None and ring.gen == gen:
                ring.free.append(slot)

    def write(self, result: FrameResult) -> None:
        cam = result.camera
        if cam not in self.cams or self._proc is None:
            return
        if result.frame is None:
            if cam not in self._warned:
                self._warned.add(cam)
                self.log.warning("no frame in result; recording needs wants_frames", camera=cam)
            return
        rc = self.cams[cam].recording
        t = result.pts if result.pts is not None else result.capture_ts
        last = self._last_t.get(cam)
        if rc.fps and last is not None and 0 <= t - last < 1.0 / rc.fps:
            return
        if not self._proc.is_alive():
            now = time.monotonic()
            if now - self._started_at < RESTART_BACKOFF_S:
                self.skipped += 1
                return
            self.restarts += 1
            self.log.error("recorder process exited, restarting", exitcode=self._proc.exitcode,
                           restarts=self.restarts)
            self._start()
        self._reclaim()
        frame = np.ascontiguousarray(result.frame, dtype=np.uint8)
        ring = self._rings.get(cam)
        if ring is None or frame.nbytes > ring.slot_bytes:
            if ring is not None:
                ring.close()  # the recorder keeps its own mapping until it re-attaches
            self._gen += 1
            ring = self._rings[cam] = _Ring(self._gen, rc.queue_slots, frame.nbytes)
            self._inq.put(("ring", cam, ring.gen, ring.shm.name))
        if not ring.free:
            self.skipped += 1
            return
        slot = ring.free.pop()
        offset = slot * ring.slot_bytes
        np.ndarray(frame.shape, np.uint8, buffer=ring.shm.buf, offset=offset)[:] = frame
        meta = {"t": float(t), "capture_ts": result.capture_ts, "frame_index": result.frame_index,
                "count": result.count, "density": np.asarray(result.density, np.float32),
                "zone_counts": dict(result.zone_counts),
                "zone_density_m2": dict(result.zone_density_m2),
                "alerts": self._active(cam) if self._active else []}
        try:
            self._inq.put_nowait(("frame", cam, ring.gen, slot, offset, frame.shape, meta))
        except queue.Full:
            ring.free.append(slot)
            self.skipped += 1
            return
        self._last_t[cam] = t
        self.sent += 1

    def close(self, timeout: float = 30.0) -> None:
        if self._proc is None:
            return
        try:
            self._inq.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._proc.join(timeout)
        if self._proc.is_alive():
            self.log.error("recorder did not finish in time; terminating", timeout_s=timeout)
            self._proc.terminate()
            self._proc.join(5)
        self._proc = None
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()
        if self.skipped:
            self.log.info("recording skipped frames (encoder behind)", skipped=self.skipped)
