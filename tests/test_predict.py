"""engines.predict: any image size, resize rules, windows batched and stitched keeping the count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engines.models import create_model, small_spec
from engines.predict import predict, resize_for

torch.set_num_threads(1)


class LocalCounter(nn.Module):
    """A purely local counting model: count per 8x8 block = mean brightness of the block.

    Its output for a block does not depend on the rest of the window, so tiling with any overlap
    must give exactly what the whole image gives.
    """

    block_size = 8
    window = (64, 96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x.mean(dim=1, keepdim=True), 8)


class NumpyEngine:
    """An engine-shaped wrapper (``run`` on numpy batches) recording the batch sizes it saw."""

    def __init__(self, model: nn.Module, max_batch: int) -> None:
        self.model, self.window, self.block_size, self.max_batch = model, model.window, 8, max_batch
        self.batches: list[int] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.shape[0] <= self.max_batch
        self.batches.append(batch.shape[0])
        with torch.no_grad():
            return self.model(torch.from_numpy(batch)).numpy()


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("shape", [(200, 333), (64, 96), (40, 50), (517, 130)])
def test_tiling_count_equals_whole_image(shape: tuple[int, int], overlap: float) -> None:
    rng = np.random.default_rng(shape[0] + shape[1])
    image = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    dm = predict(LocalCounter(), image, overlap=overlap, batch_size=3)
    h, w = shape
    ph, pw = -(-h // 8) * 8, -(-w // 8) * 8
    padded = np.zeros((ph, pw, 3), np.float32)
    padded[:h, :w] = image / 255.0
    whole = LocalCounter()(torch.from_numpy(padded).permute(2, 0, 1)[None])[0, 0].numpy()
    assert dm.map.shape == (ph // 8, pw // 8) and dm.block_size == 8 and dm.scale == 1.0
    np.testing.assert_allclose(dm.map, whole, rtol=1e-5, atol=1e-6)
    assert dm.count == pytest.approx(float(whole.sum()), rel=1e-5)


def test_engine_batches_respect_max_batch() -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(300, 500, 3), dtype=np.uint8)
    engine = NumpyEngine(LocalCounter(), max_batch=4)
    dm = predict(engine, image, overlap=0.25)
    ref = predict(LocalCounter(), image, overlap=0.25, batch_size=100)
    assert max(engine.batches) == 4 and sum(engine.batches) > 4
    np.testing.assert_allclose(dm.map, ref.map, rtol=1e-6)


def test_tiny_ebc_any_size_and_training_mode_restored() -> None:
    model = create_model(small_spec("ebc-tiny-rn"))
    model.train()
    image = np.random.default_rng(1).integers(0, 256, size=(300, 450, 3), dtype=np.uint8)
    dm = predict(model, image, overlap=0.25)
    assert model.training  # predict ran in eval mode and restored the mode
    assert dm.map.shape == (38, 57) and dm.map.dtype == np.float32
    assert np.isfinite(dm.count) and dm.count > 0 and dm.cell_pixels == 8.0
    # one window exactly: same as calling the model
    crop = image[:224, :224]
    with torch.no_grad():
        model.eval()
        direct = model(torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0)[0, 0].numpy()
    np.testing.assert_allclose(predict(model, crop).map, direct, rtol=1e-5, atol=1e-6)


def test_clip_count_resizes_to_its_height() -> None:
    model = create_model(small_spec("count-tiny")).eval()
    assert resize_for(model.spec, 64, 200) == (128, 400)
    image = np.random.default_rng(2).integers(0, 256, size=(64, 200, 3), dtype=np.uint8)
    dm = predict(model, image, overlap=0.5)
    assert dm.map.shape == (128, 400) and dm.block_size == 1
    assert dm.scale == 2.0 and dm.cell_pixels == 0.5


def test_min_side_upscales() -> None:
    spec = small_spec("ebc-tiny-rn").replace(min_side=224)
    assert resize_for(spec, 100, 300) == (224, 672)
    assert resize_for(spec, 400, 300) == (400, 300)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="H x W x 3"):
        predict(LocalCounter(), np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        predict(LocalCounter(), np.zeros((10, 10, 3), np.float32))
    with pytest.raises(TypeError, match="window/block_size"):
        predict(object(), np.zeros((10, 10, 3), np.uint8))


def test_whole_image_mode() -> None:
    image = np.random.default_rng(3).integers(0, 256, size=(100, 150, 3), dtype=np.uint8)
    local = LocalCounter()
    local.train()
    whole = predict(local, image, whole=True)
    assert local.training
    np.testing.assert_allclose(whole.map, predict(local, image).map, rtol=1e-5, atol=1e-6)
    model = create_model(small_spec("ebc-tiny-rn")).eval()
    dm = predict(model, image, whole=True)  # padded to 112 x 160 (multiples of 16), cropped back
    assert dm.map.shape == (13, 19) and np.isfinite(dm.count)
    with pytest.raises(ValueError, match="CLIP-Count"):
        predict(create_model(small_spec("count-tiny")), image, whole=True)
    with pytest.raises(ValueError, match="torch model"):
        predict(NumpyEngine(local, 2), image, whole=True)


# -- CLIP-Count's official evaluation strip (tiling="clip_count") ---------------------------------


class PixelCounter(nn.Module):
    """A per-pixel, purely local model (block 1): objects per pixel = mean brightness. Windows
    that overlap agree, so the sigmoid blend must give back exactly the local map."""

    block_size = 1
    window = (96, 96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)


class PixelEngine:
    """The same model behind an engine's ``run`` (numpy batches), recording the batch sizes."""

    window, block_size, max_batch = (96, 96), 1, 2

    def __init__(self) -> None:
        self.batches: list[tuple[int, ...]] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.shape)
        return batch.mean(axis=1, keepdims=True)


