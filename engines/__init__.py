"""Counting models, engine backends, export and the offline trainer."""

from engines.density import DensityMap
from engines.tiling import TileLayout

__all__ = ["DensityMap", "TileLayout"]
