"""What runs on this machine, read from /proc: the tests' one way to find a run's processes."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields() -> dict[int, list[str]]:
    """pid -> the fields of /proc/<pid>/stat after the command name (field 3 on)."""
    out: dict[int, list[str]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            out[int(d)] = stat.rsplit(")", 1)[1].split()
    return out


def process_tree(root: int) -> list[int]:
    """``root`` and every live process below it."""
    parent = {pid: int(f[1]) for pid, f in _stat_fields().items()}
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += [c for c, p in parent.items() if p == pid]
    return tree


def session_members(sid: int) -> list[int]:
    """Every live process of session ``sid`` (field 6 of stat)."""
    return [pid for pid, f in _stat_fields().items() if int(f[3]) == sid]
