"""The run config: loading, defaults, paths, whole-file checks with one-line errors, immutability,
the editor schema; and the same base under the trainer config."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from proc_helpers import session_members
from pydantic import ValidationError

from engines.train.config import TrainConfig
from engines.yamlconfig import FrozenDict, json_schema
from pipeline.cli import main as cli
from pipeline.config import (
    AppConfig,
    CameraConfig,
    ConfigError,
    RedisConfig,
    ZoneConfig,
    config_from_dict,
    config_schema,
    load_config,
)

REPO = Path(__file__).resolve().parent.parent
SQUARE = [[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]]


def write(tmp_path: Path, doc: dict[str, Any] | str | bytes, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    if isinstance(doc, bytes):
        p.write_bytes(doc)
    else:
        p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


def test_defaults_merge_under_cameras_and_paths_resolve(tmp_path: Path) -> None:
    p = write(tmp_path, {
        "defaults": {"fps": 5, "smoothing": {"alpha": 0.5}},
        "cameras": {"a": {"url": "clip.mp4"}, "b": {"url": "rtsp://h/s", "fps": 2}},
        "model": {"checkpoint": "m.pt"},
    })
    cfg = load_config(p)
    assert cfg.cameras["a"].fps == 5 and cfg.cameras["b"].fps == 2
    assert cfg.cameras["b"].smoothing.alpha == 0.5
    assert cfg.cameras["a"].effective_policy == "lossless"
    assert cfg.cameras["b"].effective_policy == "latest"
    assert cfg.model.checkpoint == str(tmp_path / "m.pt")
    assert cfg.source_file == str(p)


def test_unknown_key_names_file_and_path(tmp_path: Path) -> None:
    p = write(tmp_path, {"cameras": {"lobby": {"url": "x.mp4", "smoothing": {"alpah": 0.2}}}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "cameras.lobby.smoothing.alpah" in msg and "did you mean 'alpha'" in msg


def test_wrong_type_says_what_was_expected(tmp_path: Path) -> None:
    p = write(tmp_path, {"cameras": {"a": {"url": "x.mp4", "fps": "fast"}}})
    with pytest.raises(ConfigError, match=r"cameras\.a\.fps: expected a number"):
        load_config(p)


def test_env_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_PASS", "s3cret")
    p = write(tmp_path, {"cameras": {"a": {"url": "rtsp://u:${CAM_PASS}@h/s"}},
                         "redis": {"url": "${REDIS_URL:-redis://localhost:6379/0}"}})
    cfg = load_config(p)
    assert cfg.cameras["a"].url == "rtsp://u:s3cret@h/s"
    assert cfg.redis.url == "redis://localhost:6379/0"
    p2 = write(tmp_path, {"cameras": {"a": {"url": "${NOPE_NOT_SET}"}}})
    with pytest.raises(ConfigError, match=r"cameras\.a\.url: environment variable \$\{NOPE_NOT_SET\}"):
        load_config(p2)


def test_relative_file_urls_resolve_against_the_config_folder(tmp_path: Path) -> None:
    p = write(tmp_path, {"cameras": {"f": {"url": "clips/a.mp4"}, "r": {"url": "rtsp://h/s"},
                                     "v": {"url": "/dev/video0"}, "u": "file://clips/b.mp4",
                                     "abs": "file:///data/c.mp4", "R": "RTSP://cam/1"}})
    cams = load_config(p).cameras
    assert cams["f"].url == str(tmp_path / "clips" / "a.mp4")
    assert cams["u"].url == str(tmp_path / "clips" / "b.mp4")
    assert cams["abs"].url == "file:///data/c.mp4" and cams["R"].url == "RTSP://cam/1"
    assert cams["r"].url == "rtsp://h/s" and cams["v"].url == "/dev/video0"


# ---- every bad config: one line, the file, the key path, the reason --------------------------------

CAM = {"url": "x.mp4"}


def cams(**cam: Any) -> dict[str, Any]:
    return {"cameras": {"a": {**CAM, **cam}}}


ISSUE_CASES = [  # the configs issue 10 found accepted by `config validate` and failing at run time
    ("alert-missing-zone", cams(alerts=[{"name": "busy", "zone": "door", "threshold": 3}]),
     "cameras.a.alerts[0].zone", "unknown zone 'door'"),
    ("fps-zero", cams(fps=0), "cameras.a.fps", "must be > 0, got 0"),
    ("fps-negative", cams(fps=-1), "cameras.a.fps", "must be > 0, got -1"),
    ("frame-slots-1", {**cams(), "runtime": {"frame_slots": 1}}, "runtime.frame_slots",
     "must be >= 2, got 1"),
    ("batch-slots-0", {**cams(), "runtime": {"batch_slots": 0}}, "runtime.batch_slots",
     "must be >= 2, got 0"),
    ("max-frame-width-0", {**cams(), "runtime": {"max_frame_width": 0}},
     "runtime.max_frame_width", "must be > 0, got 0"),
]

OTHER_CASES = [
    ("unknown-key", cams(smoothing={"alpah": 0.2}), "cameras.a.smoothing.alpah",
     "unknown key (did you mean 'alpha'?); allowed keys: alpha, beta"),
    ("wrong-type", cams(fps="fast"), "cameras.a.fps", "expected a number, got 'fast'"),
    ("bool-for-int", cams(decode_threads=True), "cameras.a.decode_threads",
     "expected an integer, got True"),
    ("bad-enum", cams(queue_policy="sometimes"), "cameras.a.queue_policy",
     "expected one of 'auto', 'lossless' or 'latest', got 'sometimes'"),
    ("env-missing", cams(url="rtsp://u:${CS_TEST_NOT_SET}@h/s"), "cameras.a.url",
     "environment variable ${CS_TEST_NOT_SET} is not set"),
    ("bad-yaml", "cameras:\n  a: {url: x.mp4\n", "<top level>", "not valid YAML: line 3"),
    ("not-a-mapping", "- a\n- b\n", "<top level>", "expected a mapping at the top level"),
    ("not-text", b"cameras:\n  a: \xff\xfe\n", "<top level>", "cannot read the file"),
    ("camera-not-a-mapping", {"cameras": {"a": 5}}, "cameras.a", "expected a mapping or a URL"),
    ("no-cameras", {"cameras": {}}, "cameras", "expected a mapping of camera name"),
    ("all-disabled", cams(enabled=False), "cameras", "every camera is disabled"),
    ("duplicate-zone", cams(zones=[{"name": "door", "polygon": SQUARE}] * 2),
     "cameras.a.zones[1].name", "duplicate name 'door' (zones[0] has it too)"),
    ("self-intersecting", cams(zones=[{"name": "z", "polygon": [[0, 0], [1, 1], [1, 0], [0, 1]]}]),
     "cameras.a.zones[0].polygon", "edges 0-1 and 2-3 cross"),
    ("zone-no-area", cams(zones=[{"name": "z", "polygon": [[0, 0], [0.5, 0.5], [1, 1]]}]),
     "cameras.a.zones[0].polygon", "no area"),
    ("zone-two-points", cams(zones=[{"name": "z", "polygon": [[0, 0], [1, 1]]}]),
     "cameras.a.zones[0].polygon", "needs at least 3 points, got 2"),
    ("zone-point-outside", cams(zones=[{"name": "z", "polygon": [[0, 0], [1.5, 0], [1, 1]]}]),
     "cameras.a.zones[0].polygon[1][0]", "must be <= 1, got 1.5"),
    ("zone-point-not-a-pair", cams(zones=[{"name": "z", "polygon": [[0, 0], [1], [1, 1]]}]),
     "cameras.a.zones[0].polygon[1]", "expected a pair [a, b], got [1]"),
    ("blank-zone-name", cams(zones=[{"name": " ", "polygon": SQUARE}]),
     "cameras.a.zones[0].name", "expected a name that is not blank"),
    ("duplicate-alert", cams(alerts=[{"name": "busy", "threshold": 3}] * 2),
     "cameras.a.alerts[1].name", "duplicate name 'busy'"),
    ("density-m2-no-calibration", cams(alerts=[{"name": "m2", "metric": "density_m2",
                                                "threshold": 2}]),
     "cameras.a.alerts[0].metric", "density_m2 needs a ground calibration"),
    ("draw-m2-no-calibration", cams(recording={"draw_density_m2": True}),
     "cameras.a.recording.draw_density_m2", "need a ground calibration"),
    ("clear-above-threshold", cams(alerts=[{"name": "busy", "threshold": 3, "clear": 4}]),
     "cameras.a.alerts[0].clear", "must be <= threshold (3), got 4"),
    ("calibration-three-points", cams(calibration={"points": [
        {"image": [0, 0], "ground": [0, 0]}, {"image": [10, 0], "ground": [1, 0]},
        {"image": [0, 10], "ground": [0, 1]}]}),
     "cameras.a.calibration.points", "at least 4 points, got 3"),
    ("calibration-empty", cams(calibration={}), "cameras.a.calibration.points",
     "needs points (>= 4 image/ground pairs), a homography or a perspective_map"),
    ("homography-without-size", cams(calibration={"homography": [[1, 0, 0], [0, 1, 0],
                                                                 [0, 0, 1]]}),
     "cameras.a.calibration.image_size", "required with homography"),
    ("defaults-error", {"defaults": {"smoothing": {"alpha": 2}}, **cams()},
     "defaults.smoothing.alpha", "must be <= 1, got 2"),
    ("defaults-unknown-key", {"defaults": {"fsp": 2}, **cams()}, "defaults.fsp",
     "did you mean 'fps'?"),
    ("per-camera-override", {"defaults": {"reconnect": {"initial_s": 2}},
                             "cameras": {"a": CAM, "b": {"url": "y.mp4",
                                                         "reconnect": {"cap_s": 1}}}},
     "cameras.b.reconnect.cap_s", "must be >= initial_s (2), got 1"),
    ("webhook-scheme", {**cams(), "webhook": {"url": "ftp://hooks/x"}}, "webhook.url",
     "expected a URL starting with http:// or https://, got 'ftp://hooks/x'"),
    ("redis-scheme", {**cams(), "redis": {"url": "http://cache:6379"}}, "redis.url",
     "expected a URL starting with redis://, rediss:// or unix://"),
    ("jsonl-folder", {**cams(), "jsonl": "out/"}, "jsonl", "expected '-' (stdout) or a file"),
    ("port-range", {**cams(), "metrics": {"port": 70000}}, "metrics.port",
     "must be <= 65535, got 70000"),
    ("tensorrt-on-cpu", {**cams(), "model": {"backend": "tensorrt"}}, "model.device",
     "backend tensorrt needs a CUDA device"),
    ("overlap-one", {**cams(), "model": {"overlap": 1.0}}, "model.overlap", "must be < 1"),
    ("restart-cap-below-first", {**cams(), "runtime": {"restart_backoff_s": 5,
                                                       "restart_backoff_cap_s": 1}},
     "runtime.restart_backoff_cap_s", "must be >= restart_backoff_s (5)"),
]


@pytest.mark.parametrize(("doc", "key", "reason"),
                         [pytest.param(*c[1:], id=c[0]) for c in ISSUE_CASES + OTHER_CASES])
def test_validate_refuses_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        doc: dict[str, Any] | str | bytes, key: str,
                                        reason: str) -> None:
    p = write(tmp_path, doc)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert (e.value.file, e.value.key) == (str(p), key)
    assert reason in e.value.detail, e.value.detail
    assert cli(["config", "validate", str(p)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.endswith("\n") and out.err.count("\n") == 1, out.err  # one line, no traceback
    assert f"{p}: {key}: " in out.err and reason in out.err


@pytest.mark.parametrize(("doc", "key", "reason"),
                         [pytest.param(*c[1:], id=c[0]) for c in ISSUE_CASES])
def test_run_refuses_the_same_before_starting_anything(tmp_path: Path, doc: dict[str, Any],
                                                       key: str, reason: str) -> None:
    """`run` fails on the same line before any process or shared-memory segment exists."""
    p = write(tmp_path, doc)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(p), "--quiet"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and f"{p}: {key}: " in err and reason in err, err
    assert out == ""
    assert [n for n in os.listdir("/dev/shm") if n.startswith(f"cs_{proc.pid}_")] == []
    # every process `run` would start inherits its session: none is left
    time.sleep(0.2)
    assert session_members(proc.pid) == []


def test_validate_accepts_a_good_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, cams(zones=[{"name": "door", "polygon": SQUARE}],
                             alerts=[{"name": "busy", "zone": "door", "threshold": 3, "clear": 2}]))
    assert cli(["config", "validate", str(p)]) == 0
    assert f"{p}: OK, 1 camera(s)" in capsys.readouterr().out


def test_defaults_are_checked_once_merged() -> None:
    """Defaults may name what each camera completes (an alert's zone, calibration points)."""
    cfg = config_from_dict({
        "defaults": {"alerts": [{"name": "busy", "zone": "door", "threshold": 3}]},
        "cameras": {"a": {"url": "x.mp4", "zones": [{"name": "door", "polygon": SQUARE}]}}})
    assert cfg.cameras["a"].alerts[0].zone == "door"


# ---- immutable once loaded ----------------------------------------------------------------------

def test_loaded_config_is_immutable(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, cams(zones=[{"name": "door", "polygon": SQUARE}],
                                           options={"probesize": "32"})))
    cam = cfg.cameras["a"]
    with pytest.raises(ValidationError, match="frozen"):
        cam.fps = 3.0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        cfg.runtime.drain_timeout_s = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError, match="read-only"):
        cfg.cameras["b"] = cam  # type: ignore[index]
    with pytest.raises(TypeError, match="read-only"):
        cam.options["probesize"] = "64"  # type: ignore[index]
    assert isinstance(cam.zones, tuple) and isinstance(cam.zones[0].polygon, tuple)
    assert isinstance(cfg.cameras, FrozenDict)
    again = pickle.loads(pickle.dumps(cfg))  # what spawned processes receive
    assert again == cfg and isinstance(again.cameras, FrozenDict)


