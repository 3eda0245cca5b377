"""The run configuration: YAML in ``configs/`` loaded into typed, immutable sections.

Global defaults live under ``defaults:`` and are merged under every camera, so a camera states only
what differs (a camera may also be just its URL). ``${ENV_VAR}`` (or ``${ENV_VAR:-fallback}``) is
replaced in any string, for secrets. Relative paths, camera files included, are resolved against
the config file's folder.

The whole file is checked when it is loaded, so ``crowdstream config validate`` and ``crowdstream
run`` refuse the same configs before any process starts: every bound (``fps > 0``, slots >= 2...)
and every rule across keys (an alert's zone exists, zone polygons are simple, ``density_m2`` has a
calibration, at least one camera is enabled...). An error is one line naming the file, the key path
and the reason. The loaded config is frozen: lists are tuples, mappings ``FrozenDict``.

Example::

    cfg = load_config("configs/demo.yaml")
    for name, cam in cfg.cameras.items():
        print(name, cam.url, cam.effective_policy)
"""

from __future__ import annotations

import math
import os
from itertools import combinations
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, ValidationInfo, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from calibrate.config import CalibrationConfig, GroundPointConfig
from engines.video import file_path, is_live, source_kind
from engines.yamlconfig import (
    ConfigError,
    ConfigModel,
    Frozen,
    FrozenDict,
    Items,
    Pair,
    PathStr,
    Pattern,
    context_of,
    deep_merge,
    interpolate_env,
    json_schema,
    load_section,
    read_yaml,
    resolve_path,
    rule_error,
)

QueuePolicy = Literal["lossless", "latest"]
Port = Annotated[int, Field(ge=0, le=65535)]
Device = Annotated[str, Pattern(r"^(cpu|cuda(:[0-9]+)?)$", "cpu, cuda or cuda:N")]
EnvName = Annotated[str, Pattern(r"^[A-Za-z_][A-Za-z0-9_]*$", "an environment variable name")]
Name = Annotated[str, Pattern(r"\S", "a name that is not blank")]
Fraction = Annotated[float, Field(ge=0, le=1)]  # of the frame's width or height


class ReconnectConfig(ConfigModel):
    """How a source is reopened after it fails or stalls."""

    initial_s: float = Field(0.5, gt=0, description="First reconnect delay (seconds); doubles "
                                                    "(multiplier) after each failure up to cap_s.")
    cap_s: float = Field(30.0, gt=0, description="Longest reconnect delay (seconds), >= "
                                                 "initial_s.")
    multiplier: float = Field(2.0, ge=1, description="Backoff growth per failed attempt (>= 1).")
    stall_timeout_s: float = Field(10.0, gt=0, description="No frame for this long (seconds): "
                                                           "reconnect.")
    open_timeout_s: float = Field(10.0, gt=0, description="Give up opening the source after "
                                                          "this long (seconds).")
    max_attempts: int | None = Field(None, ge=1, description="Reconnect attempts before the "
                                     "camera goes offline; null: retry forever.")

    @model_validator(mode="after")
    def _cap_above_initial(self) -> ReconnectConfig:
        if self.cap_s < self.initial_s:
            raise rule_error(f"must be >= initial_s ({self.initial_s:g}), got {self.cap_s:g}",
                             "cap_s")
        return self


class SmoothingConfig(ConfigModel):
    """Temporal smoothing of counts (EMA, Kalman or one-euro) and of heatmaps (decaying EMA)."""

    method: Literal["none", "ema", "kalman", "one_euro"] = Field(
        "ema", description="Count filter: none, ema, kalman (random walk, time-aware) or "
                           "one_euro.")
    alpha: float = Field(0.3, gt=0, le=1, description="EMA weight of the newest count, in "
                                                      "(0, 1].")
    process_noise: float = Field(1.0, ge=0, description="Kalman: variance of the count's change "
                                                        "per second.")
    measurement_noise: float = Field(4.0, gt=0, description="Kalman: variance of one raw count.")
    min_cutoff_hz: float = Field(0.5, gt=0, description="One-euro: cutoff frequency at rest "
                                                        "(Hz).")
    beta: float = Field(0.05, ge=0, description="One-euro: how fast the cutoff rises with the "
                                                "count's speed.")
    heatmap_alpha: float = Field(0.3, gt=0, le=1, description="EMA weight of the newest density "
                                                              "map, in (0, 1].")


