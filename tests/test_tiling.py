import numpy as np
import pytest

from engines.tiling import TileLayout


@pytest.mark.parametrize("h,w,overlap", [(480, 640, 0.0), (1080, 1920, 0.25), (100, 90, 0.5), (385, 777, 0.3)])
def test_windows_cover_frame_and_stay_on_grid(h: int, w: int, overlap: float) -> None:
    lay = TileLayout.plan(h, w, window=(224, 224), block=8, overlap=overlap)
    covered = np.zeros((lay.padded_height, lay.padded_width), bool)
    for y, x in lay.positions:
        assert y % 8 == 0 and x % 8 == 0
        assert y + 224 <= lay.padded_height and x + 224 <= lay.padded_width
        covered[y : y + 224, x : x + 224] = True
    assert covered[:h, :w].all()


def test_stitch_preserves_count_of_a_consistent_map() -> None:
    rng = np.random.default_rng(0)
    lay = TileLayout.plan(480, 640, window=(224, 224), block=8, overlap=0.3)
    truth = rng.random(lay.map_shape).astype(np.float32)
    full = np.zeros((lay.padded_height // 8, lay.padded_width // 8), np.float32)
    full[: truth.shape[0], : truth.shape[1]] = truth
    tiles = np.stack([full[y // 8 : y // 8 + 28, x // 8 : x // 8 + 28] for y, x in lay.positions])
    merged = lay.stitch(tiles)
    np.testing.assert_allclose(merged, truth, rtol=1e-6)
    assert merged.sum() == pytest.approx(truth.sum(), rel=1e-6)


def test_cut_writes_rgb_in_unit_range_into_given_buffer() -> None:
    frame = np.zeros((50, 60, 3), np.uint8)
    frame[..., 0] = 255  # blue in BGR
    lay = TileLayout.plan(50, 60, window=(64, 64), block=8)
    buf = np.full((4, 3, 64, 64), 7.0, np.float32)
    tiles = lay.cut(frame, out=buf, bgr=True)
    assert tiles.shape == (1, 3, 64, 64) and np.shares_memory(tiles, buf)
    assert tiles[0, 2, :50, :60].min() == 1.0 and tiles[0, 0].max() == 0.0
    assert tiles[0, :, 50:, :].max() == 0.0  # padding is zero


def test_bad_window_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of the block size"):
        TileLayout.plan(100, 100, window=(100, 100), block=8)


def test_plan_is_one_memoised_layout_per_geometry() -> None:
    """The tile and post stages (and predict, calibration) share one cache: same geometry, however
    spelled, gives the same immutable layout; another geometry another one."""
    lay = TileLayout.plan(720, 1280, window=(224, 224), block=8, overlap=0.25)
    assert TileLayout.plan(np.int64(720), 1280, [224, 224], np.int32(8), 0.25) is lay
    assert TileLayout.plan(720, 1280, window=(224, 224), block=8) is not lay
    assert TileLayout.plan(720, 1280, window=(224, 224), block=8).count < lay.count
    with pytest.raises(ValueError, match="overlap must be in"):
        TileLayout.plan(720, 1280, window=(224, 224), block=8, overlap=1.0)


# -- CLIP-Count's evaluation strip -----------------------------------------------------------------


def test_strip_plan_pads_right_by_stride_minus_remainder() -> None:
    from engines.tiling import strip_plan

    # 1000 % 128 = 104: pad 24 -> 1024; windows of 384 every 128 end exactly at the border
    assert strip_plan(1000, 384, 128) == (1024, [0, 128, 256, 384, 512, 640])
    # a multiple of the stride is padded by a whole stride (the official code always pads)
    assert strip_plan(1024, 384, 128) == (1152, [0, 128, 256, 384, 512, 640, 768])
    assert strip_plan(200, 384, 128) == (384, [0])  # narrower than a window: one window
    with pytest.raises(ValueError, match="multiple of the stride"):
        strip_plan(500, 384, 100)


def test_strip_blend_keeps_a_constant_map_constant() -> None:
    from engines.tiling import strip_blend

    maps = np.full((6, 1, 384, 384), 2.5, np.float32)
    out = strip_blend(maps, 128)
    assert out.shape == (384, 384 + 5 * 128) and out.dtype == np.float32
    np.testing.assert_allclose(out, 2.5, rtol=1e-6)


def test_strip_blend_matches_a_hand_computed_case() -> None:
    """Window 6, stride 2: each new window blends the composite's last 4 columns with
    r = sigmoid(linspace(-3, 3, 4)) = sigmoid(-3, -1, 1, 3); blended columns blend again."""
    from engines.tiling import sigmoid_ramp, strip_blend

    r0, r1, r2, r3 = 0.04742587, 0.26894142, 0.73105858, 0.95257413
    np.testing.assert_allclose(sigmoid_ramp(4), [r0, r1, r2, r3], rtol=1e-6)
    maps = np.stack([np.full((1, 6), v, np.float32) for v in (0.0, 1.0, 3.0)])
    want = [0, 0,                                 # window 0 alone
            r0, r1,                               # windows 0|1 blended once
            (1 - r0) * r2 + 3 * r0, (1 - r1) * r3 + 3 * r1,  # blended again with window 2
            (1 - r2) * 1 + 3 * r2, (1 - r3) * 1 + 3 * r3,    # window 1 alone, blended with 2
            3, 3]                                 # window 2 alone
    np.testing.assert_allclose(strip_blend(maps, 2)[0], want, rtol=1e-6, atol=1e-7)
