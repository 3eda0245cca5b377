"""Shared fixtures: where the real data lives, small generated clips."""

from __future__ import annotations

import os
from pathlib import Path

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
