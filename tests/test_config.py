from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline.config import ConfigError, config_schema, load_config


def write(tmp_path: Path, doc: dict) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(doc))
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


def test_schema_accepts_shipped_configs() -> None:
    schema = config_schema()
    run_configs = [f for f in Path(__file__).resolve().parent.parent.joinpath("configs").glob("*.yaml")
                   if "cameras" in (yaml.safe_load(f.read_text()) or {})]
    assert run_configs, "no run configs found in configs/"
    for f in run_configs:
        jsonschema.validate(yaml.safe_load(f.read_text()), schema)
        load_config(f)


def test_committed_editor_schema_is_current() -> None:
    """configs/crowdstream.schema.json is what editors load; regenerate it when config changes:
    ``crowdstream config schema configs/crowdstream.schema.json``."""
    import json

    committed = Path(__file__).resolve().parent.parent / "configs" / "crowdstream.schema.json"
    assert json.loads(committed.read_text()) == config_schema()


def test_relative_file_urls_resolve_against_the_config_folder(tmp_path: Path) -> None:
    p = write(tmp_path, {"cameras": {"f": {"url": "clips/a.mp4"}, "r": {"url": "rtsp://h/s"},
                                     "v": {"url": "/dev/video0"}}})
    cfg = load_config(p)
    assert cfg.cameras["f"].url == str(tmp_path / "clips" / "a.mp4")
    assert cfg.cameras["r"].url == "rtsp://h/s" and cfg.cameras["v"].url == "/dev/video0"
