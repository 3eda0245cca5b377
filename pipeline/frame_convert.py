"""Decoded frame -> BGR24 written straight into a caller's buffer (a shared-memory ring slot).

PyAV's ``frame.to_ndarray(format="bgr24")`` lets libswscale write into a buffer PyAV allocates
for every frame; handing that to a ``FrameRing`` costs one more 6 MB copy per 1080p frame
(11-19% of decode + convert on the development machine, see benchmarks/RESULTS.md). This
module drives *the same libswscale PyAV loaded* through ctypes so the conversion lands in the
slot itself: same algorithm, same flags, and each new stream geometry / colour setup is checked
once to be byte-identical to ``to_ndarray`` before it is trusted. Anything it cannot match
(no libswscale found, unusual formats, a failed check) goes through PyAV and one copy, so the
result is always what PyAV would give.

Example::

    conv = BgrWriter()
    slot, view = ring.reserve(frame.height, frame.width)
    conv(frame, view)                    # view: (h, w, 3) uint8, C-contiguous
    ring.commit(slot, meta)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engines.log import get_logger

if TYPE_CHECKING:
    import av.video.frame

SWS_BILINEAR = 2  # PyAV's default interpolation for reformat / to_ndarray

# AVColorSpace (frame.colorspace) -> SWS_CS_* coefficient table; unspecified -> swscale's
# default (ITU-R 601), exactly what PyAV's reformat ends up using for untagged frames
_SWS_CS = {0: 5, 1: 1, 2: 5, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
_RANGE_JPEG = 2


def _find_swscale() -> tuple[str, str] | None:
    """Paths of the libswscale and libavutil PyAV itself uses (None if not found).

    PyAV's wheels keep their FFmpeg beside the package (``av.libs``, ``av/.dylibs``); that copy
    is preferred, because other packages (OpenCV's wheels) may load an FFmpeg of their own.
    A PyAV built against a system FFmpeg falls back to what is mapped into this process, then to
    the linker's search.
    """
    import av

    libs = ("libswscale", "libavutil")
    found: dict[str, str] = {}
    base = Path(av.__file__).resolve().parent
    for lib in libs:
        hits = sorted(glob.glob(str(base.parent / "av.libs" / f"{lib}*"))
                      + glob.glob(str(base / ".dylibs" / f"{lib}*")))
        if hits:
            found[lib] = hits[0]
    if len(found) < 2:
        try:  # Linux: the libraries really mapped into this process
            for line in Path("/proc/self/maps").read_text().splitlines():
                path = line.split()[-1] if "/" in line else ""
                for lib in libs:
                    if os.path.basename(path).startswith(lib) and lib not in found:
                        found[lib] = path
        except OSError:
            pass
    for lib in libs:
        if lib not in found and (name := ctypes.util.find_library(lib.removeprefix("lib"))):
            found[lib] = name
    if all(lib in found for lib in libs):
        return found["libswscale"], found["libavutil"]
    return None


class _Sws:
    """The few libswscale / libavutil entry points used, typed for ctypes."""

    def __init__(self, sws_path: str, util_path: str) -> None:
        self.sws = ctypes.CDLL(sws_path)
        self.util = ctypes.CDLL(util_path)
        u, s = self.util, self.sws
        u.av_get_pix_fmt.restype = ctypes.c_int
        u.av_get_pix_fmt.argtypes = [ctypes.c_char_p]
        u.av_opt_set_int.restype = ctypes.c_int
        u.av_opt_set_int.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64,
                                     ctypes.c_int]
        s.sws_alloc_context.restype = ctypes.c_void_p
        s.sws_alloc_context.argtypes = []
        s.sws_init_context.restype = ctypes.c_int
        s.sws_init_context.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        s.sws_freeContext.restype = None
        s.sws_freeContext.argtypes = [ctypes.c_void_p]
        s.sws_getCoefficients.restype = ctypes.POINTER(ctypes.c_int)
        s.sws_getCoefficients.argtypes = [ctypes.c_int]
        s.sws_setColorspaceDetails.restype = ctypes.c_int
        s.sws_setColorspaceDetails.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int,
            ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        ptrs, ints = ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int)
        s.sws_scale.restype = ctypes.c_int
        s.sws_scale.argtypes = [ctypes.c_void_p, ptrs, ints, ctypes.c_int, ctypes.c_int, ptrs,
                                ints]
        self.bgr24 = u.av_get_pix_fmt(b"bgr24")
        if self.bgr24 < 0:
            raise OSError("libavutil does not know bgr24")

    def context(self, w: int, h: int, src_fmt: int, cs: int, full_range: bool,
                threads: int) -> int:
        ctx = self.sws.sws_alloc_context()
        if not ctx:
            raise MemoryError("sws_alloc_context")
        opts = {"srcw": w, "srch": h, "src_format": src_fmt, "dstw": w, "dsth": h,
                "dst_format": self.bgr24, "sws_flags": SWS_BILINEAR, "threads": threads}
        for k, v in opts.items():
            if self.util.av_opt_set_int(ctx, k.encode(), v, 0) < 0:
                self.free(ctx)
                raise OSError(f"libswscale rejected {k}={v}")
        if self.sws.sws_init_context(ctx, None, None) < 0:
            self.free(ctx)
            raise OSError("sws_init_context failed")
        coef = self.sws.sws_getCoefficients(cs)
        # brightness 0, contrast and saturation 1.0 (16.16 fixed point): swscale's defaults
        self.sws.sws_setColorspaceDetails(ctx, coef, int(full_range), coef, 1, 0, 1 << 16,
                                          1 << 16)
        return int(ctx)

    def free(self, ctx: int) -> None:
        self.sws.sws_freeContext(ctx)


class BgrWriter:
    """Convert decoded frames to BGR24 into a given ``(h, w, 3)`` uint8 C-contiguous buffer.

    ``direct_frames`` / ``pyav_frames`` count which path each frame took.
    """

    def __init__(self, direct: bool = True, camera: str | None = None, threads: int = 0) -> None:
        self.threads = threads  # swscale slice threads, 0 = automatic (PyAV's default)
        self.log = get_logger("convert", camera=camera) if camera else get_logger("convert")
        self.direct_frames = 0
        self.pyav_frames = 0
        self._sws: _Sws | None = None
        self._ctx: dict[tuple[Any, ...], int | None] = {}  # None: checked, does not match PyAV
        if direct:
            try:
                paths = _find_swscale()
                self._sws = _Sws(*paths) if paths else None
            except OSError as e:
                self.log.warning("direct conversion unavailable", error=str(e))
        if direct and self._sws is None:
            self.log.warning("libswscale not found; converting through PyAV plus one copy")

    @property
    def direct(self) -> bool:
        return self._sws is not None

    def __call__(self, frame: av.video.frame.VideoFrame, out: np.ndarray) -> None:
        h, w = frame.height, frame.width
        if out.shape != (h, w, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"expected a C-contiguous ({h}, {w}, 3) uint8 buffer, got "
                             f"{out.dtype} {out.shape}")
        ctx = self._context(frame) if self._sws is not None else None
        if ctx is None:
            self.pyav_frames += 1
            np.copyto(out, frame.to_ndarray(format="bgr24"))
            return
        self._scale(ctx, frame, out)
        self.direct_frames += 1

    def _key(self, frame: av.video.frame.VideoFrame) -> tuple[Any, ...]:
        return (frame.width, frame.height, frame.format.name, frame.colorspace,
                frame.color_range)

    def _context(self, frame: av.video.frame.VideoFrame) -> int | None:
        key = self._key(frame)
        if key in self._ctx:
            return self._ctx[key]
        ctx = self._make_checked(frame)
        self._ctx[key] = ctx
        return ctx

    def _make_checked(self, frame: av.video.frame.VideoFrame) -> int | None:
        """A context for this geometry/colour setup if its output equals PyAV's, else None."""
        assert self._sws is not None
        w, h, fmt_name, cs, rng = self._key(frame)
        fmt = self._sws.util.av_get_pix_fmt(fmt_name.encode())
        if fmt < 0 or cs not in _SWS_CS or frame.format.is_bit_stream:
            return None
        try:
            ctx = self._sws.context(w, h, fmt, _SWS_CS[cs], rng == _RANGE_JPEG, self.threads)
        except OSError as e:
            self.log.info("direct conversion not used", format=fmt_name, reason=str(e))
            return None
        ref = frame.to_ndarray(format="bgr24")
        test = np.empty((h, w, 3), np.uint8)
        self._scale(ctx, frame, test)
        if not np.array_equal(ref, test):
            self._sws.free(ctx)
            self.log.info("direct conversion not used", format=fmt_name, colorspace=cs,
                          range=rng, reason="output differs from PyAV's")
            return None
        return ctx

    def _scale(self, ctx: int, frame: av.video.frame.VideoFrame, out: np.ndarray) -> None:
        planes = frame.planes
        n = len(planes)
        src = (ctypes.c_void_p * 4)(*[p.buffer_ptr for p in planes], *([None] * (4 - n)))
        sstride = (ctypes.c_int * 4)(*[p.line_size for p in planes], *([0] * (4 - n)))
        dst = (ctypes.c_void_p * 4)(out.ctypes.data, None, None, None)
        dstride = (ctypes.c_int * 4)(out.shape[1] * 3, 0, 0, 0)
        assert self._sws is not None
        got = self._sws.sws.sws_scale(ctx, src, sstride, 0, frame.height, dst, dstride)
        if got != frame.height:
            raise RuntimeError(f"sws_scale wrote {got} of {frame.height} rows")

    def close(self) -> None:
        if self._sws is not None:
            for ctx in self._ctx.values():
                if ctx:
                    self._sws.free(ctx)
        self._ctx.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the libraries may be gone already
            pass


__all__ = ["BgrWriter"]