class ZoneConfig(ConfigModel):
    """A polygon in normalised image coordinates (0..1, x right, y down)."""

    name: Name = Field(description="Zone name, unique within its camera (used by alerts and in "
                                   "outputs).")
    polygon: Items[Pair[Fraction]] = Field(
        description="At least 3 [x, y] points in 0..1 (x right, y down), a simple polygon: "
                    "non-zero area, no crossing edges.", json_schema_extra={"minItems": 3})

    @field_validator("polygon")
    @classmethod
    def _simple_polygon(cls, polygon: tuple[tuple[float, float], ...]
                        ) -> tuple[tuple[float, float], ...]:
        if len(polygon) < 3:
            raise ValueError(f"needs at least 3 points, got {len(polygon)}")
        problem = polygon_problem(polygon)
        if problem:
            raise ValueError(problem)
        return polygon


class AlertRuleConfig(ConfigModel):
    """Raise an alert when a zone's (or the camera's) count or density stays above a threshold."""

    name: Name = Field(description="Rule name, unique within its camera (in every event).")
    threshold: float = Field(ge=0, description="The alert starts when the value reaches this.")
    zone: str | None = Field(None, description="A zone of this camera; null: the whole camera.")
    metric: Literal["count", "density", "density_m2"] = Field(
        "count", description="count (people), density (people per map cell) or density_m2 "
                             "(people per m^2; needs a calibration).")
    clear: float | None = Field(
        None, ge=0, description="Hysteresis: the alert ends below this (<= threshold; default: "
                                "threshold).")
    min_duration_s: float = Field(0.0, ge=0, description="The value must stay at or above clear "
                                                         "this long before the alert starts.")
    cooldown_s: float = Field(30.0, ge=0, description="Quiet time after an alert ends before the "
                                                      "next may start (seconds).")
    severity: Literal["info", "warning", "critical"] = Field(
        "warning", description="Carried in every event of the rule.")
    update_every_s: float = Field(10.0, ge=0, description="While active, an 'update' event at "
                                                          "most this often (0: never).")

    @model_validator(mode="after")
    def _clear_below_threshold(self) -> AlertRuleConfig:
        if self.clear is not None and self.clear > self.threshold:
            raise rule_error(f"must be <= threshold ({self.threshold:g}), got {self.clear:g}: it "
                             f"is the level the alert ends below", "clear")
        return self

    @property
    def clear_level(self) -> float:
        return self.threshold if self.clear is None else self.clear


X264Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                     "slower", "veryslow", "placebo"]


class RecordingConfig(ConfigModel):
    """Recording: H.264 MP4 segments of the camera, with the overlay (``pipeline.overlay``: a
    header strip above the scene, the heatmap on a fixed colour scale with its legend, zones,
    and a strip below it per alert rule) or clean (``overlay: false``)."""

    enabled: bool = Field(False, description="Record this camera's overlay video.")
    dir: PathStr | None = Field(None, description="Where segments go (default: "
                                                  "<run_dir>/recordings).")
    segment_s: float = Field(10.0, gt=0, description="Length of one MP4 segment (seconds).")
    retain_hours: float = Field(24.0, gt=0, description="Delete segments older than this.")
    retain_gb: float = Field(10.0, gt=0, description="Delete the oldest segments beyond this "
                                                     "total size (GB).")
    fps: float | None = Field(None, gt=0, description="At most this many recorded frames/s "
                                                      "(default: every counted frame).")
    overlay: bool = Field(True, description="Draw the overlay (header and alert strips, "
                                            "heatmap, zones); false: record the frames as they "
                                            "are (clean).")
    heatmap_opacity: float = Field(0.45, ge=0, le=1, description="Heatmap opacity over the "
                                                                 "video, in [0, 1].")
    heatmap_max_per_cell: float | None = Field(
        None, gt=0, le=1000, description="Heatmap colour scale of an uncalibrated camera: people "
                                         "per map cell drawn red (default: 0.25 per 8x8 frame "
                                         "pixels, one person per 16x16).")
    heatmap_max_m2: float = Field(4.0, gt=0, le=20, description="Heatmap colour scale of a "
                                  "calibrated camera: people per m^2 drawn red (4: congested; 2 "
                                  "busy, 5+ dangerous).")
    draw_density_m2: bool = Field(False, description="Label zones with people/m^2 (needs a "
                                                     "calibration).")
    max_width: int = Field(1280, ge=16, description="Frames wider than this are downscaled "
                                                    "before encoding (pixels).")
    crf: int = Field(23, ge=0, le=51, description="libx264 quality, 0..51 (lower: better, "
                                                  "bigger).")
    preset: X264Preset = Field("veryfast", description="libx264 speed preset.")
    queue_slots: int = Field(4, ge=1, description="Shared-memory frame slots; a frame is skipped "
                                                  "when all are busy.")


