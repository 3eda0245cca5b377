"""The operator console and HTTP API behind ``crowdstream serve``.

It reads only from Redis, through ``pipeline.client.CrowdClient`` (so one console watches the
pipelines of many hosts and never slows counting), and writes only what an operator asks for:
zones and calibration into the run config (the comment-keeping writer, checked like ``config
validate``), labels into the run directory, and reload requests on the Redis control stream.

Modules: ``source`` (where the data comes from: Redis and the config file), ``hub`` (one thread
following every camera's streams, fanning out server-sent events), ``series`` (counts down-sampled
for charts), ``pictures`` (snapshot, heatmap and overlay images), ``security`` (token, rates,
sizes, host and origin checks), ``app`` (the FastAPI routes), ``static/`` (the pages: plain
HTML/CSS/ES modules, no build step).

Example::

    from pipeline.web.app import create_app
    from pipeline.web.source import DataSource
    app = create_app(DataSource.from_config("configs/demo.yaml"))
    # uvicorn.run(app, host="127.0.0.1", port=8765)
"""