def test_sections_built_in_code_take_keywords_and_are_checked() -> None:
    cam = CameraConfig(url="rtsp://cam/1", zones=[ZoneConfig(name="z", polygon=[(0, 0), (1, 0),
                                                                                   (1, 1)])])
    assert cam.zones[0].polygon == ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0)) and cam.is_live
    assert RedisConfig(url="redis://h:6379/0", namespace="t").namespace == "t"
    with pytest.raises(ValidationError, match="unknown zone 'nowhere'"):
        CameraConfig(url="x.mp4", alerts=[{"name": "a", "zone": "nowhere", "threshold": 1}])
    with pytest.raises(ValidationError, match="greater than 0|must be > 0"):
        CameraConfig(url="x.mp4", fps=0)


# ---- the editor schema ---------------------------------------------------------------------------

def test_schema_accepts_shipped_configs() -> None:
    schema = config_schema()
    run_configs = [f for f in (REPO / "configs").glob("*.yaml")
                   if "cameras" in (yaml.safe_load(f.read_text()) or {})]
    assert run_configs, "no run configs found in configs/"
    for f in run_configs:
        jsonschema.validate(yaml.safe_load(f.read_text()), schema)
        load_config(f)


def test_committed_editor_schema_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    """configs/crowdstream.schema.json is what editors load; regenerate it when config changes:
    ``crowdstream config schema configs/crowdstream.schema.json``."""
    committed = REPO / "configs" / "crowdstream.schema.json"
    assert json.loads(committed.read_text()) == config_schema()
    assert cli(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == config_schema()


def _objects(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("<root>", schema)] + list(schema.get("$defs", {}).items())


@pytest.mark.parametrize("schema", [config_schema(), json_schema(TrainConfig)],
                         ids=["run", "train"])
def test_schema_describes_and_bounds_every_field(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    for name, obj in _objects(schema):
        assert obj.get("additionalProperties") is False, name
        for key, prop in obj["properties"].items():
            assert prop.get("description"), f"{name}.{key} has no description"


def test_schema_carries_bounds_enums_and_defaults() -> None:
    schema = config_schema()
    v = jsonschema.Draft202012Validator(schema)
    for doc in [cams(fps=0), {**cams(), "runtime": {"frame_slots": 1}},
                cams(queue_policy="fifo"), {**cams(), "metrics": {"port": 65536}}, {"cameras": {}},
                {**cams(), "model": {"overlap": 1}}, {**cams(), "defaults": {"fsp": 1}}]:
        assert list(v.iter_errors(doc)), doc
    runtime = schema["$defs"]["RuntimeConfig"]["properties"]
    assert runtime["frame_slots"]["minimum"] == 2 and runtime["frame_slots"]["default"] == 8
    assert "required" not in schema["$defs"]["CameraDefaults"]  # defaults need no url
    assert not list(v.iter_errors({"defaults": {"fps": 2}, "cameras": {"a": "x.mp4"}}))


def test_schema_matches_the_loader_on_the_bad_configs(tmp_path: Path) -> None:
    """Every table case the schema can see (no env, YAML syntax or cross-field rule) is refused
    by editors too."""
    v = jsonschema.Draft202012Validator(config_schema())
    schema_visible = {"fps-zero", "fps-negative", "frame-slots-1", "batch-slots-0",
                      "max-frame-width-0", "unknown-key", "wrong-type", "bool-for-int", "bad-enum",
                      "camera-not-a-mapping", "no-cameras", "zone-two-points",
                      "zone-point-outside", "zone-point-not-a-pair", "blank-zone-name",
                      "defaults-error", "defaults-unknown-key", "webhook-scheme", "redis-scheme",
                      "port-range", "overlap-one"}
    for name, doc, *_ in ISSUE_CASES + OTHER_CASES:
        if name in schema_visible:
            assert list(v.iter_errors(doc)), name


def test_app_config_fields_unchanged() -> None:
    # serve: the console's section (crowdstream serve), added with it
    assert list(AppConfig.model_fields) == ["cameras", "model", "redis", "metrics", "runtime",
                                            "serve", "webhook", "jsonl", "run_dir", "defaults",
                                            "source_file"]


# ---- the trainer config: the same base ------------------------------------------------------------

TRAIN_CASES = [
    ("unknown-key", {"optim": {"lrr": 1}}, "optim.lrr", "did you mean 'lr'?"),
    ("bad-format", {"data": {"train": {"root": "d", "format": "coco"}}}, "data.train.format",
     "expected one of 'shanghaitech'"),
    ("source-in-list", {"data": {"train": [{"root": "a"}, {"root": "b", "holdout": 1.5}]}},
     "data.train[1].holdout", "must be < 1, got 1.5"),
    ("unknown-key-in-list", {"data": {"train": [{"roott": "a"}]}}, "data.train[0].roott",
     "did you mean 'root'?"),
    ("empty-list", {"data": {"train": []}}, "data.train", "needs at least one source"),
    ("val-with-several-sources", {"data": {"train": [{"root": "a"}, {"root": "b"}],
                                           "val": {"root": "c"}}}, "data.val",
     "names one validation set"),
    ("train-not-a-mapping", {"data": {"train": 5}}, "data.train", "expected a mapping, got 5"),
    ("blank-root", {"data": {"train": {"root": ""}}}, "data.train.root", "expected a path"),
    ("holdout-and-val-select", {"data": {"train": {"root": "a", "holdout": 0.1,
                                                   "val_select": "1-5"}}},
     "data.train.val_select", "give holdout or val_select, not both"),
    ("zero-weight", {"data": {"train": {"root": "a", "weight": 0}}}, "data.train.weight",
     "must be > 0"),
    ("zoom-reversed", {"data": {"train": {"root": "a", "zoom": [1.5, 0.5]}}}, "data.train.zoom",
     "min <= max"),
    ("empty-data", {"data": None}, "data.train", "required key is missing"),
    ("crop-zero", {"augment": {"crop": [0, 64]}}, "augment.crop[0]", "must be > 0"),
    ("flip-probability", {"augment": {"hflip": 2}}, "augment.hflip", "must be <= 1"),
    ("zoom-min-above-max", {"augment": {"zoom_min": 3}}, "augment.zoom_min",
     "must be <= zoom_max (2)"),
    ("loss-iters", {"loss": {"sinkhorn_iters": 0}}, "loss.sinkhorn_iters", "must be >= 1"),
    ("anchors-per-bin", {"model": {"truncation": 2, "anchors": [0, 1]}}, "model.anchors",
     "needs 3 values"),
    ("batch-size", {"optim": {"batch_size": 0}}, "optim.batch_size", "must be > 0"),
    ("device", {"device": "gpu"}, "device", "expected cpu, cuda or cuda:N"),
]


@pytest.mark.parametrize(("doc", "key", "reason"),
                         [pytest.param(*c[1:], id=c[0]) for c in TRAIN_CASES])
def test_train_config_refuses_with_the_key_path(tmp_path: Path, doc: dict[str, Any], key: str,
                                                reason: str) -> None:
    from engines.train.config import load_train_config

    full = {"data": {"train": {"root": "d"}}, **doc}
    with pytest.raises(ConfigError) as e:
        load_train_config(write(tmp_path, full))
    assert e.value.key == key and reason in e.value.detail, str(e.value)


def test_train_config_one_source_or_several(tmp_path: Path) -> None:
    from engines.train.config import DatasetSource, load_train_config, parse_set

    one = load_train_config(write(tmp_path, {"data": {"train": {"root": "a", "zoom": [0.5, 2]}}}),
                            overrides=parse_set(["optim.epochs=3", "augment.crop=[64, 64]"]))
    assert isinstance(one.data.train, DatasetSource) and one.data.train.root == str(tmp_path / "a")
    assert one.optim.epochs == 3 and one.augment.crop == (64, 64)
    many = load_train_config(write(tmp_path, {"data": {"train": [
        {"root": "a", "name": "first"}, {"root": "/abs/b", "weight": 0.5}]}}))
    assert isinstance(many.data.train, tuple) and [s.label for s in many.data.train] == ["first", "b"]
    assert many.data.train[1].root == "/abs/b"
    with pytest.raises(ValidationError, match="frozen"):
        many.optim.lr = 1.0  # type: ignore[misc]
    assert TrainConfig.model_validate(many.model_dump()) == many  # the checkpoint's copy reloads