def _pil_resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))


def test_clip_count_strip_resizes_pads_blends_and_crops() -> None:
    image = np.random.default_rng(4).integers(0, 256, size=(120, 200, 3), dtype=np.uint8)
    dm = predict(PixelCounter(), image, tiling="clip_count")
    # short side to the window height (96), long side int(96 * 200 / 120) = 160, as torchvision
    local = _pil_resize(image, 96, 160).mean(axis=2) / 255.0
    assert dm.map.shape == (96, 160) and dm.block_size == 1 and dm.scale == pytest.approx(0.8)
    np.testing.assert_allclose(dm.map, local, rtol=1e-5, atol=1e-6)  # padding cropped off
    engine = PixelEngine()
    via_engine = predict(engine, image, tiling="clip_count")
    # 160 + (32 - 160 % 32) = 192 padded: windows at 0, 32, 64, 96 -> 4 windows, 2 per batch
    assert [b[0] for b in engine.batches] == [2, 2] and engine.batches[0][1:] == (3, 96, 96)
    np.testing.assert_allclose(via_engine.map, dm.map, rtol=1e-6)


def test_clip_count_strip_turns_portrait_frames_as_the_official_loader() -> None:
    image = np.random.default_rng(5).integers(0, 256, size=(200, 120, 3), dtype=np.uint8)
    dm = predict(PixelCounter(), image, tiling="clip_count")
    turned = _pil_resize(np.ascontiguousarray(np.rot90(image)), 96, 160).mean(axis=2) / 255.0
    assert dm.map.shape == (160, 96)  # back in the frame's orientation
    np.testing.assert_allclose(dm.map, np.rot90(turned, k=-1), rtol=1e-5, atol=1e-6)


def test_clip_count_strip_refuses_what_it_cannot_do() -> None:
    image = np.zeros((50, 80, 3), np.uint8)
    with pytest.raises(ValueError, match="block_size 1"):
        predict(LocalCounter(), image, tiling="clip_count")
    with pytest.raises(ValueError, match="tiling must be one of"):
        predict(PixelCounter(), image, tiling="clipcount")
    with pytest.raises(ValueError, match="exclude each other"):
        predict(PixelCounter(), image, tiling="clip_count", whole=True)
