"""The run configuration: YAML in ``configs/`` loaded into typed sections.

Global defaults live under ``defaults:`` and are merged under every camera, so a camera states only
what differs. ``${ENV_VAR}`` (or ``${ENV_VAR:-fallback}``) is replaced in any string, for secrets.
Relative paths are resolved against the config file's folder.

Example::

    cfg = load_config("configs/demo.yaml")
    for name, cam in cfg.cameras.items():
        print(name, cam.url, cam.effective_policy)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from calibrate.config import CalibrationConfig, GroundPointConfig
from engines.video import is_live
from engines.yamlconfig import (
    ConfigError,
    build,
    deep_merge,
    interpolate_env,
    json_schema,
    path_field,
    read_yaml,
)

QueuePolicy = Literal["lossless", "latest"]


@dataclass
class ReconnectConfig:
    """How a source is reopened after it fails or stalls."""

    initial_s: float = 0.5
    cap_s: float = 30.0
    multiplier: float = 2.0
    stall_timeout_s: float = 10.0  # no frame for this long -> reconnect
    open_timeout_s: float = 10.0
    max_attempts: int | None = None  # None: retry forever; the camera goes offline after this

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.cap_s < self.initial_s:
            raise ValueError("need 0 < initial_s <= cap_s")
        if self.multiplier < 1.0:
            raise ValueError("multiplier must be >= 1")


@dataclass
class SmoothingConfig:
    """Temporal smoothing of counts (EMA, Kalman or one-euro) and of heatmaps (decaying EMA)."""

    method: Literal["none", "ema", "kalman", "one_euro"] = "ema"
    alpha: float = 0.3  # EMA weight of the newest count
    process_noise: float = 1.0  # Kalman: variance of the count's change per second
    measurement_noise: float = 4.0  # Kalman: variance of one raw count
    min_cutoff_hz: float = 0.5  # one-euro
    beta: float = 0.05  # one-euro
    heatmap_alpha: float = 0.3  # EMA weight of the newest density map

    def __post_init__(self) -> None:
        for name in ("alpha", "heatmap_alpha"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {v}")


@dataclass
class ZoneConfig:
    """A polygon in normalised image coordinates (0..1, x right, y down)."""

    name: str
    polygon: list[tuple[float, float]]

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("zone name must not be empty")
        if len(self.polygon) < 3:
            raise ValueError(f"zone {self.name!r} needs at least 3 points")
        for x, y in self.polygon:
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise ValueError(f"zone {self.name!r}: point {(x, y)} is outside 0..1")


@dataclass
class AlertRuleConfig:
    """Raise an alert when a zone's (or the camera's) count or density stays above a threshold."""

    name: str
    threshold: float
    zone: str | None = None  # None: the whole camera
    metric: Literal["count", "density", "density_m2"] = "count"
    clear: float | None = None  # hysteresis: the alert ends below this (default: threshold)
    min_duration_s: float = 0.0
    cooldown_s: float = 30.0
    severity: Literal["info", "warning", "critical"] = "warning"
    update_every_s: float = 10.0  # while active, an 'update' event at most this often (0: never)

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("alert rule name must not be empty")
        if self.clear is not None and self.clear > self.threshold:
            raise ValueError(f"alert {self.name!r}: clear ({self.clear}) must be <= threshold "
                             f"({self.threshold}); it is the level the alert ends below")
        for k in ("min_duration_s", "cooldown_s", "update_every_s"):
            if getattr(self, k) < 0:
                raise ValueError(f"alert {self.name!r}: {k} must be >= 0")

    @property
    def clear_level(self) -> float:
        return self.threshold if self.clear is None else self.clear


@dataclass
class RecordingConfig:
    """Overlay recording: H.264 MP4 segments with the heatmap drawn over the video."""

    enabled: bool = False
    dir: str = path_field(None)  # default: <run_dir>/recordings
    segment_s: float = 10.0
    retain_hours: float = 24.0
    retain_gb: float = 10.0
    fps: float | None = None  # at most this many recorded frames/s (default: every counted frame)
    heatmap_opacity: float = 0.45
    draw_density_m2: bool = False
    max_width: int = 1280  # frames wider than this are downscaled before encoding
    crf: int = 23  # libx264 quality (lower: better, bigger)
    preset: str = "veryfast"  # libx264 speed preset
    queue_slots: int = 4  # shared-memory frame slots; a frame is skipped when all are busy

    def __post_init__(self) -> None:
        if self.segment_s <= 0:
            raise ValueError("segment_s must be > 0")
        if self.retain_hours <= 0 or self.retain_gb <= 0:
            raise ValueError("retain_hours and retain_gb must be > 0")
        if not 0.0 <= self.heatmap_opacity <= 1.0:
            raise ValueError("heatmap_opacity must be in [0, 1]")
        if self.max_width < 16 or self.queue_slots < 1:
            raise ValueError("max_width must be >= 16 and queue_slots >= 1")
        if not 0 <= self.crf <= 51:
            raise ValueError("crf must be in 0..51")


@dataclass
class CameraConfig:
    """One source: RTSP/RTMP/HLS URL, local file or V4L2 device, plus per-camera settings."""

    url: str
    enabled: bool = True
    fps: float | None = None  # sample to at most this many counted frames per second
    queue_policy: Literal["auto", "lossless", "latest"] = "auto"
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    loop: bool = False  # replay a file forever (demos, soak tests)
    realtime: bool = False  # pace a file at its native rate, like a live camera
    decode_threads: int = 0  # 0: let PyAV/FFmpeg choose (thread_type AUTO)
    options: dict[str, str] = field(default_factory=dict)  # extra FFmpeg input options
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    text_prompt: str | None = None  # CLIP-Count: what to count ("people", "cars")
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    zones: list[ZoneConfig] = field(default_factory=list)
    alerts: list[AlertRuleConfig] = field(default_factory=list)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    calibration: CalibrationConfig | None = None
    roi_mask: str | None = path_field(None)  # PNG, 255 inside: density outside is zeroed

    @property
    def is_live(self) -> bool:
        """Not a file (camera, stream, capture device): ``engines.video.source_kind`` decides."""
        return is_live(self.url)

    @property
    def effective_policy(self) -> QueuePolicy:
        """``latest`` for live sources (latency never builds up), ``lossless`` for files."""
        if self.queue_policy != "auto":
            return self.queue_policy
        return "latest" if (self.is_live or self.realtime) else "lossless"


@dataclass
class ModelConfig:
    """Which model or engine counts, and how frames are tiled for it."""

    checkpoint: str | None = path_field(None)  # our checkpoint (exported once, cached by hash)
    engine: str | None = path_field(None)  # a prebuilt engine file (.onnx / .plan)
    name: str | None = None  # a released model by registry name (`crowdstream models list`): pulled and converted on first use
    backend: Literal["auto", "torch", "onnx", "tensorrt"] = "auto"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    device: str = "cpu"  # "cpu", "cuda", "cuda:1"
    batch: int = 8  # tiles per inference batch (across cameras)
    window: tuple[int, int] | None = None  # default: the model's own window
    overlap: float = 0.0
    batch_timeout_ms: float = 20.0  # wait this long to fill a batch before running a partial one
    cache_dir: str | None = path_field(None)  # default: the user's engine cache (shared)
    random_init: str | None = None  # a small built-in config name, for tests without weights

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError("batch must be >= 1")

    @property
    def engine_cache_dir(self) -> Path:
        """Where exported engines are kept: ``cache_dir``, else the user's shared cache."""
        from engines.paths import engine_cache_dir

        return Path(self.cache_dir) if self.cache_dir else engine_cache_dir()


