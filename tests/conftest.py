"""Shared fixtures: where the real data lives, small generated clips."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def data_root() -> Path | None:
    """``$CROWDSTREAM_DATA`` or ``../shared/data`` beside the repo, if present."""
    env = os.environ.get("CROWDSTREAM_DATA")
    p = Path(env) if env else REPO.parent / "shared" / "data"
    return p if p.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("real data not found: set CROWDSTREAM_DATA or put it at ../shared/data")
    return root


@pytest.fixture
def rtsp_server(tmp_path: Path) -> Iterator[Any]:  # yields rtsp_server.RtspServer
    """A real RTSP server (aio-rtsp-toolkit) on 127.0.0.1 looping a generated 2 s H.264 clip.

    ``rtsp_server.url()`` is the camera URL; ``.kill()`` / ``.start()`` / ``.pause()`` /
    ``.resume()`` imitate a dying, returning or hung camera. Stopped after the test.
    """
    from rtsp_server import RtspServer, make_clip  # tests/ is on sys.path (rootdir conftest)

    make_clip(tmp_path / "rtsp" / "cam.mp4", frames=50)
    server = RtspServer(tmp_path / "rtsp", log_path=tmp_path / "rtsp_server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