class MotionGateConfig(ConfigModel):
    """Motion-gated tiles: a tile whose picture did not change since it was last counted keeps
    its last density instead of going through the model (``pipeline.motion``)."""

    enabled: bool | None = Field(None, description="Reuse the density of tiles that did not "
                                 "change. null (default): on for live sources (cameras, "
                                 "streams), off for files, as measured in the README's motion "
                                 "gating section.")
    threshold: float = Field(6.0, gt=0, le=255, description="A tile is recounted when some "
                             "64x64-pixel patch of it (as counted) changed by more than this "
                             "mean absolute grey level (0..255) since it was last counted.")
    max_age_s: float = Field(5.0, gt=0, description="Recount every tile at least this often "
                             "(seconds of the source's time), changed or not.")


class CameraModelConfig(ConfigModel):
    """This camera's own model, e.g. written by ``crowdstream adapt``: which file (or released
    name) counts its frames. Everything else (backend, precision, device, batch, window,
    overlap) comes from the global ``model:`` section."""

    checkpoint: PathStr | None = Field(None, description="Our checkpoint (.pt) for this camera "
                                                         "(e.g. written by 'crowdstream adapt').")
    engine: PathStr | None = Field(None, description="A prebuilt engine file (.onnx / .plan) "
                                                     "for this camera.")
    name: str | None = Field(None, description="A released model by registry name, for this "
                                               "camera.")

    @model_validator(mode="after")
    def _exactly_one(self) -> CameraModelConfig:
        given = [k for k in ("checkpoint", "engine", "name") if getattr(self, k) is not None]
        if len(given) != 1:
            raise rule_error("set exactly one of checkpoint, engine and name (the rest of the "
                             f"model comes from the global model: section), got "
                             f"{', '.join(given) or 'none'}")
        return self

    @property
    def source(self) -> str:
        """The file or registry name this camera's model comes from."""
        return str(self.checkpoint or self.engine or self.name)


