"""The one progress display: a live region in a real 80-column pseudo-terminal with log lines (of
this process and of a child process) scrolling above it, and plain lines when not a terminal."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from engines.progress import Progress, format_eta

REPO = Path(__file__).resolve().parent.parent
CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

SCRIPT = r"""
import subprocess, sys
from engines.log import get_logger
from engines.progress import Progress

log = get_logger("t")
p = Progress(total=10, label="files", every_s=0.0)
assert p.live, "a pty is a terminal"
for i in range(10):
    p.update(done=i + 1, info="info " + "i" * 120, lines=["cam " + "x" * 150, "short"])
    log.info(f"LOG-self-{i}")
    subprocess.run([sys.executable, "-c", f"import sys; sys.stderr.write('LOG-child-{i}\\n')"])
p.close(["FINAL line"])
print("stdout untouched", flush=True)
"""


def _run_in_pty(script: Path, cols: int, rows: int = 24, timeout: float = 60.0) -> str:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(script)], stdin=slave, stdout=slave,
                            stderr=slave, env=env, cwd=REPO)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(10) == 0, out.decode(errors="replace")[-3000:]
    return out.decode("utf-8", errors="replace")


def test_live_region_fits_80_columns_and_logs_scroll_above(tmp_path: Path) -> None:
    script = tmp_path / "show.py"
    script.write_text(SCRIPT)
    raw = _run_in_pty(script, cols=80)
    lines = [ln for ln in re.split(r"[\r\n]", CSI.sub("", raw)) if ln.strip()]
    too_wide = [ln for ln in lines if len(ln) > 80]
    assert not too_wide, too_wide
    # every log line, ours and the child's, is a line of its own: nothing glued to the status
    logs = [ln for ln in lines if "LOG-" in ln]
    assert {re.search(r"LOG-\w+-\d", ln).group(0) for ln in logs} == {
        f"LOG-{who}-{i}" for who in ("self", "child") for i in range(10)}
    for ln in logs:
        assert re.fullmatch(r"(\d\d:\d\d:\d\d INFO crowdstream\.t )?LOG-(self|child)-\d", ln), ln
    assert any(ln.startswith("cam xxx") and ln.endswith("…") for ln in lines)  # cut, not wrapped
    assert any("10/10" in ln for ln in lines)
    assert lines[-2:] == ["FINAL line", "stdout untouched"]


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    p = Progress(total=4, label="files", stream=out, plain_every_s=3600)
    assert not p.live
    p.update(done=1, lines=["a online"])  # the first one is shown at once
    p.update(done=2, lines=["a online"])  # then at most every plain_every_s...
    p.update(done=4, lines=["a finished"])  # ...except when done
    p.print("a log line")
    p.close(["summary"])
    text = out.getvalue().splitlines()
    assert len(text) == 4, text
    assert text[0].startswith("files [######") and "25.0% 1/4" in text[0]
    assert text[0].endswith("| a online")
    assert "100.0% 4/4" in text[1] and text[1].endswith("| a finished")
    assert text[2:] == ["a log line", "summary"]


def test_disabled_shows_nothing_but_prints() -> None:
    out = io.StringIO()
    p = Progress(total=2, stream=out, enabled=False, live=True)
    p.update(done=2, force=True)
    p.print("note")
    p.close(["end"])
    assert out.getvalue() == "note\nend\n"


def test_eta_format() -> None:
    assert format_eta(3725) == "1:02:05"
    assert format_eta(float("nan")) == "--:--"
