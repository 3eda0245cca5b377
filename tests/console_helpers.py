"""Helpers of the console tests: a real pipeline on the demo clip (``crowdstream run --live``, its
embedded Redis started by the supervisor), a real ``crowdstream serve`` process, plain HTTP, and
a real headless Chromium driven by Selenium."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEMO_CLIP = REPO / "configs" / "demo" / "mall_demo.mp4"
DEMO_MODEL = REPO / "configs" / "demo" / "mall_demo_model.pt"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1280,900")


def site_config(tmp: Path, cameras: dict[str, Any] | None = None, fps: float = 5.0,
                redis: dict[str, Any] | None = None) -> Path:
    """A run config on the demo clip and model (comments in it, which every write must keep)."""
    cams = cameras or {"mall": {}}
    lines = ["# console test site: this comment must survive every save",
             f"run_dir: {tmp / 'run'}", "model:", f"  checkpoint: {DEMO_MODEL}", "  batch: 4",
             "metrics: {port: null, status_every_s: 2}",
             "runtime: {drain_timeout_s: 2}"]
    if redis:
        lines.append("redis: " + json.dumps(redis))
    lines.append("cameras:")
    for name, extra in cams.items():
        lines.append(f"  {json.dumps(name)}:  # a camera")
        settings = {"url": str(DEMO_CLIP), "fps": fps, **extra}
        for k, v in settings.items():
            lines.append(f"    {k}: {json.dumps(v)}")
    path = tmp / "site.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cli_cmd(*argv: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *argv]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class LiveRun:
    """``crowdstream run CONFIG --live`` in a subprocess (its log in ``log_path``)."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cli_cmd("run", str(config), "--live", "--quiet"), cwd=REPO,
                                     stdout=self._log, stderr=subprocess.STDOUT, env=_env())

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_counting(self, cameras: list[str], timeout: float = 300.0) -> Any:
        """Wait until every camera has a count and a snapshot in Redis; returns a CrowdClient."""
        from pipeline.client import CrowdClient

        end = time.monotonic() + timeout
        client = None
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the run exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            try:
                client = client or CrowdClient.from_config(self.config)
                if all((client.latest(c) or {}).get("snapshot_frame_index") is not None
                       for c in cameras):
                    return client
            except Exception:  # noqa: BLE001 - no server yet
                client = None
            time.sleep(0.5)
        raise TimeoutError(f"no counts within {timeout} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class Serve:
    """``crowdstream serve ... --port 0`` in a subprocess; ``url`` is the URL it printed."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 log_path: Path | None = None, timeout: float = 60.0) -> None:
        self.log_path = log_path
        out = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self._out = out
        self.proc = subprocess.Popen(cli_cmd("serve", *args), cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=out, text=True, env={**_env(), **(env or {})})
        self.url = ""
        end = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"open (http://\S+/)", line)
            if m:
                self.url = m.group(1)
                return
        self.stop()
        raise RuntimeError(f"serve printed no URL (exit {self.proc.poll()})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._out is not subprocess.DEVNULL:
            self._out.close()


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """One real HTTP request: (status, headers, body); a JSON ``body`` sets its content type."""
    data = raw
    hdrs = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def get_json(url: str) -> Any:
    status, _, data = http("GET", url)
    assert status == 200, (url, status, data[:300])
    return json.loads(data)


def sse_events(url: str, seconds: float, stop_when: Any = None) -> list[dict[str, Any]]:
    """Events read from a server-sent events URL for ``seconds`` (or until ``stop_when(ev)``)."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    events: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    with socket.create_connection((u.hostname, u.port), timeout=2) as s:
        s.sendall(f"GET {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nAccept: text/event-stream\r\n"
                  f"\r\n".encode())
        buf = b""
        while time.monotonic() < end:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        ev = json.loads(line[6:])
                        events.append(ev)
                        if stop_when is not None and stop_when(ev):
                            return events
    return events


def chromium(profile: Path) -> Any:
    """A real headless Chromium (Debian's) driven by Selenium, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def have_chromium() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()
