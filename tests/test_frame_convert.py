"""BgrWriter: libswscale straight into a caller's buffer, byte-identical to PyAV's to_ndarray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.frame_convert import BgrWriter


def _clip(path: Path, pix_fmt: str, **colour: int) -> Path:
    import av

    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 160, 120, pix_fmt
        st.options = {"preset": "ultrafast"}
        for k, v in colour.items():
            setattr(st.codec_context, k, v)
        for i in range(4):
            img = np.random.default_rng(i).integers(0, 256, (120, 160, 3), np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=pix_fmt)
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


@pytest.mark.parametrize("pix_fmt,colour,direct", [
    ("yuv420p", {}, True),  # untagged, limited range: what most cameras send
    ("yuv420p", {"colorspace": 1, "color_range": 1}, True),  # BT.709 tagged (HD cameras)
    ("yuvj420p", {"color_range": 2}, True),  # full range (many IP cameras' MJPEG/H.264)
    ("yuv444p", {}, True),
    ("yuv420p10le", {}, False),  # not matched byte for byte: falls back to PyAV
])
def test_same_bytes_as_pyav(tmp_path: Path, pix_fmt: str, colour: dict[str, int],
                            direct: bool) -> None:
    import av

    clip = _clip(tmp_path / f"{pix_fmt}.mp4", pix_fmt, **colour)
    conv = BgrWriter()
    assert conv.direct  # PyAV's own libswscale was found and loaded
    n = 0
    with av.open(str(clip)) as c:
        for f in c.decode(video=0):
            out = np.full((f.height, f.width, 3), 7, np.uint8)
            conv(f, out)
            assert np.array_equal(out, f.to_ndarray(format="bgr24"))
            n += 1
    assert n == 4
    assert (conv.direct_frames, conv.pyav_frames) == ((4, 0) if direct else (0, 4))
    conv.close()


def test_writes_into_a_view_of_a_larger_buffer_and_checks_it(tmp_path: Path) -> None:
    import av

    clip = _clip(tmp_path / "a.mp4", "yuv420p")
    slots = np.zeros(2 * 120 * 160 * 3 + 64, np.uint8)  # like a ring: slots in one segment
    view = slots[64:64 + 120 * 160 * 3].reshape(120, 160, 3)
    conv = BgrWriter()
    with av.open(str(clip)) as c:
        f = next(c.decode(video=0))
        conv(f, view)
        assert np.array_equal(view, f.to_ndarray(format="bgr24"))
        assert not slots[:64].any() and not slots[64 + view.size:].any()  # nothing outside
        with pytest.raises(ValueError, match=r"C-contiguous \(120, 160, 3\) uint8"):
            conv(f, np.empty((120, 161, 3), np.uint8))
        with pytest.raises(ValueError, match="C-contiguous"):
            conv(f, np.empty((120, 320, 3), np.uint8)[:, ::2])


def test_pyav_only_mode(tmp_path: Path) -> None:
    import av

    clip = _clip(tmp_path / "a.mp4", "yuv420p")
    conv = BgrWriter(direct=False)
    with av.open(str(clip)) as c:
        f = next(c.decode(video=0))
        out = np.empty((120, 160, 3), np.uint8)
        conv(f, out)
    assert np.array_equal(out, f.to_ndarray(format="bgr24"))
    assert not conv.direct and conv.pyav_frames == 1
