"""The top layer: the real-time runtime (supervisor, ingest / tile / inference / post stages over
shared memory), the outputs (Redis, JSON lines, zones, alerts, recording), the run config, the
Redis client and every command line (``pipeline.cli``, one module per command in
``pipeline.commands``).

May import: ``engines`` and ``calibrate`` (nothing imports ``pipeline``; ``tests/test_layers.py``
enforces this).

Example::

    from pipeline.config import load_config
    from pipeline.supervisor import Supervisor
    exit_code = Supervisor(load_config("configs/demo.yaml")).run()
"""
