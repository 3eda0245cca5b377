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


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Engines and pulled models go to a folder of this test session, never ~/.cache: a test
    must not reuse what another run exported (or leave files in the user's cache)."""
    old = {k: os.environ.get(k) for k in ("CROWDSTREAM_HOME", "CROWDSTREAM_ENGINE_CACHE")}
    os.environ["CROWDSTREAM_HOME"] = str(tmp_path_factory.mktemp("crowdstream_home"))
    os.environ.pop("CROWDSTREAM_ENGINE_CACHE", None)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


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


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Any]:  # yields pipeline.local_cluster.LocalCluster
    """A real 3-primary Valkey cluster with one replica each on 127.0.0.1 (stopped after)."""
    from pipeline.local_cluster import LocalCluster

    cl = LocalCluster(tmp_path / "cluster", primaries=3, replicas=1, node_timeout_ms=1000)
    cl.start(timeout=60)
    try:
        yield cl
    finally:
        cl.stop()
