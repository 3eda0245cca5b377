"""Drawing primitives: text readable on any background, fixed colour scales, the overlay."""

from __future__ import annotations

import numpy as np

from engines.draw import colorize, draw_text, legend
from pipeline.overlay import AlertView, OverlayView, ZoneView, render_overlay


def _span(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())


def _drawn(background: int) -> np.ndarray:
    img = np.full((60, 320, 3), background, np.uint8)
    draw_text(img, "9.3 count 12.5", (6, 40), scale=0.8)
    return img[..., 0].astype(int)


def test_text_has_an_outline_of_the_same_glyphs_on_any_background() -> None:
    """OpenCV 5 draws glyphs of another width at another thickness: drawing the text black and
    thick, then white and thin, left no outline at all (white text vanished on white) or ghost
    characters. The outline must wrap the very glyphs that are filled, on any background."""
    grey = _drawn(128)
    lx0, lx1, ly0, ly1 = _span(grey > 220)
    dx0, dx1, dy0, dy1 = _span(grey < 35)
    assert dx0 < lx0 and dx1 > lx1 and dy0 < ly0 and dy1 > ly1  # wrapped on every side
    assert (lx0 - dx0) <= 4 and (dx1 - lx1) <= 4  # tightly: no glyph of the outline sticks out
    # readable on black and on white: the same glyphs, the same outline (anti-aliasing: 1 px)
    assert np.allclose(_span(_drawn(0) > 220), (lx0, lx1, ly0, ly1), atol=1)
    assert np.allclose(_span(_drawn(255) < 35), (dx0, dx1, dy0, dy1), atol=1)


def test_text_is_clipped_at_the_image_border() -> None:
    img = np.zeros((20, 40, 3), np.uint8)
    draw_text(img, "a long label that does not fit", (30, 15), scale=0.6)
    draw_text(img, "off", (-500, -500), scale=0.6)  # entirely outside: nothing drawn, no error
    assert img.any()


def test_colour_scale_is_fixed_not_per_frame() -> None:
    few = np.full((4, 4), 0.05, np.float32)
    crowd = np.full((4, 4), 2.0, np.float32)
    c_few, a_few = colorize(few, vmax=2.0)
    c_crowd, a_crowd = colorize(crowd, vmax=2.0)
    assert a_few.max() < 0.2 < 0.99 < a_crowd.min()  # an almost empty frame stays see-through
    assert not np.array_equal(c_few, c_crowd)
    assert legend(80, 4.0, "p/m2").shape[0] == 80


def test_overlay_strips_sit_off_the_scene_and_show_current_values() -> None:
    frame = np.full((240, 320, 3), 90, np.uint8)
    view = OverlayView(camera="lobby", ts=0.0, count=7.5,
                       density=np.zeros((30, 40), np.float32),
                       zones=[ZoneView("door", [(0.1, 0.5), (0.5, 0.5), (0.5, 0.9)], 2.5)],
                       alerts=[AlertView("crowded", "critical", "count", 7.5, 5.0)])
    out = render_overlay(frame, view)
    assert out.shape[1] == 320 and out.shape[0] > 240 and out.shape[0] % 2 == 0
    header = int(np.argmax(out[:, -1, 0] == 90))  # first row of the scene
    assert header > 0 and (out[:header, -1] == 0).all()  # the header strip above it
    # the scene itself is untouched away from the zone, its label and the legend
    scene = out[header:header + 240]
    assert (scene[:100, 200:] == 90).all()
    # the critical banner is the last strip, below the scene, red
    assert tuple(out[-2, -2]) == (0, 0, 210)