class CameraConfig(ConfigModel):
    """One source: RTSP/RTMP/HLS URL, local file or V4L2 device, plus per-camera settings.

    A camera's rules across keys (zone names unique, alerts name existing zones, m^2 only with a
    usable calibration) are checked here, so a camera built in code is checked like a loaded one.
    """

    url: Annotated[str, Field(min_length=1)] = Field(
        description="rtsp://, rtmp://, http(s):// (HLS), udp/srt/tcp://, a file (relative to the "
                    "config's folder, or file://) or /dev/videoN.")
    enabled: bool = Field(True, description="false: the camera is not opened (shown offline).")
    fps: float | None = Field(None, gt=0, description="Count at most this many frames per "
                                                      "second (default: every frame).")
    queue_policy: Literal["auto", "lossless", "latest"] = Field(
        "auto", description="lossless (every frame, in order), latest (drop the oldest, live) or "
                            "auto (latest for live sources and realtime files).")
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    loop: bool = Field(False, description="Replay a file forever (demos, soak tests).")
    realtime: bool = Field(False, description="Pace a file at its native rate, like a live "
                                              "camera.")
    decode_threads: int = Field(0, ge=0, description="Decoder threads; 0: let FFmpeg choose.")
    options: Frozen[str, str] = Field(default_factory=FrozenDict,
                                      description="Extra FFmpeg input options (strings).")
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig,
                                       description="How the source is reopened after a failure.")
    text_prompt: str | None = Field(None, description="CLIP-Count: what to count (\"people\", "
                                                      "\"cars\").")
    smoothing: SmoothingConfig = Field(default_factory=SmoothingConfig,
                                       description="Temporal smoothing of counts and heatmaps.")
    zones: Items[ZoneConfig] = Field((), description="Polygons counted separately (names "
                                                     "unique).")
    alerts: Items[AlertRuleConfig] = Field((), description="Alert rules on the camera's or a "
                                                           "zone's value (names unique).")
    recording: RecordingConfig = Field(default_factory=RecordingConfig,
                                       description="Overlay recording.")
    calibration: CalibrationConfig | None = Field(
        None, description="Ground calibration (people per m^2); see 'crowdstream calibrate "
                          "ground'.")
    roi_mask: PathStr | None = Field(None, description="PNG, 255 inside: density outside is "
                                                       "zeroed.")
    input_scale: float | None = Field(
        None, gt=0, le=8, description="Scale this camera's frames by this before counting, "
        "instead of the model's own resize rule: below 1 when people look much bigger than the "
        "model was trained on (a person near the camera), above 1 when they look much smaller.")
    model: CameraModelConfig | None = Field(
        None, description="This camera's own model (checkpoint, engine or name; e.g. written by "
                          "'crowdstream adapt'); null: the global model: section.")
    motion_gate: MotionGateConfig = Field(default_factory=MotionGateConfig,
                                          description="Count only the tiles that changed.")

    @field_validator("url")
    @classmethod
    def _local_file_beside_the_config(cls, url: str, info: ValidationInfo) -> str:
        return resolve_local_url(url, context_of(info).get("base_dir"))

    @model_validator(mode="after")
    def _camera_rules(self, info: ValidationInfo) -> CameraConfig:
        if context_of(info).get("defaults"):  # defaults are checked once merged into a camera
            if self.model is not None:
                raise rule_error("a model for every camera is the top-level model: section, not "
                                 "defaults", "model")
            return self
        _unique_names("zones", [z.name for z in self.zones])
        _unique_names("alerts", [a.name for a in self.alerts])
        zones = [z.name for z in self.zones]
        for i, rule in enumerate(self.alerts):
            if rule.zone is not None and rule.zone not in zones:
                have = (f"this camera's zones: {', '.join(zones)}" if zones
                        else "this camera has no zones")
                raise rule_error(f"unknown zone {rule.zone!r} ({have})", "alerts", i, "zone")
            if rule.metric == "density_m2" and self.calibration is None:
                raise rule_error(f"density_m2 needs a ground calibration ({_NEEDS_CAL})",
                                 "alerts", i, "metric")
        if self.recording.draw_density_m2 and self.calibration is None:
            raise rule_error(f"people/m^2 labels need a ground calibration ({_NEEDS_CAL})",
                             "recording", "draw_density_m2")
        problem = self.calibration.problem() if self.calibration is not None else None
        if problem is not None:
            raise rule_error(problem[1], "calibration", problem[0])
        return self

    @property
    def is_live(self) -> bool:
        """Not a file (camera, stream, capture device): ``engines.video.source_kind`` decides."""
        return is_live(self.url)

    @property
    def motion_gated(self) -> bool:
        """Whether the motion gate runs: ``motion_gate.enabled``, else on for live sources."""
        on = self.motion_gate.enabled
        return self.is_live if on is None else on

    @property
    def effective_policy(self) -> QueuePolicy:
        """``latest`` for live sources (latency never builds up), ``lossless`` for files."""
        if self.queue_policy != "auto":
            return self.queue_policy
        return "latest" if (self.is_live or self.realtime) else "lossless"


_NEEDS_CAL = "add a calibration: section to this camera; see 'crowdstream calibrate ground'"


def _unique_names(key: str, names: list[str]) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise rule_error(f"duplicate name {name!r} ({key}[{seen[name]}] has it too)",
                             key, i, "name")
        seen[name] = i


def resolve_local_url(url: str, base_dir: Path | str | None) -> str:
    """A relative file URL (or ``file://`` path) is relative to the config's folder, like every
    other path in it, so ``crowdstream run configs/demo.yaml`` works from any directory."""
    if base_dir is None or source_kind(url) != "file":
        return url
    path = file_path(url)
    return url if os.path.isabs(path) else resolve_path(path, base_dir)


def polygon_problem(points: tuple[tuple[float, float], ...]) -> str | None:
    """Why ``points`` is not a simple polygon (repeated point, no area, crossing edges), or None."""
    n = len(points)
    for i in range(n):
        if points[i] == points[(i + 1) % n]:
            return f"points {i} and {(i + 1) % n} are the same"
    edges = [(points[i], points[(i + 1) % n]) for i in range(n)]
    for i, j in combinations(range(n), 2):
        if j == i + 1 or (i == 0 and j == n - 1):
            continue  # neighbours share a corner
        if _segments_touch(*edges[i], *edges[j]):
            return (f"edges {i}-{(i + 1) % n} and {j}-{(j + 1) % n} cross (the polygon intersects "
                    f"itself; list its points in order around the zone)")
    area2 = sum(points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1]
                for i in range(n))
    if abs(area2) <= 1e-12:
        return "the polygon has no area (all its points lie on one line)"
    return None


