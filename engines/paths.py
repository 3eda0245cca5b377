"""Where crowdstream keeps files that outlive a run: the engine cache and pulled models.

One folder, ``$CROWDSTREAM_HOME`` when set, else ``$XDG_CACHE_HOME/crowdstream`` (by default
``~/.cache/crowdstream``). Engines are keyed by the content hash of what they were built from, so
every run directory shares them and a second run never exports again.

Example::

    engine_cache_dir()      # ~/.cache/crowdstream/engines
    models_dir()            # ~/.cache/crowdstream/models
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path


def crowdstream_home() -> Path:
    """The user's crowdstream folder (not created here)."""
    env = os.environ.get("CROWDSTREAM_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "crowdstream"


def engine_cache_dir() -> Path:
    """Exported engines (ONNX, TensorRT plans) with their sidecars, shared by every run
    (``$CROWDSTREAM_ENGINE_CACHE`` moves this folder alone)."""
    env = os.environ.get("CROWDSTREAM_ENGINE_CACHE")
    return Path(env).expanduser() if env else crowdstream_home() / "engines"


def models_dir() -> Path:
    """Checkpoints pulled by ``crowdstream models pull`` and converted to our format."""
    return crowdstream_home() / "models"


_SAFE = re.compile(r"[^\w.-]+")  # letters and digits of any script stay
SAFE_NAME_BYTES = 64  # UTF-8 bytes of a camera's part of a file name (limit: 255 per name)


def cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits ``max_bytes`` (never half a
    character)."""
    return text.encode()[:max_bytes].decode(errors="ignore")


def safe_name(camera: str) -> str:
    """A file-name-safe id for a camera: no separators, no leading dots, no spaces, no control
    characters or symbols; letters and digits of any script kept, at most 64 UTF-8 bytes (cut at
    a character boundary).

    Any id that had to change gets a short hash of the original appended, so two different ids
    never map to the same name ("../x" -> "x-3f2a..."; "lobby 1" -> "lobby_1-..."; "大厅🎥" ->
    "大厅-...").
    """
    s = cut_utf8(_SAFE.sub("_", camera).strip("._-"), SAFE_NAME_BYTES).strip("._-")
    if s == camera and s:
        return s
    return f"{s or 'camera'}-{hashlib.sha1(camera.encode()).hexdigest()[:8]}"