@dataclass
class RedisConfig:
    """Redis / Valkey publishing. No ``url``: an embedded server is started under the run dir."""

    enabled: bool = True
    url: str | None = None
    username_env: str | None = None
    password_env: str | None = None
    namespace: str = "crowdstream"
    stream_maxlen: int = 10000
    heatmap_every_s: float = 1.0
    heatmap_ttl_s: int = 300
    heatmap_format: Literal["png", "float16"] = "png"
    heatmap_max_side: int = 160
    buffer_max_messages: int = 20000  # outage buffer; beyond it the oldest are dropped (counted)
    buffer_max_mb: float = 64.0  # the same buffer's memory bound
    batch_max: int = 256  # messages per pipelined round trip
    pubsub: bool = True
    ssl_ca_certs: str | None = path_field(None)  # rediss://: CA bundle (default: system store)
    ssl_certfile: str | None = path_field(None)  # rediss://: client certificate (mutual TLS)
    ssl_keyfile: str | None = path_field(None)
    connect_timeout_s: float = 2.0
    embedded_port: int | None = None  # embedded server: fixed port (default: first free >= 16379)
    cluster: bool = False  # url is a Redis Cluster node: use the cluster client

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"url must start with redis://, rediss:// or unix://, got {self.url!r}")
        if self.stream_maxlen < 1 or self.buffer_max_messages < 1 or self.batch_max < 1:
            raise ValueError("stream_maxlen, buffer_max_messages and batch_max must be >= 1")
        if self.heatmap_every_s < 0 or self.heatmap_ttl_s < 1 or self.heatmap_max_side < 2:
            raise ValueError("need heatmap_every_s >= 0, heatmap_ttl_s >= 1, heatmap_max_side >= 2")
        if any(c in self.namespace for c in "{} "):
            raise ValueError(f"namespace must not contain braces or spaces: {self.namespace!r}")


