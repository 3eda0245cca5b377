"""INT8 calibration: frames from the configured files, a held-back report, the deviation bound."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from calibrate.int8 import (
    Int8Options,
    Int8Refused,
    calibrate_from_config,
    collect_frames,
    split_holdout,
)
from engines.backends import load_engine
from pipeline.config import config_from_dict

DEMO_CLIP = Path(__file__).resolve().parent.parent / "configs" / "demo" / "mall_demo.mp4"


def _config(tmp: Path, cameras: dict[str, str]) -> object:
    return config_from_dict({
        "run_dir": str(tmp / "run"),
        "model": {"random_init": "ebc-tiny-rn", "batch": 4, "cache_dir": str(tmp / "engines")},
        "cameras": {name: {"url": url} for name, url in cameras.items()},
    })


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list:
    if not DEMO_CLIP.is_file():
        pytest.skip(f"demo clip {DEMO_CLIP} is not in this checkout")
    cfg = _config(tmp_path_factory.mktemp("f"), {"mall": str(DEMO_CLIP)})
    return collect_frames(cfg.cameras, 4)


def test_frames_are_spread_over_the_file(frames: list) -> None:
    assert len(frames) == 4
    times = [f.t for f in frames]
    assert times == sorted(times) and len(set(times)) == 4
    # 30 s clip: evenly spaced seeks land near 3.75, 11.25, 18.75 and 26.25 s.
    assert times[0] < 6.0 and times[-1] > 24.0
    assert all(f.rgb.shape == (480, 640, 3) and f.rgb.dtype == np.uint8 for f in frames)
    calib, held = split_holdout(frames, 0.25)
    assert len(held) == 1 and len(calib) == 3


def test_int8_engine_builds_and_reports_deviation(frames: list, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = _config(tmp_path, {"mall": str(DEMO_CLIP)})
    opts = Int8Options(frames=4, holdout=0.5, max_deviation=0.5, max_calibration_tiles=8,
                       threads=1)
    result = calibrate_from_config(cfg.model, cfg.cameras, cfg.model.engine_cache_dir, opts,
                                   frames=frames)
    r = result.report
    assert result.engine_path is not None and result.engine_path.is_file()
    assert r["frames"] == 2 and len(r["per_frame"]) == 2 and r["calibration_tiles"] == 8
    assert 0.0 < r["relative_deviation"] <= 0.5  # quantisation changes counts, a little
    assert r["mae"] > 0 and r["max"] >= r["mae"] and r["speedup"] > 0 and r["speedup_cpu"] > 0
    assert json.loads(result.report_path.read_text())["engine_written"] is True
    # The INT8 model is QDQ with only MatMul/Gemm/Conv quantised.
    import onnx

    graph = onnx.load(str(result.engine_path)).graph
    weights = {t.name for t in graph.initializer}
    int8_weights = {n.output[0] for n in graph.node
                    if n.op_type == "DequantizeLinear" and n.input[0] in weights}
    quantised = {n.op_type for n in graph.node if any(i in int8_weights for i in n.input)}
    # (Identity: the exporter's alias of a weight shared by two convolutions.)
    assert "Conv" in quantised and quantised - {"Identity"} <= {"MatMul", "Gemm", "Conv"}
    # ONNX Runtime turns every quantised convolution into an integer QLinearConv (a float Conv
    # left between Q/DQ nodes would make INT8 slower than fp32).
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(result.engine_path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    assert "Conv" not in ops and ops.count("QLinearConv") == 24
    # load_engine finds it in the cache for precision int8, and it runs.
    engine = load_engine(None, random_init="ebc-tiny-rn", precision="int8", max_batch=4,
                         cache_dir=str(tmp_path / "engines"), threads=1)
    assert engine.description["precision"] == "int8"
    assert engine.run(np.full((2, 3, *engine.window), 0.5, np.float32)).shape == (2, 1, 28, 28)


def test_int8_over_the_bound_is_refused_with_the_margin(frames: list, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = _config(tmp_path, {"mall": str(DEMO_CLIP)})
    opts = Int8Options(frames=4, holdout=0.5, max_deviation=0.0, max_calibration_tiles=4,
                       threads=1)
    with pytest.raises(Int8Refused, match=r"exceeds the bound 0\.00% by [0-9.]+ percentage "
                                          r"points.*not written") as err:
        calibrate_from_config(cfg.model, cfg.cameras, cfg.model.engine_cache_dir, opts,
                                   frames=frames)
    assert err.value.report["relative_deviation"] > 0
    engines = tmp_path / "engines"
    assert not list(engines.glob("*int8*.onnx")) and not list(engines.glob(".*tmp*"))
    (report,) = engines.glob("*int8*.report.json")
    assert json.loads(report.read_text())["engine_written"] is False


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="holdout"):
        Int8Options(holdout=1.0)
    with pytest.raises(ValueError, match="frames must be >= 2"):
        Int8Options(frames=1)


def test_cli_calibrate_int8(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.cli import main as cli

    monkeypatch.setenv("CROWDSTREAM_HOME", str(tmp_path / "home"))
    config = tmp_path / "c.yaml"
    config.write_text(f"""
run_dir: {tmp_path / 'run'}
model: {{random_init: ebc-tiny-rn, batch: 4}}
cameras:
  mall: {{url: {DEMO_CLIP}}}
""")
    args = ["calibrate", "int8", str(config), "--frames", "4", "--holdout", "0.5",
            "--max-calibration-tiles", "4", "--threads", "1"]
    assert cli([*args, "--max-deviation", "0"]) == 1
    out = capsys.readouterr()
    assert "count deviation INT8 vs FP32" in out.out and "exceeds the bound" in out.err
    assert cli([*args, "--max-deviation", "1"]) == 0
    out = capsys.readouterr().out
    assert "INT8 engine:" in out and "speedup" in out
    # no model.cache_dir: the user's shared engine cache ($CROWDSTREAM_HOME/engines)
    assert list((tmp_path / "home" / "engines").glob("*int8*.onnx"))
    assert cli(["calibrate", "int8", str(config), "--holdout", "1.5"]) == 2


def test_last_ops_walks_back_from_the_output(tmp_path: Path) -> None:
    import onnx

    from calibrate.int8 import QUANT_OPS, last_ops

    engine = load_engine(None, backend="onnx", random_init="ebc-tiny-rn",
                         cache_dir=str(tmp_path), threads=1)
    model = onnx.load(engine.description["engine_file"])
    (last,) = last_ops(model, QUANT_OPS, 1)
    assert "projection" in last  # the 1x1 conv into the text-feature space
    assert len(last_ops(model, QUANT_OPS, 3)) == 3 and last_ops(model, QUANT_OPS, 0) == []