def _segments_touch(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float],
                    d: tuple[float, float]) -> bool:
    def orient(p: tuple[float, float], q: tuple[float, float], r: tuple[float, float]) -> float:
        v = (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
        return 0.0 if math.isclose(v, 0.0, abs_tol=1e-12) else v

    def on(p: tuple[float, float], q: tuple[float, float], r: tuple[float, float]) -> bool:
        return (min(p[0], q[0]) <= r[0] <= max(p[0], q[0])
                and min(p[1], q[1]) <= r[1] <= max(p[1], q[1]))

    o1, o2, o3, o4 = orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b)
    if o1 * o2 < 0 and o3 * o4 < 0:
        return True
    return ((o1 == 0 and on(a, b, c)) or (o2 == 0 and on(a, b, d))
            or (o3 == 0 and on(c, d, a)) or (o4 == 0 and on(c, d, b)))


class ModelConfig(ConfigModel):
    """Which model or engine counts, and how frames are tiled for it."""

    checkpoint: PathStr | None = Field(None, description="Our checkpoint (.pt), exported once "
                                                         "and cached by hash.")
    engine: PathStr | None = Field(None, description="A prebuilt engine file (.onnx / .plan); "
                                                     "wins over checkpoint.")
    name: str | None = Field(None, description="A released model by registry name ('crowdstream "
                             "models list'), pulled and converted on first use.")
    backend: Literal["auto", "torch", "onnx", "tensorrt"] = Field(
        "auto", description="auto: TensorRT on CUDA when available, else ONNX Runtime, else "
                            "torch.")
    precision: Literal["fp32", "fp16", "int8"] = Field("fp32", description="Engine precision "
                                                       "(int8: see 'crowdstream calibrate int8').")
    device: Device = Field("cpu", description="cpu, cuda or cuda:N.")
    batch: int = Field(8, ge=1, description="Tiles per inference batch (across cameras).")
    window: Pair[PositiveInt] | None = Field(
        None, description="Tile [height, width] (default: the model's own window).")
    overlap: float = Field(0.0, ge=0, lt=1, description="Tile overlap share, in [0, 1).")
    batch_timeout_ms: float = Field(20.0, ge=0, description="Wait this long to fill a batch "
                                    "before running a partial one.")
    cache_dir: PathStr | None = Field(None, description="Exported engines (default: the user's "
                                                        "shared engine cache).")
    random_init: str | None = Field(None, description="A small built-in model name "
                                    "(ebc-tiny-rn...), randomly initialised: for tests, counts "
                                    "are not meaningful.")

    @model_validator(mode="after")
    def _tensorrt_on_cuda(self) -> ModelConfig:
        if self.backend == "tensorrt" and not self.device.startswith("cuda"):
            raise rule_error(f"backend tensorrt needs a CUDA device (cuda or cuda:N), got "
                             f"{self.device!r}", "device")
        return self

    @property
    def engine_cache_dir(self) -> Path:
        """Where exported engines are kept: ``cache_dir``, else the user's shared cache."""
        from engines.paths import engine_cache_dir

        return Path(self.cache_dir) if self.cache_dir else engine_cache_dir()