@dataclass
class WebhookConfig:
    """Alert events POSTed as JSON."""

    url: str
    timeout_s: float = 5.0
    retries: int = 3
    backoff_s: float = 1.0  # doubles after each failed attempt
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Authorization: ${HOOK_TOKEN}
    queue_max: int = 1000  # events waiting to be sent; beyond it new events are dropped (counted)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must start with http:// or https://, got {self.url!r}")
        if self.timeout_s <= 0 or self.retries < 0 or self.backoff_s < 0 or self.queue_max < 1:
            raise ValueError("need timeout_s > 0, retries >= 0, backoff_s >= 0, queue_max >= 1")


@dataclass
class MetricsConfig:
    """Prometheus exposition and the console status line."""

    port: int | None = 9108  # None: no HTTP endpoint
    host: str = "127.0.0.1"
    status_every_s: float = 5.0


@dataclass
class RuntimeConfig:
    """Process-level knobs: shared-memory sizes, restarts, shutdown."""

    frame_slots: int = 8  # frame slots per camera ring
    batch_slots: int = 4
    max_frame_width: int = 3840
    max_frame_height: int = 2160
    restart_backoff_s: float = 1.0
    restart_backoff_cap_s: float = 30.0
    drain_timeout_s: float = 10.0
    torch_threads: int | None = None


@dataclass
class AppConfig:
    """A whole ``crowdstream run`` configuration."""

    cameras: dict[str, CameraConfig]
    model: ModelConfig = field(default_factory=ModelConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    webhook: WebhookConfig | None = None
    jsonl: str | None = None  # "-" for stdout, or a file path (relative to run_dir)
    run_dir: str = path_field("runs/default")
    defaults: dict[str, Any] = field(default_factory=dict)  # merged under every camera (raw)
    source_file: str | None = None

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ValueError("at least one camera is needed under 'cameras'")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> AppConfig:
    """Read, interpolate, merge defaults and validate a YAML config file."""
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
        raise ConfigError(file, "defaults", "expected a mapping")
    # validate defaults on their own first, so an error there is reported under 'defaults'
    build(CameraConfig, {"url": "<defaults>", **defaults}, file=file, key="defaults", base_dir=base_dir)
    cams = raw.get("cameras")
    if not isinstance(cams, dict) or not cams:
        raise ConfigError(file, "cameras", "expected a mapping of camera name -> settings (at least one)")
    merged = dict(raw)
    merged["cameras"] = {}
    for name, cam in cams.items():
        if isinstance(cam, str):
            cam = {"url": cam}
        if not isinstance(cam, dict):
            raise ConfigError(file, f"cameras.{name}", f"expected a mapping or a URL, got {cam!r}")
        merged["cameras"][str(name)] = deep_merge(defaults, cam)
    cfg = build(AppConfig, merged, file=file, base_dir=base_dir)
    cfg.source_file = file
    if base_dir is not None:
        for cam in cfg.cameras.values():
            cam.url = _resolve_local_url(cam.url, base_dir)
    return cfg


def _resolve_local_url(url: str, base_dir: Path) -> str:
    """A relative file URL is relative to the config's folder, like every other path in it, so
    ``crowdstream run configs/demo.yaml`` (and every other command) works from any directory."""
    if "://" in url or url.startswith("/"):
        return url
    p = Path(url).expanduser()
    return os.path.normpath(p if p.is_absolute() else base_dir / p)


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (``crowdstream config schema``)."""
    schema = json_schema(AppConfig)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "crowdstream run configuration"
    cam = json_schema(CameraConfig)
    cam.pop("required", None)
    schema["properties"]["defaults"] = cam
    return schema


def write_schema(path: str | Path) -> None:
    Path(path).write_text(json.dumps(config_schema(), indent=2) + "\n")


__all__ = [
    "AlertRuleConfig", "AppConfig", "CalibrationConfig", "CameraConfig", "ConfigError",
    "GroundPointConfig", "MetricsConfig", "ModelConfig", "RecordingConfig", "ReconnectConfig",
    "RedisConfig", "RuntimeConfig", "SmoothingConfig", "WebhookConfig", "ZoneConfig",
    "config_from_dict", "config_schema", "load_config",
]
