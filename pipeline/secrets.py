"""What in a run config is secret, so that ``engines.redact`` masks it in every process.

Camera URL passwords, the Redis password (the environment variable ``redis.password_env``
names, or one inside ``redis.url``), the webhook URL's path and its header values are
registered by the run's first process before it logs anything; every child it starts receives
them through ``pipeline.process.ChildSpec``.

Example::

    register_config_secrets(load_config("site.yaml"))
    log.info("camera", url=cam.url)          # rtsp://admin:***@10.0.0.5/1
"""

from __future__ import annotations

import os
from typing import Any

from engines.redact import register_secret, url_secrets


def config_secrets(cfg: Any) -> list[str]:
    """Secret values held by (or named by) a ``pipeline.config.AppConfig``."""
    found: list[str] = []
    for cam in cfg.cameras.values():
        found += url_secrets(cam.url)
    r = cfg.redis
    if r.url:
        found += url_secrets(r.url)
    for env in (r.password_env,):
        if env and os.environ.get(env):
            found.append(os.environ[env])
    if cfg.webhook is not None:
        found += url_secrets(cfg.webhook.url)
        found += [v.split(" ", 1)[-1] for v in cfg.webhook.headers.values()]
    return [s for s in found if s]


def register_config_secrets(cfg: Any) -> None:
    """Register every secret of ``cfg`` with ``engines.redact`` (this process only)."""
    for s in config_secrets(cfg):
        register_secret(s)