class RedisConfig(ConfigModel):
    """Redis / Valkey publishing. No ``url``: an embedded server is started under the run dir."""

    enabled: bool = Field(True, description="Publish counts, heatmaps, status and alerts.")
    url: Annotated[str, Pattern(r"^(redis|rediss|unix)://", "a URL starting with redis://, "
                                "rediss:// or unix://")] | None = Field(
        None, description="redis://, rediss:// (TLS) or unix://; null: an embedded server under "
                          "the run dir.")
    username_env: EnvName | None = Field(None, description="Environment variable holding the "
                                                           "username.")
    password_env: EnvName | None = Field(None, description="Environment variable holding the "
                                                           "password.")
    namespace: Annotated[str, Field(min_length=1), Pattern(r"^[^{} ]+$", "a namespace without "
                                                           "braces or spaces")] = Field(
        "crowdstream", description="Key prefix (no braces or spaces).")
    stream_maxlen: int = Field(10000, ge=1, description="Approximate length kept per stream.")
    heatmap_every_s: float = Field(1.0, ge=0, description="Publish a heatmap at most this often "
                                                          "(0: every frame).")
    heatmap_ttl_s: int = Field(300, ge=1, description="Heatmap keys expire after this (seconds).")
    heatmap_format: Literal["png", "float16"] = Field("png", description="Heatmap encoding.")
    heatmap_max_side: int = Field(160, ge=2, description="Heatmaps are downscaled to this longest "
                                                         "side (cells).")
    buffer_max_messages: int = Field(20000, ge=1, description="Outage buffer; beyond it the "
                                                              "oldest are dropped (counted).")
    buffer_max_mb: float = Field(64.0, gt=0, description="The outage buffer's memory bound (MB).")
    batch_max: int = Field(256, ge=1, description="Messages per pipelined round trip.")
    pubsub: bool = Field(True, description="Also PUBLISH each count message.")
    ssl_ca_certs: PathStr | None = Field(None, description="rediss://: CA bundle (default: the "
                                                           "system store).")
    ssl_certfile: PathStr | None = Field(None, description="rediss://: client certificate "
                                                           "(mutual TLS).")
    ssl_keyfile: PathStr | None = Field(None, description="rediss://: the client certificate's "
                                                          "key.")
    connect_timeout_s: float = Field(2.0, gt=0, description="Connect / socket timeout (seconds).")
    embedded_port: Port | None = Field(None, description="Embedded server: fixed port (default: "
                                                         "the first free >= 16379).")
    cluster: bool = Field(False, description="url is a Redis Cluster node: use the cluster "
                                             "client.")
    # what the operator console (crowdstream serve) shows: it never reads video, only these
    snapshot_every_s: float = Field(1.0, ge=0, description="Publish a JPEG of the latest counted "
                                    "frame at most this often per camera (0: never; the console "
                                    "then shows heatmaps without the picture).")
    snapshot_max_width: int = Field(640, ge=16, le=7680, description="Snapshots wider than this "
                                    "are downscaled (pixels); caps their size in Redis.")
    snapshot_quality: int = Field(75, ge=10, le=100, description="JPEG quality of snapshots "
                                  "(10..100).")
    snapshot_ttl_s: int = Field(60, ge=1, description="Snapshot keys expire after this "
                                                      "(seconds).")
    rollup_every_s: float = Field(10.0, ge=0, description="Also publish each camera's count "
                                  "averaged over windows of this many seconds, for charts over "
                                  "hours (0: never).")
    rollup_maxlen: int = Field(8640, ge=1, description="Windows kept in the rollup stream (8640 "
                                                       "x 10 s: a day).")
    wait_replicas: int = Field(0, ge=0, description="A message counts as published only once "
                                                    "this many replicas of its primary have it "
                                                    "(WAIT): it survives a failover. 0: the "
                                                    "primary's reply is enough.")
    wait_timeout_s: float = Field(1.0, gt=0, description="How long one WAIT for replicas may "
                                                         "take (seconds); fewer replicas in "
                                                         "time: the batch is sent again.")

    @model_validator(mode="after")
    def _cluster_needs_url(self) -> RedisConfig:
        if self.cluster and self.url is None:
            raise rule_error("cluster needs a url (a node of the cluster); the embedded server is "
                             "not a cluster", "cluster")
        return self


class WebhookConfig(ConfigModel):
    """Alert events POSTed as JSON."""

    url: Annotated[str, Pattern(r"^https?://", "a URL starting with http:// or https://")] = \
        Field(description="Where alert events are POSTed (http:// or https://).")
    timeout_s: float = Field(5.0, gt=0, description="Per-request timeout (seconds).")
    retries: int = Field(3, ge=0, description="Retries after a failed POST.")
    backoff_s: float = Field(1.0, ge=0, description="First retry delay; doubles after each "
                                                    "failed attempt.")
    headers: Frozen[str, str] = Field(default_factory=FrozenDict, description="Extra headers, "
                                      "e.g. Authorization: ${HOOK_TOKEN}.")
    queue_max: int = Field(1000, ge=1, description="Events waiting to be sent; beyond it new "
                                                   "events are dropped (counted).")


class MetricsConfig(ConfigModel):
    """Prometheus exposition (with the /healthz and /readyz endpoints) and the console status
    line."""

    port: Port | None = Field(9108, description="HTTP port of /metrics, /healthz and /readyz; "
                                                "0: any free port (printed at start); null: no "
                                                "endpoint. A taken port is an error at start.")
    host: Annotated[str, Field(min_length=1)] = Field("127.0.0.1", description="Address the "
                                                      "endpoint listens on (0.0.0.0: every "
                                                      "interface, e.g. in a container).")
    status_every_s: float = Field(5.0, gt=0, description="Console status line period (seconds).")


class ServeConfig(ConfigModel):
    """The operator console and HTTP API (``crowdstream serve``); the pipeline ignores it."""

    host: Annotated[str, Field(min_length=1)] = Field(
        "127.0.0.1", description="Address to listen on; anything but loopback needs token_env.")
    port: Port = Field(8765, description="HTTP port (0: a free port, printed at start).")
    token_env: EnvName | None = Field(
        None, description="Environment variable holding the API token: every write then needs "
                          "'Authorization: Bearer <token>'; required off loopback.")
    max_body_kb: int = Field(256, ge=1, le=65536, description="Largest request body accepted "
                                                              "(KiB).")
    requests_per_s: float = Field(100.0, gt=0, description="Requests per second per client "
                                                          "(bursts of 4x allowed), beyond: 429.")
    max_event_clients: int = Field(32, ge=1, description="Live (server-sent events) connections "
                                                         "at once.")


