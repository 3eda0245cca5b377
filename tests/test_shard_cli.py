"""``--shard`` on the command line: the assignment printed by ``config validate --shards``, a bad
spec as a one-line error, and a worker whose shard owns no camera idling until it is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.shard import assign, shard_of

REPO = Path(__file__).resolve().parent.parent
CAMS = [f"gate-{i}" for i in range(12)]


def site(tmp: Path) -> Path:
    doc = {"run_dir": str(tmp / "run"), "redis": {"enabled": False},
           "metrics": {"port": None, "status_every_s": 0.5},
           "model": {"random_init": "ebc-tiny-rn", "backend": "torch"},
           "cameras": {c: f"rtsp://user:s3cret@10.0.0.{i}/stream" for i, c in enumerate(CAMS)}}
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_config_validate_prints_the_assignment(tmp_path: Path) -> None:
    p = cli("config", "validate", str(site(tmp_path)), "--shards", "4")
    assert p.returncode == 0, p.stderr
    assert "s3cret" not in p.stdout  # camera URLs are shown redacted
    for index, cams in assign(CAMS, 4).items():
        shown = ", ".join(cams) if cams else "(none: idles)"
        assert f"shard {index}/4: {len(cams)} camera(s): {shown}" in p.stdout
    moved = sum(shard_of(c, 4) != shard_of(c, 5) for c in CAMS)
    assert f"moves {moved} of 12 camera(s)" in p.stdout


def test_bad_shard_specs_are_one_line_errors(tmp_path: Path) -> None:
    cfg = str(site(tmp_path))
    for spec, msg in (("5/3", "--shard: shard index 5 is not in 0..2"),
                      ("1-3", "--shard: expected I/N (e.g. 0/3) or auto/N, got '1-3'")):
        p = cli("run", cfg, "--shard", spec)
        assert p.returncode == 2 and msg in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
    p = cli("config", "validate", cfg, "--shards", "0")
    assert p.returncode == 2 and "--shards: must be >= 1, got 0" in p.stderr


def test_a_shard_without_cameras_idles_until_stopped(tmp_path: Path) -> None:
    cfg = tmp_path / "one.yaml"
    doc = yaml.safe_load(site(tmp_path).read_text())
    doc["cameras"] = {"lonely": "rtsp://10.0.0.1/stream"}
    cfg.write_text(yaml.safe_dump(doc))
    idle = next(i for i in range(3) if shard_of("lonely", 3) != i)
    p = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--shard",
                          f"{idle}/3", "--quiet"], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert p.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            lines.append(line)
            if "idle until stopped" in line:
                break
        assert f"shard {idle}/3 owns none of the 1 enabled camera(s)" in "".join(lines)
        time.sleep(1.0)
        assert p.poll() is None, "an idle shard must keep running (a pod that exits restarts)"
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
        rest = p.stdout.read()
        assert "Traceback" not in "".join(lines) + rest
        assert not any(n.startswith(f"cs_{p.pid}_") for n in os.listdir("/dev/shm"))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
