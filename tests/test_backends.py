"""Engine backends: torch vs ONNX Runtime agreement, auto selection, the run() contract, caching."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.backends import EngineError, load_engine
from engines.export import relative_l2

FAMILIES = ["ebc-tiny-rn", "ebc-tiny-vit", "count-tiny"]


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def _tiles(n: int, window: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, *window), dtype=np.float32)


@pytest.mark.parametrize("name", FAMILIES)
def test_torch_and_onnx_agree(name: str, tmp_path: Path) -> None:
    eager = load_engine(None, backend="torch", random_init=name, max_batch=4, threads=1)
    ort = load_engine(None, backend="onnx", random_init=name, max_batch=4, threads=1,
                      cache_dir=str(tmp_path))
    assert eager.window == ort.window and eager.block_size == ort.block_size
    x = _tiles(3, eager.window)
    a = eager.run(x)
    b = ort.run(x)
    h, w = eager.window
    assert a.shape == b.shape == (3, 1, h // eager.block_size, w // eager.block_size)
    assert a.dtype == b.dtype == np.float32
    # A degenerate (constant) output would make the comparison meaningless.
    assert float(a.std()) > 1e-6
    assert relative_l2(b, a) <= 1e-4
    # Batch independence: one tile alone gives the same map as inside the batch.
    assert relative_l2(ort.run(x[1:2]), b[1:2]) <= 1e-5
    assert ort.description["backend"] == "onnx" and eager.description["backend"] == "torch"
    assert ort.description["checkpoint_hash"] == eager.description["checkpoint_hash"]


def test_auto_on_cpu_picks_onnx_and_says_why_not_tensorrt(tmp_path: Path) -> None:
    engine = load_engine(None, random_init="ebc-tiny-rn", cache_dir=str(tmp_path), threads=1)
    sel = engine.description["selection"]
    assert sel["chosen"] == "onnx" and engine.description["provider"] == "CPUExecutionProvider"
    why_not = sel["rejected"]["tensorrt"]
    assert "device is cpu" in why_not
    if importlib.util.find_spec("tensorrt") is None:
        assert "TensorRT is not installed" in why_not


def test_tensorrt_backend_without_tensorrt_says_what_to_do(tmp_path: Path) -> None:
    """Where ``import tensorrt`` fails, asking for TensorRT fails early, saying what to use."""
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is importable here: this checks the message for when it is not")
    with pytest.raises(EngineError) as err:
        load_engine(None, backend="tensorrt", device="cuda", random_init="ebc-tiny-rn",
                    cache_dir=str(tmp_path))
    text = str(err.value)
    assert "TensorRT is not installed" in text and "Use backend onnx or torch" in text
    assert not list(tmp_path.iterdir())  # refused before exporting anything
    # on the CPU the device is the reason given first, whatever is installed
    with pytest.raises(EngineError, match="TensorRT needs a CUDA device"):
        load_engine(None, backend="tensorrt", device="cpu", random_init="ebc-tiny-rn",
                    cache_dir=str(tmp_path))


def test_run_contract_rejects_bad_batches(tmp_path: Path) -> None:
    engine = load_engine(None, backend="onnx", random_init="ebc-tiny-rn", max_batch=2,
                         cache_dir=str(tmp_path), threads=1)
    engine.warmup(1)
    with pytest.raises(ValueError, match="takes 1..2 tiles"):
        engine.run(_tiles(3, engine.window))
    with pytest.raises(ValueError, match="expects tiles"):
        engine.run(_tiles(1, (engine.window[0] + 8, engine.window[1])))
    out = engine.run(_tiles(2, engine.window).astype(np.float64))  # converted, not refused
    assert out.dtype == np.float32


def test_checkpoint_exports_once_and_is_cached_by_content(tmp_path: Path) -> None:
    from engines.checkpoint import file_hash, save_checkpoint
    from engines.models import create_model, small_spec

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.pt", create_model(small_spec("ebc-tiny-rn")), {"e": 1})
    cache = tmp_path / "engines"
    first = load_engine(str(ckpt), backend="onnx", cache_dir=str(cache), max_batch=4, threads=1)
    files = sorted(cache.glob("*.onnx"))
    assert len(files) == 1 and first.description["checkpoint_hash"] == file_hash(ckpt)
    stamp = files[0].stat().st_mtime_ns
    second = load_engine(str(ckpt), backend="auto", cache_dir=str(cache), max_batch=4, threads=1)
    assert sorted(cache.glob("*.onnx")) == files and files[0].stat().st_mtime_ns == stamp
    assert second.engine_id == first.engine_id
    # The engine file itself loads directly and agrees with the checkpoint run in torch.
    direct = load_engine(str(files[0]), threads=1)
    eager = load_engine(str(ckpt), backend="torch", max_batch=4, threads=1)
    x = _tiles(2, eager.window, seed=3)
    assert relative_l2(direct.run(x), eager.run(x)) <= 1e-4
    # New bytes, new engine: the cache key is the content, not the file name.
    save_checkpoint(ckpt, create_model(small_spec("ebc-tiny-rn")), {"e": 2})
    load_engine(str(ckpt), backend="onnx", cache_dir=str(cache), max_batch=4, threads=1)
    assert len(list(cache.glob("*.onnx"))) == 2


def test_engine_file_conflicts_are_refused(tmp_path: Path) -> None:
    engine = load_engine(None, backend="onnx", random_init="ebc-tiny-rn", max_batch=2,
                         cache_dir=str(tmp_path), threads=1)
    path = engine.description["engine_file"]
    with pytest.raises(EngineError, match="built for window"):
        load_engine(path, window=(256, 256))
    # ONNX's batch axis is dynamic: a larger max_batch than exported is fine (TensorRT's is not).
    assert load_engine(path, max_batch=8, threads=1).run(_tiles(5, engine.window)).shape[0] == 5
    with pytest.raises(EngineError, match="is a onnx engine file"):
        load_engine(path, backend="torch")


def test_clear_errors_for_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="unknown backend"):
        load_engine(None, backend="tflite", random_init="ebc-tiny-rn")
    with pytest.raises(EngineError, match="fp16 needs a GPU"):
        load_engine(None, backend="torch", precision="fp16", random_init="ebc-tiny-rn")
    with pytest.raises(EngineError, match="does not exist"):
        load_engine(str(tmp_path / "nope.pt"))
    with pytest.raises(EngineError, match="calibrate int8"):
        load_engine(None, backend="onnx", precision="int8", random_init="ebc-tiny-rn",
                    cache_dir=str(tmp_path))
    with pytest.raises(EngineError, match="unknown random_init"):
        load_engine(None, backend="onnx", random_init="no-such-model", cache_dir=str(tmp_path))
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="no CUDA GPU"):
            load_engine(None, backend="torch", device="cuda", random_init="ebc-tiny-rn")
        # auto on a GPU request lists why each backend could not run, and does not quietly
        # fall back to the CPU.
        with pytest.raises(EngineError, match="no backend could run") as err:
            load_engine(None, device="cuda", random_init="ebc-tiny-rn", cache_dir=str(tmp_path))
        assert all(f"{b}:" in str(err.value) for b in ("tensorrt", "onnx", "torch"))


def test_clip_count_prompt_is_baked_in_one_engine_per_prompt(tmp_path: Path) -> None:
    people = load_engine(None, backend="onnx", random_init="count-tiny", max_batch=2,
                         cache_dir=str(tmp_path), threads=1, text_prompt="people")
    # (A multi-token prompt: with the released CLIP-Count text path, one-token class names
    # share one embedding - see engines.models.clip_count.encode_class_prompt.)
    cars = load_engine(None, backend="onnx", random_init="count-tiny", max_batch=2,
                       cache_dir=str(tmp_path), threads=1, text_prompt="red cars on the road")
    assert people.description["text_prompt"] == "people"
    assert cars.description["text_prompt"] == "red cars on the road"
    assert people.engine_id != cars.engine_id and len(list(tmp_path.glob("*.onnx"))) == 2
    x = _tiles(1, people.window)
    assert relative_l2(cars.run(x), people.run(x)) > 1e-3  # the prompt changes the output
    with pytest.raises(EngineError, match="prompt 'red cars on the road' built in"):
        load_engine(cars.description["engine_file"], text_prompt="people")


def test_cuda_graph_batch_sizes() -> None:
    from engines.backends.torch_backend import graph_batch_sizes

    assert graph_batch_sizes(8) == [1, 2, 4, 8]
    assert graph_batch_sizes(6) == [1, 2, 4, 6]
    assert graph_batch_sizes(1) == [1]


def test_torch_engine_layout_and_precision_are_per_engine() -> None:
    """channels_last and the autocast precision are chosen per engine (the GPU check measures
    each on its own): an NCHW engine puts back a model that an NHWC engine converted in place,
    both give the same maps, and half precisions are refused on the CPU."""
    from engines.backends.torch_backend import TorchEngine
    from engines.export import load_source_model

    model, _, _ = load_source_model(None, random_init="ebc-tiny-rn")
    conv = next(m for m in model.modules()
                if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1 and m.in_channels > 1)
    x = _tiles(2, (224, 224))
    nhwc = TorchEngine(model, channels_last=True, max_batch=2)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    maps = nhwc.run(x)
    plain = TorchEngine(model, max_batch=2)  # CPU default: NCHW
    assert conv.weight.is_contiguous()
    assert nhwc.description["channels_last"] and not plain.description["channels_last"]
    assert relative_l2(plain.run(x), maps) < 1e-5
    for precision in ("fp16", "bf16"):
        with pytest.raises(EngineError, match=f"{precision} needs a GPU"):
            TorchEngine(model, precision=precision)
    with pytest.raises(EngineError, match="fp32 .CPU, CUDA. or fp16 / bf16 .CUDA., not int8"):
        TorchEngine(model, precision="int8")


@pytest.mark.filterwarnings("ignore:Specified provider .CUDAExecutionProvider.")
def test_ort_explicit_providers_never_change_quietly(tmp_path: Path) -> None:
    from engines.backends.onnx_backend import OrtEngine

    path = load_engine(None, backend="onnx", random_init="ebc-tiny-rn", max_batch=2, threads=1,
                       cache_dir=str(tmp_path)).description["engine_file"]
    cpu = OrtEngine(path, providers=["CPUExecutionProvider"], threads=1)
    assert cpu.providers == ["CPUExecutionProvider"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():  # the CPU build
        # ORT itself only warns and runs on the CPU: a row or a run asking for CUDA must not
        with pytest.raises(EngineError, match="could not use CUDAExecutionProvider"):
            OrtEngine(path, providers=[("CUDAExecutionProvider", {}), "CPUExecutionProvider"],
                      threads=1)
