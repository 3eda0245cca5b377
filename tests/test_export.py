"""Engine files and sidecars: export CLI, and refusal of broken / foreign / other-version files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.backends import EngineError, load_engine
from engines.backends.sidecar import (
    FORMAT_VERSION,
    check_tensorrt_compat,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from pipeline.cli import main as cli


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small exported engine, built through the CLI."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("engines")
    rc = cli(["export", "--random-init", "ebc-tiny-rn", "--batch", "4", "--window", "160x192",
              "--out", str(out)])
    assert rc == 0
    (path,) = out.glob("*.onnx")
    return path


def _copy(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name
    dst.write_bytes(src.read_bytes())
    sidecar_path(dst).write_text(sidecar_path(src).read_text())
    return dst


def test_cli_export_writes_engine_and_sidecar(exported: Path) -> None:
    meta = read_sidecar(exported)
    assert meta["window"] == [160, 192] and meta["batch"]["max"] == 4
    assert meta["block_size"] == 8 and meta["precision"] == "fp32"
    assert meta["exporter"]["opset"] == 17 and meta["export_check_rel_l2"] < 1e-4
    assert meta["spec"]["name"] == "ebc-tiny-rn"
    engine = load_engine(str(exported), max_batch=4, threads=1)
    out = engine.run(np.random.default_rng(0).random((4, 3, 160, 192), dtype=np.float32))
    assert out.shape == (4, 1, 20, 24)


def test_cli_export_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli(["export", "--random-init", "ebc-tiny-rn", "--precision", "int8"]) == 2
    assert "calibrate int8" in capsys.readouterr().err
    if importlib.util.find_spec("tensorrt") is None:
        assert cli(["export", "--random-init", "ebc-tiny-rn", "--backend", "tensorrt",
                    "--out", str(tmp_path)]) == 1
        assert "TensorRT is not installed" in capsys.readouterr().err
        assert not list(tmp_path.glob("*.onnx"))  # failed early, before exporting anything


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_text("{not json"), "is broken"),
    (lambda p: p.write_text("[1, 2]"), "expected a JSON object"),
    (lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items()
                                        if k != "window"})), "'window' is missing"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "block_size": "8"})),
     "'block_size' is '8'"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()),
                                        "format_version": FORMAT_VERSION + 1})),
     "sidecar format version"),
    (lambda p: p.unlink(), "has no sidecar"),
])
def test_broken_sidecar_is_refused(exported: Path, tmp_path: Path, damage: object,
                                   message: str) -> None:
    path = _copy(exported, tmp_path)
    damage(sidecar_path(path))  # type: ignore[operator]
    with pytest.raises(EngineError, match=message) as err:
        load_engine(str(path))
    if message != "expected a JSON object":
        assert "crowdstream export" in str(err.value)  # says how to rebuild


def test_replaced_engine_file_is_refused(exported: Path, tmp_path: Path) -> None:
    path = _copy(exported, tmp_path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EngineError, match="does not match its sidecar"):
        load_engine(str(path))


def _fake_plan(tmp_path: Path, trt_version: str, gpu: str, sm: str) -> Path:
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"not a real plan: only the sidecar is read before TensorRT")
    write_sidecar(plan, {"backend": "tensorrt", "precision": "fp16", "window": [384, 384],
                         "block_size": 8, "batch": {"min": 1, "opt": 8, "max": 8},
                         "input_name": "tiles", "output_name": "density",
                         "checkpoint": "runs/x/model.pt",
                         "tensorrt": {"version": trt_version, "gpu_name": gpu,
                                      "compute_capability": sm}})
    return plan


def test_plan_from_another_tensorrt_or_gpu_is_refused(tmp_path: Path) -> None:
    plan = _fake_plan(tmp_path, "8.6.1", "NVIDIA A10", "8.6")
    meta = read_sidecar(plan)
    with pytest.raises(EngineError) as err:
        check_tensorrt_compat(meta, trt_version="10.13.0", gpu_name="NVIDIA A10",
                              compute_capability="8.6", engine_path=plan)
    text = str(err.value)
    assert "built for TensorRT 8.6.1 (this machine has 10.13.0)" in text
    assert "crowdstream export runs/x/model.pt --backend tensorrt --precision fp16" in text
    with pytest.raises(EngineError, match=r"GPU NVIDIA A10 sm_8.6 \(this machine has NVIDIA "
                                          r"H100 80GB HBM3 sm_9.0\)"):
        check_tensorrt_compat(meta, trt_version="8.6.1", gpu_name="NVIDIA H100 80GB HBM3",
                              compute_capability="9.0", engine_path=plan)
    # Same version and GPU: accepted.
    check_tensorrt_compat(meta, trt_version="8.6.1", gpu_name="NVIDIA A10",
                          compute_capability="8.6", engine_path=plan)
    broken = {**meta, "tensorrt": {"version": "8.6.1"}}
    with pytest.raises(EngineError, match="needs 'tensorrt'"):
        check_tensorrt_compat(broken, trt_version="8.6.1", gpu_name="NVIDIA A10",
                              compute_capability="8.6", engine_path=plan)


def test_loading_a_plan_without_tensorrt_says_so(tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    plan = _fake_plan(tmp_path, "10.13.0", "NVIDIA H100 80GB HBM3", "9.0")
    with pytest.raises(EngineError, match="runs on a CUDA device"):
        load_engine(str(plan), device="cpu")
    with pytest.raises(EngineError, match="TensorRT is not installed"):
        load_engine(str(plan), device="cuda")
    sidecar_path(plan).write_text("{")
    with pytest.raises(EngineError, match="is broken"):  # sidecar checked before TensorRT
        load_engine(str(plan), device="cuda")
