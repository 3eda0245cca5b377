"""A real RTSP server on 127.0.0.1 for tests and the soak benchmark.

PyAV and ffmpeg cannot serve RTSP to a pulling client, so this runs ``aio-rtsp-toolkit``'s
server (pure Python + PyAV, RTSP over TCP) in a child process that can be killed, restarted on
the same port, or frozen with SIGSTOP to imitate a hung camera. A file ``D/cam.mp4`` is served
as ``rtsp://127.0.0.1:PORT/cam.mp4?play_count=0`` (``play_count=0``: loop forever).

Also a small clip generator, so fixtures need no data files.

Example::

    make_clip(tmp / "srv" / "cam.mp4", frames=50)
    with RtspServer(tmp / "srv", log_path=tmp / "rtsp.log") as srv:
        url = srv.url("cam.mp4")
        srv.kill(); srv.start()       # the same port again

Run as a script it is the server itself: ``python tests/rtsp_server.py --dir D --port P``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import numpy as np


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_clip(path: str | Path, frames: int = 50, width: int = 320, height: int = 240,
              fps: int = 25, gop: int = 25, moving: bool = True) -> Path:
    """Write a small H.264 MP4 with one slice per frame (as IP cameras send).

    Each frame is distinct (a bar moves, brightness ramps), so frames can be told apart.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.options = {"g": str(gop), "preset": "ultrafast", "tune": "zerolatency",
                      "x264-params": "sliced-threads=0:slices=1", "bf": "0"}
        for i in range(frames):
            img = np.full((height, width, 3), 40, np.uint8)
            img[..., 2] = (i * 7) % 256
            if moving:
                y = (i * 4) % max(height - 16, 1)
                img[y:y + 16, :, 1] = 255
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return path


class RtspServer:
    """Controls one ``aio-rtsp-toolkit`` server child process serving a directory."""

    def __init__(self, directory: str | Path, port: int | None = None,
                 log_path: str | Path | None = None) -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str = "cam.mp4", loop: bool = True) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{name}" + ("?play_count=0" if loop else "")

    def start(self, ready_timeout_s: float = 10.0) -> RtspServer:
        """Start (or restart) the server and wait until it accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--dir", str(self.directory),
             "--port", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if log is not subprocess.DEVNULL:
            log.close()
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"RTSP server exited with {self.proc.returncode} "
                                   f"(log: {self.log_path})")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"RTSP server did not listen on port {self.port} "
                           f"within {ready_timeout_s} s")

    def kill(self) -> None:
        """SIGKILL the server, as a crashed camera would vanish."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process cannot die until resumed
            self.proc.kill()
            self.proc.wait(5)

    def pause(self) -> None:
        """SIGSTOP: the TCP connection stays open but no byte arrives (a hung camera)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.kill()
        self.proc = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _serve(directory: str, host: str, port: int) -> None:
    import asyncio

    from aio_rtsp_toolkit.server import serve

    # no control port: the toolkit's voice-control HTTP server is not needed and would need a
    # second free port
    asyncio.run(serve(directory, host, port, control_port=None))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="serve a directory over RTSP (aio-rtsp-toolkit)")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    _serve(a.dir, a.host, a.port)
