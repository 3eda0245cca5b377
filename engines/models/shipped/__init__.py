"""Models that ship inside the package: the general people-counting model every camera uses
when its config names no model (``general.pt``, trained here by ``crowdstream train
configs/train_general.yaml``; its model card is in the checkpoint: ``crowdstream models info``).

Example::

    path = general_model_path()      # .../engines/models/shipped/general.pt
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

GENERAL = "general.pt"


def general_model_path() -> Path:
    """Where the shipped general model lies (it may be missing from a source tree that has not
    been given one: callers say so)."""
    return Path(str(resources.files(__name__).joinpath(GENERAL)))
