"""The pipeline's stage processes: tile (cut + batch), inference (engine), post (stitch, smooth,
sinks). Each module's ``main`` is a spawned process's target (started through
``pipeline.process.spawn_child``, which names it, leaves Ctrl-C to the supervisor, sets up logging
and watches the parent); ``StageArgs`` is what they share.

Example::

    spawn_child(ctx, ChildSpec("tile", "pipeline.stages.tile:main", stop), stage_args)
"""

from pipeline.stages.common import StageArgs

__all__ = ["StageArgs"]
