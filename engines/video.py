"""The one way to open video: classify a URL, open it with PyAV, decode, sample and pace.

Every reader of video goes through here: ingest (live cameras and files), the trainer (frames of
a video dataset), INT8 and ground calibration (a few frames of a camera), ``probe_video`` (frame
size and length before a run). It knows how each kind of source must be opened (RTSP over TCP or
UDP, RTMP, HLS over HTTP(S), local files, V4L2 devices) and which FFmpeg options make a live
stream start fast and fail loudly. No shared memory, no processes: it is tested on its own.

``source_kind`` is the one classifier of a camera URL; ``is_live`` is derived from it, and the
queue policy a camera gets (``latest`` for live, ``lossless`` for files) from that.

Example::

    container = open_source("clip.mp4")          # or any object with the SourceSettings fields
    for frame in iter_video_frames(container, stall_timeout_s=None):
        img = frame.to_ndarray(format="bgr24")     # (h, w, 3) uint8
    container.close()
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from engines.redact import redact_url

if TYPE_CHECKING:  # PyAV is imported lazily: the CLI imports this module's users cheaply
    import av.container
    import av.video.frame
    import av.video.stream

SourceKind = Literal["rtsp", "rtmp", "http", "v4l2", "stream", "file"]

# Probing a live stream with FFmpeg's defaults (5 s / 5 MB) delays the first frame by 1-3 s;
# 32 KB is enough to find the codec parameters of an H.264/H.265 camera stream.
LIVE_PROBESIZE = "32768"


class SourceError(Exception):
    """A source could not be opened or read. ``retry`` says whether reconnecting may help."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class StreamStalled(SourceError):
    """Bytes may still arrive, but no frame was decoded for ``stall_timeout_s``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry=True)


_KIND_BY_SCHEME: dict[str, SourceKind] = {
    "rtsp": "rtsp", "rtsps": "rtsp", "rtmp": "rtmp", "rtmps": "rtmp", "http": "http",
    "https": "http", "udp": "stream", "srt": "stream", "tcp": "stream",
}


def source_kind(url: str) -> SourceKind:
    """Classify a camera URL: ``rtsp``, ``rtmp``, ``http`` (HLS or progressive), ``v4l2``,
    ``stream`` (udp://, srt://, tcp://) or ``file``. Schemes are case-insensitive; a path (relative
    or absolute) or ``file://`` is a file. Everything but ``file`` is live (``is_live``).

    Example::

        source_kind("RTSP://cam/1") == "rtsp"; source_kind("/dev/video0") == "v4l2"
    """
    scheme, sep, _ = url.partition("://")
    if sep:
        return _KIND_BY_SCHEME.get(scheme.lower(), "file")
    if url.startswith("/dev/video"):
        return "v4l2"
    return "file"


def is_live(url: str) -> bool:
    """True for every source that is not a file (cameras, streams, capture devices)."""
    return source_kind(url) != "file"


def file_path(url: str) -> str:
    """The local path of a file source (``file://`` stripped)."""
    return url[len("file://"):] if url.lower().startswith("file://") else url


class ReconnectSettings(Protocol):
    """The timeouts ``open_source`` reads (``pipeline.config.ReconnectConfig`` has them)."""

    stall_timeout_s: float
    open_timeout_s: float


class SourceSettings(Protocol):
    """What ``open_source`` needs of a camera (``pipeline.config.CameraConfig`` has it all)."""

    url: str
    options: dict[str, str]
    rtsp_transport: str
    decode_threads: int
    reconnect: Any  # ReconnectSettings


@dataclass(frozen=True)
class _Timeouts:
    stall_timeout_s: float = 10.0
    open_timeout_s: float = 10.0


@dataclass(frozen=True)
class VideoSource:
    """A source given as a bare URL with default settings (``open_source("clip.mp4")``)."""

    url: str
    options: dict[str, str] = field(default_factory=dict)
    rtsp_transport: str = "tcp"
    decode_threads: int = 0
    reconnect: Any = field(default_factory=_Timeouts)


def as_source(source: str | SourceSettings) -> SourceSettings:
    return VideoSource(source) if isinstance(source, str) else source


@dataclass(frozen=True)
class OpenSpec:
    """Everything ``av.open`` needs for one source: resolved URL, demuxer, options, timeouts."""

    url: str
    kind: SourceKind
    format: str | None
    options: dict[str, str] = field(default_factory=dict)
    timeout: tuple[float, float] | None = None  # (open, read) seconds, PyAV's interrupt callback

    @property
    def live(self) -> bool:
        return self.kind != "file"


def open_spec(source: str | SourceSettings) -> OpenSpec:
    """Build the ``av.open`` arguments for a camera. ``cfg.options`` override every default.

    Live sources get small probe sizes (first frame in ~0.1 s), ``+genpts+discardcorrupt`` and a
    socket timeout so that a hung server raises instead of blocking forever.
    """
    cfg = as_source(source)
    rc = cfg.reconnect
    kind = source_kind(cfg.url)
    url = file_path(cfg.url) if kind == "file" else cfg.url
    fmt: str | None = None
    opts: dict[str, str] = {"fflags": "+genpts+discardcorrupt"}
    read_timeout_us = str(int(rc.stall_timeout_s * 1e6))
    if kind != "file":
        opts.update(analyzeduration="0", probesize=LIVE_PROBESIZE)
    if kind == "rtsp":
        # 'timeout' is the RTSP demuxer's socket I/O timeout (microseconds)
        opts.update(rtsp_transport=cfg.rtsp_transport, timeout=read_timeout_us)
    elif kind in ("rtmp", "http", "stream"):
        # rw_timeout is the generic protocol-level read/write timeout (microseconds)
        opts["rw_timeout"] = read_timeout_us
    elif kind == "v4l2":
        fmt = "v4l2"
    opts.update({str(k): str(v) for k, v in cfg.options.items()})
    fmt = opts.pop("format", fmt)  # a user may force a demuxer, e.g. format: mpegts
    timeout = (rc.open_timeout_s, rc.stall_timeout_s) if kind != "file" else None
    return OpenSpec(url=url, kind=kind, format=fmt, options=opts, timeout=timeout)


def open_source(source: str | SourceSettings) -> av.container.InputContainer:
    """Open a camera's source and set up its first video stream for threaded decoding.

    Raises :class:`SourceError` with a message naming the source: ``retry=False`` for a file
    that is missing, unreadable or not a video (reconnecting cannot help), ``retry=True`` for a
    live source that refused, timed out or sent nothing usable.

    Example::

        container = open_source("clip.mp4")
        stream = container.streams.video[0]
    """
    import av

    cfg = as_source(source)
    spec = open_spec(cfg)
    if not spec.live:
        _check_file(spec.url)
    shown = redact_url(spec.url)
    try:
        container = av.open(spec.url, mode="r", format=spec.format, options=spec.options,
                            timeout=spec.timeout)
    except av.error.InvalidDataError as e:
        if spec.live:
            raise SourceError(f"invalid data from {shown}: {_ffmsg(e)}", retry=True) from None
        raise SourceError(f"not a video file (FFmpeg: {_ffmsg(e)}): {shown}",
                          retry=False) from None
    except (av.error.FFmpegError, OSError) as e:
        raise SourceError(f"cannot open {shown}: {_ffmsg(e)}", retry=spec.live) from None
    if not container.streams.video:
        kinds = ", ".join(s.type for s in container.streams) or "none"
        container.close()
        raise SourceError(f"no video stream in {shown} (streams: {kinds})", retry=spec.live)
    stream = container.streams.video[0]
    # IP cameras send one slice per frame: slice threading then uses one core; AUTO enables
    # frame threading as well.
    stream.thread_type = "AUTO"
    if cfg.decode_threads > 0:
        stream.thread_count = cfg.decode_threads
    return container


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise SourceError(f"file not found: {path}", retry=False)
    if os.path.isdir(path):
        raise SourceError(f"expected a video file, got a directory: {path}", retry=False)
    if not os.access(path, os.R_OK):
        raise SourceError(f"file not readable (permission denied): {path}", retry=False)
    if os.path.getsize(path) == 0:
        raise SourceError(f"not a video file (empty, 0 bytes): {path}", retry=False)


def _ffmsg(e: BaseException) -> str:
    """FFmpeg errors repeat the URL; keep just the reason."""
    msg = getattr(e, "strerror", None) or str(e)
    return str(msg)


@dataclass
class DecodeStats:
    """What one pass over a container produced (read by ingest to judge how it ended)."""

    packets: int = 0
    frames: int = 0
    decode_errors: int = 0
    last_error: str = ""
    last_time: float | None = None  # presentation time (s) of the last decoded frame


def iter_video_frames(container: av.container.InputContainer, *, stall_timeout_s: float | None,
                      stats: DecodeStats | None = None,
                      progress: Callable[[], float] | None = None,
                      ) -> Iterator[av.video.frame.VideoFrame]:
    """Decode the first video stream until it ends, yielding frames.

    A packet that fails to decode is counted in ``stats`` and skipped (a live camera's first
    packets before a key frame, or a damaged region of a file). Demuxer errors propagate (the
    read timeout raises ``TimeoutError``). With ``stall_timeout_s``, raises
    :class:`StreamStalled` when packets keep coming but no frame has been decoded for that long;
    ``progress()`` returns the monotonic time of the last progress (callers that block
    downstream move it forward so waiting on a full queue never counts as a stall).
    """
    import av

    stats = stats if stats is not None else DecodeStats()
    stream = container.streams.video[0]
    last = last_data = time.monotonic()
    # Demux every stream, not just the video one: PyAV skips unselected packets inside its own
    # loop, so a source whose audio keeps flowing after its video died would never come back
    # here for the stall check (and each read is short, so the read timeout never fires).
    for packet in container.demux():
        if stall_timeout_s is not None:
            # A hung RTSP server leaves half a frame in the depacketiser, which FFmpeg hands over
            # only when its read gives up: that late packet must not count as the camera being
            # alive again (it made detection take twice stall_timeout_s).
            now = time.monotonic()
            ref = max(last_data, last, progress()) if progress is not None else max(last_data,
                                                                                    last)
            if now - ref >= stall_timeout_s:
                raise StreamStalled(f"no data for {now - ref:.1f} s (stall_timeout_s "
                                    f"{stall_timeout_s:g})")
            last_data = now
        if packet.stream_index != stream.index:
            frames = []
        else:
            stats.packets += 1
            try:
                frames = packet.decode()  # the final empty packet flushes the decoder
            except av.error.FFmpegError as e:
                # discardcorrupt drops what the demuxer knows is damaged; the rest fails here
                stats.decode_errors += 1
                stats.last_error = _ffmsg(e)
                frames = []
        for frame in frames:
            stats.frames += 1
            if frame.time is not None:
                stats.last_time = float(frame.time)
            yield frame
            last = time.monotonic()
        if stall_timeout_s is not None:
            ref = max(last, progress()) if progress is not None else last
            if time.monotonic() - ref > stall_timeout_s:
                raise StreamStalled(f"no frame decoded for {stall_timeout_s:g} s "
                                    f"({stats.packets} packets, {stats.decode_errors} errors)")


class FpsSampler:
    """Keep at most ``fps`` frames per second of *source* time (PTS), evenly spaced.

    Decoding still happens for every frame (inter frames depend on each other); only kept frames
    are converted and queued. A PTS jump backwards (a restarted camera, a looped file) restarts
    the schedule.

    Example::

        s = FpsSampler(5.0)
        kept = [t for t in (i / 25 for i in range(50)) if s.keep(t)]   # 10 of 50
    """

    def __init__(self, fps: float | None) -> None:
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.interval = 1.0 / fps if fps else 0.0
        self._next: float | None = None

    def keep(self, t: float) -> bool:
        if self.interval == 0.0:
            return True
        if self._next is None or t < self._next - 2 * self.interval - 1.0:
            self._next = t  # first frame, or time went backwards: start over
        if t + 1e-6 < self._next:
            return False
        # next slot on the fixed grid; if the source skipped ahead, re-anchor rather than burst
        self._next += self.interval
        if self._next <= t:
            self._next = t + self.interval
        return True


class Pacer:
    """Release frames of a file at their PTS rate against the wall clock (``realtime: true``).

    If the consumer falls behind by more than ``max_lag_s`` the schedule is re-anchored instead
    of bursting to catch up, as a live camera would.
    """

    def __init__(self, max_lag_s: float = 1.0) -> None:
        self.max_lag_s = max_lag_s
        self._anchor: tuple[float, float] | None = None  # (pts, monotonic)

    def delay(self, pts: float) -> float:
        """Seconds to wait before releasing the frame with this PTS (0 if due)."""
        now = time.monotonic()
        if self._anchor is None:
            self._anchor = (pts, now)
            return 0.0
        due = self._anchor[1] + (pts - self._anchor[0])
        wait = due - now
        if wait < -self.max_lag_s or wait > self.max_lag_s + 10.0:
            self._anchor = (pts, now)  # fell far behind, or PTS jumped: re-anchor
            return 0.0
        return max(wait, 0.0)


def truncation(container: av.container.InputContainer, stats: DecodeStats) -> str:
    """Why a file that decoded without an error still ended early, or "".

    Judged by time, not by the frame count in the header (an AVI header may count each frame
    twice: ``concourse_720p.avi`` announces 682 and holds 341, all of them): the last frame must
    reach the duration the container declares, give or take two frames or 2%.
    """
    stream = container.streams.video[0]
    declared = (float(stream.duration * stream.time_base) if stream.duration
                else float(container.duration) / 1e6 if container.duration else 0.0)
    start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
    if not declared or stats.last_time is None:
        return ""
    reached = stats.last_time - start + frame_duration_s(container)
    if reached + 2 * frame_duration_s(container) < declared * 0.98:
        return (f"truncated file: frames stop at {reached:.1f} s of the {declared:.1f} s "
                f"the file declares ({stats.frames} frames decoded)")
    return ""


def count_frames(source: str | SourceSettings) -> int:
    """Frames of a file's video stream, counted by demuxing its packets (no decoding: a
    3 MB clip takes milliseconds). Headers can be wrong; this is what ingest will deliver."""
    container = open_source(source)
    try:
        stream = container.streams.video[0]
        return sum(1 for p in container.demux(stream) if p.size)
    finally:
        container.close()


def frame_duration_s(container: av.container.InputContainer) -> float:
    """One frame's duration from the stream's average rate (1/25 s if unknown)."""
    rate = container.streams.video[0].average_rate or container.streams.video[0].guessed_rate
    return float(1 / rate) if rate else 0.04


@dataclass(frozen=True)
class VideoProbe:
    """What a file source holds before a run: frame size and, when known, its length."""

    height: int
    width: int
    frames: int | None  # video packets demuxed (``count_frames``), not the header's claim


def probe_video(source: str | SourceSettings) -> VideoProbe | None:
    """Size (and announced length) of a local video file; None for live sources and for files
    that cannot be opened here (ingest then reports the camera's error with its reason)."""
    cfg = as_source(source)
    if is_live(cfg.url) or not os.path.isfile(file_path(cfg.url)):
        return None
    try:
        container = open_source(cfg)
    except SourceError:
        return None
    try:
        s = container.streams.video[0]
        size = VideoProbe(int(s.codec_context.height), int(s.codec_context.width), None)
    finally:
        container.close()
    try:
        n = count_frames(cfg)
    except SourceError:
        n = 0
    return VideoProbe(size.height, size.width, n or None)


def read_first_frame(source: str | SourceSettings) -> np.ndarray:
    """The first decodable frame of a file or stream as BGR uint8; ``SourceError`` otherwise."""
    container = open_source(source)
    try:
        for frame in iter_video_frames(container, stall_timeout_s=None):
            return frame.to_ndarray(format="bgr24")
    finally:
        container.close()
    raise SourceError(f"no frame could be decoded from {redact_url(as_source(source).url)}",
                      retry=False)


def read_frames(source: str | SourceSettings, indices: Sequence[int] | None = None,
                fmt: str = "rgb24") -> Iterator[tuple[int, np.ndarray]]:
    """Decode a file once, yielding ``(index, image)`` for the 0-based frame indices asked for
    (every frame when ``indices`` is None), in order. The trainer reads a video data set this
    way, so it sees exactly the frames a pipeline decodes."""
    wanted = None if indices is None else sorted(set(int(i) for i in indices))
    container = open_source(source)
    try:
        k = 0
        for i, frame in enumerate(iter_video_frames(container, stall_timeout_s=None)):
            if wanted is not None:
                if k >= len(wanted):
                    return
                if i != wanted[k]:
                    continue
                k += 1
            yield i, frame.to_ndarray(format=fmt)
    finally:
        container.close()


__all__ = [
    "DecodeStats", "SourceSettings", "VideoProbe", "VideoSource", "as_source", "file_path",
    "is_live", "probe_video", "read_first_frame", "read_frames", "FpsSampler", "OpenSpec", "Pacer", "SourceError", "StreamStalled",
    "frame_duration_s", "iter_video_frames", "open_source", "open_spec",
    "source_kind",
    "count_frames", "truncation",
]