class RuntimeConfig(ConfigModel):
    """Process-level knobs: shared-memory sizes, restarts, shutdown."""

    frame_slots: int = Field(8, ge=2, description="Frame slots per camera ring (>= 2: one being "
                                                  "written while one is read).")
    batch_slots: int = Field(4, ge=2, description="Batch slots shared by the tile, inference and "
                                                  "post stages (>= 2).")
    max_frame_width: int = Field(3840, gt=0, description="Ring frame width for live sources "
                                                         "(pixels; files use their own).")
    max_frame_height: int = Field(2160, gt=0, description="Ring frame height for live sources "
                                                          "(pixels).")
    restart_backoff_s: float = Field(1.0, gt=0, description="First delay before restarting a "
                                                            "crashed stage (seconds).")
    restart_backoff_cap_s: float = Field(30.0, gt=0, description="Longest restart delay "
                                                                 "(seconds), >= "
                                                                 "restart_backoff_s.")
    drain_timeout_s: float = Field(10.0, ge=0, description="On stop, wait this long for queued "
                                                           "frames to be counted.")
    torch_threads: int | None = Field(None, ge=1, description="torch.set_num_threads for "
                                                              "inference; null: torch's default.")
    resume: bool = Field(False, description="Continue each camera after the last frame index "
                                            "already published to Redis (a restarted or "
                                            "re-sharded worker): live and looping sources "
                                            "continue the numbering, files skip the frames "
                                            "already counted. 'crowdstream run --shard' and "
                                            "'--resume' turn it on.")

    @model_validator(mode="after")
    def _cap_above_first(self) -> RuntimeConfig:
        if self.restart_backoff_cap_s < self.restart_backoff_s:
            raise rule_error(f"must be >= restart_backoff_s ({self.restart_backoff_s:g}), got "
                             f"{self.restart_backoff_cap_s:g}", "restart_backoff_cap_s")
        return self


class AppConfig(ConfigModel):
    """A whole ``crowdstream run`` configuration."""

    cameras: Frozen[str, CameraConfig] = Field(
        description="Camera name -> URL, or settings merged over defaults (at least one "
                    "enabled).", json_schema_extra={"minProperties": 1})
    model: ModelConfig = Field(default_factory=ModelConfig, description="The counting model.")
    redis: RedisConfig = Field(default_factory=RedisConfig, description="Redis / Valkey "
                                                                        "publishing.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus and "
                                                                              "the console line.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Process-level "
                                                                              "knobs.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="The operator console "
                               "and HTTP API (crowdstream serve).")
    webhook: WebhookConfig | None = Field(None, description="POST alert events here.")
    jsonl: str | None = Field(None, description="One JSON line per counted frame: '-' for "
                                                "stdout, or a file (relative to run_dir).")
    run_dir: PathStr = Field("runs/default", description="Recordings, the embedded Redis and "
                                                         "relative jsonl files go here.")
    defaults: Frozen[str, Any] = Field(default_factory=FrozenDict,
                                       description="Camera settings merged under every camera.")
    source_file: SkipJsonSchema[str | None] = Field(
        None, description="The file this config was loaded from (set by the loader).")

    @model_validator(mode="before")
    @classmethod
    def _from_file(cls, data: Any, info: ValidationInfo) -> Any:
        file = context_of(info).get("file")
        if file is not None and isinstance(data, dict):
            data = {**data, "source_file": file}
        return data

    @model_validator(mode="after")
    def _run_rules(self) -> AppConfig:
        if not self.cameras:
            raise rule_error("needs at least one camera (name -> URL or settings)", "cameras")
        if not any(c.enabled for c in self.cameras.values()):
            raise rule_error("every camera is disabled (enabled: false); enable at least one",
                             "cameras")
        if self.jsonl is not None and self.jsonl != "-":
            target = Path(self.run_dir) / self.jsonl
            if not self.jsonl.strip() or self.jsonl.endswith(("/", "\\")) or target.is_dir():
                raise rule_error(f"expected '-' (stdout) or a file path, got {self.jsonl!r}"
                                 + (f" ({target} is a folder)" if target.is_dir() else ""),
                                 "jsonl")
        return self


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> AppConfig:
    """Read, interpolate, merge defaults and validate a YAML config file; ``ConfigError`` else."""
    path = Path(path)
    raw = read_yaml(path, overrides)
    return config_from_dict(raw, file=str(path), base_dir=path.resolve().parent)


