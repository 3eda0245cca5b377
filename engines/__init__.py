"""The bottom layer: counting models, tiling, density maps, checkpoints, engine backends, export,
the offline trainer, and the shared foundations (structured logging ``engines.log``, typed YAML
``engines.yamlconfig``, video decoding ``engines.video``, user folders ``engines.paths``).

May import: nothing of crowdstream outside ``engines`` (``calibrate`` and ``pipeline`` build on
it; ``tests/test_layers.py`` enforces this).

Example::

    from engines.models import create_model, small_spec
    from engines.predict import predict
    dm = predict(create_model(small_spec("ebc-tiny-rn")), frame_rgb)   # a DensityMap
"""

from engines.density import DensityMap
from engines.tiling import TileLayout

__all__ = ["DensityMap", "TileLayout"]
