"""``crowdstream bench``: rows per backend/precision with ratios; clear 'not run' rows."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from calibrate.bench import bench_source, format_table
from pipeline.cli import main as cli
from pipeline.commands.bench import parse_combos


def test_bench_rows_and_ratios() -> None:
    rows = bench_source(None, label="tiny", random_init="ebc-tiny-rn", batch=2, iters=2,
                        threads=1, combos=[("torch", "fp32"), ("onnx", "fp32"),
                                           ("tensorrt", "fp16")])
    torch_row, ort_row, trt_row = rows
    assert torch_row["tiles_per_s"] > 0 and ort_row["tiles_per_s"] > 0
    assert ort_row["vs_onnx_fp32"] == 1.0 and torch_row["vs_torch_fp32"] == 1.0
    assert ort_row["vs_torch_fp32"] == pytest.approx(
        ort_row["tiles_per_s"] / torch_row["tiles_per_s"])
    # bench runs on device cpu by default, where TensorRT never runs: a 'not run' row saying why
    assert "tiles_per_s" not in trt_row and "needs a CUDA device" in trt_row["error"]
    table = format_table(rows)
    assert "| tiny | onnx | fp32 | 224x224 | 2 |" in table and "not run" in table
    assert ort_row["tiles_per_cpu_s"] > 0 and ort_row["tiles_per_1080p"] == 45  # 5 x 9 at 224


def test_cli_bench_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    assert cli(["bench", "--random-init", "ebc-tiny-vit", "--combos", "onnx:fp32",
                "--batch", "2", "--iters", "1", "--threads", "1", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["backend"] == "onnx" and row["tiles_per_s"] > 0


def test_parse_combos() -> None:
    assert parse_combos("torch:fp32,onnx:int8") == [("torch", "fp32"), ("onnx", "int8")]
    with pytest.raises(argparse.ArgumentTypeError, match="BACKEND:PRECISION"):
        parse_combos("onnx")