def config_from_dict(raw: dict[str, Any], file: str | None = None,
                     base_dir: Path | None = None) -> AppConfig:
    """Validate an already-parsed config mapping (tests, programmatic use)."""
    if not isinstance(raw, dict):
        raise ConfigError(file, "", "expected a mapping at the top level")
    raw = interpolate_env(raw, file)
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(file, "defaults", f"expected a mapping of camera settings, got "
                                            f"{defaults!r}")
    # defaults on their own first, so an error there is reported under 'defaults'
    load_section(CameraConfig, {"url": "<defaults>", **defaults}, file=file, key="defaults",
                 base_dir=base_dir, context={"defaults": True})
    cams = raw.get("cameras")
    if not isinstance(cams, dict) or not cams:
        raise ConfigError(file, "cameras", "expected a mapping of camera name -> settings (at "
                                           "least one)")
    merged = {**raw, "cameras": {}}
    for name, cam in cams.items():
        if isinstance(cam, str):
            cam = {"url": cam}
        if not isinstance(cam, dict):
            raise ConfigError(file, f"cameras.{name}", f"expected a mapping or a URL, got {cam!r}")
        merged["cameras"][str(name)] = deep_merge(defaults, cam)
    return load_section(AppConfig, merged, file=file, base_dir=base_dir)


def write_camera_updates(config: str | Path, camera: str, updates: dict[str, Any],
                         comments: dict[str, str] | None = None, *, section: str | None = None,
                         output: str | Path | None = None,
                         copy_suffix: str = ".updated") -> tuple[Path, bool]:
    """Set ``cameras.<camera>[.<section>].<key>`` for each update in a config file; returns
    (the file written, whether comments and layout were kept).

    The edit is ``engines.yamledit.update_camera_text`` (comments, order and other cameras stay
    byte for byte), written to ``output`` or in place. A layout that editor cannot change safely
    gets a plain dump instead (comments lost), written to ``output`` or beside the config as
    ``<name><copy_suffix>.yaml``, never over the user's file. The result must load as a valid
    config (checked before it replaces anything), else ``ConfigError``.
    """
    from engines.yamledit import dump_with_updates, update_camera_text

    config = Path(config)
    text = config.read_text()
    new = update_camera_text(text, camera, updates, comments, section=section)
    kept = new is not None
    target = Path(output) if output else config
    if new is None:
        if not output:
            target = config.with_name(config.name.removesuffix(".yaml").removesuffix(".yml")
                                      + f"{copy_suffix}.yaml")
        new = dump_with_updates(text, camera, updates, section=section)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    tmp.write_text(new)
    try:
        if target.parent.resolve() == config.parent.resolve():
            try:  # still valid (relative paths resolve the same from there)
                load_config(tmp)
            except ConfigError as e:  # named after the user's file, not the temporary one
                raise ConfigError(str(config), e.key, e.detail) from None
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target, kept


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, for editors (``crowdstream config schema``)."""
    schema = json_schema(AppConfig)
    defs = schema["$defs"]
    camera_defaults = {**defs["CameraConfig"], "title": "CameraDefaults",
                       "description": "Camera settings merged under every camera (any camera "
                                      "key; url is not needed here)."}
    camera_defaults.pop("required", None)
    defs["CameraDefaults"] = camera_defaults
    schema["properties"]["cameras"]["additionalProperties"] = {"anyOf": [
        {"$ref": "#/$defs/CameraConfig"},
        {"type": "string", "minLength": 1, "description": "The camera's URL alone (every other "
                                                          "setting from defaults)."}]}
    schema["properties"]["defaults"] = {"$ref": "#/$defs/CameraDefaults",
                                        "description": AppConfig.model_fields["defaults"]
                                        .description}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "crowdstream run configuration"
    return schema


__all__ = [
    "AlertRuleConfig", "AppConfig", "CalibrationConfig", "CameraConfig", "CameraModelConfig",
    "ConfigError",
    "GroundPointConfig", "MetricsConfig", "ModelConfig", "MotionGateConfig", "RecordingConfig",
    "ReconnectConfig",
    "RedisConfig", "RuntimeConfig", "ServeConfig", "SmoothingConfig", "WebhookConfig",
    "ZoneConfig", "config_from_dict", "config_schema", "load_config", "write_camera_updates",
]
