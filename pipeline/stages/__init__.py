"""The pipeline's stage processes: tile (cut + batch), inference (engine), post (stitch, smooth,
sinks). Each module's ``main`` is a spawned process's entry point; ``StageArgs`` is what they share.

Example::

    ctx.Process(target=pipeline.stages.tile.main, args=(stage_args,)).start()
"""

from pipeline.stages.common import StageArgs

__all__ = ["StageArgs"]
