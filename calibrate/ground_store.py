"""Write a fitted ground calibration back into a camera's section of a YAML config file.

PyYAML cannot round-trip comments, so the update is a targeted text edit of the block-style YAML:
only the camera's ``calibration:`` keys being set are replaced (or the section is appended to the
camera), everything else - comments, order, other cameras - stays byte for byte. The edit is then
checked by parsing both versions: the new one must equal the old one plus exactly the new keys. A
layout the editor does not handle (flow-style mappings, a camera given as a bare URL, anchors)
makes :func:`update_calibration_text` return None, and the caller writes a plain dump instead.

Example::

    new = update_calibration_text(text, "lobby", {"image_size": [640, 480], "homography": h})
    if new is None:
        new = dump_with_calibration(text, "lobby", {...})  # comments lost
"""

from __future__ import annotations

import re
from typing import Any

import yaml


def yaml_float(x: float) -> str:
    """A float literal that YAML 1.1 (PyYAML) reads back as the same float.

    ``repr`` gives ``1e-05``, which PyYAML reads as a string: its float pattern wants a dot.
    """
    r = repr(float(x))
    mant, sep, exp = r.partition("e")
    if sep and "." not in mant:
        return f"{mant}.0e{exp}"
    return r


def _num(x: float | int) -> str:
    return str(x) if isinstance(x, int) and not isinstance(x, bool) else yaml_float(x)


def render_key(key: str, value: Any, indent: int, comment: str | None = None) -> list[str]:
    """Block YAML lines for one calibration key (numbers written to round-trip exactly)."""
    pad = " " * indent
    tail = f"  # {comment}" if comment else ""
    if key == "homography":
        rows = [f"{pad}  - [{', '.join(_num(v) for v in row)}]\n" for row in value]
        return [f"{pad}homography:{tail}\n", *rows]
    if key == "image_size":
        return [f"{pad}image_size: [{int(value[0])}, {int(value[1])}]{tail}\n"]
    if key == "points":
        out = [f"{pad}points:{tail}\n"]
        for p in value:
            img = ", ".join(_num(v) for v in p["image"])
            gnd = ", ".join(_num(v) for v in p["ground"])
            out.append(f"{pad}  - {{image: [{img}], ground: [{gnd}]}}\n")
        return out
    raise ValueError(f"no renderer for calibration key {key!r}")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith("#")


def _key_line(line: str, key: str) -> str | None:
    """The text after ``key:`` (comment stripped) if ``line`` is that mapping key, else None."""
    m = re.match(r"^\s*([\"']?)" + re.escape(key) + r"\1\s*:(\s.*)?$", line.rstrip("\n"))
    if not m:
        return None
    rest = (m.group(2) or "").strip()
    return "" if rest.startswith("#") else rest


def _trailing_comment(line: str) -> str:
    """The ``  # ...`` at the end of a key line (with its spacing), or ''; a '#' inside a quoted
    string (an odd number of quotes before it) is not a comment."""
    body = line.rstrip("\n")
    for m in re.finditer(r"\s+#", body):
        head = body[: m.start()]
        if head.count('"') % 2 == 0 and head.count("'") % 2 == 0:
            return body[m.start():]
    return ""


def _block_end(lines: list[str], start: int, parent_indent: int) -> int:
    """Index after the last content line of the block opened at ``start`` (deeper than parent)."""
    end = start + 1
    for i in range(start + 1, len(lines)):
        if not _content(lines[i]):
            continue
        if _indent(lines[i]) <= parent_indent:
            break
        end = i + 1
    return end


def _value_end(lines: list[str], start: int, key_indent: int) -> int:
    """Index after the last line of the value of the key at ``start`` (block lists may sit at the
    key's own indent: ``key:\\n- item``)."""
    end = start + 1
    for i in range(start + 1, len(lines)):
        if not _content(lines[i]):
            continue
        ind = _indent(lines[i])
        if ind > key_indent or (ind == key_indent and lines[i].lstrip().startswith("- ")):
            end = i + 1
        else:
            break
    return end


def _find_child(lines: list[str], lo: int, hi: int, key: str) -> tuple[int, int, str] | None:
    """(line index, indent, rest) of ``key`` among the direct children of lines[lo:hi]."""
    child = None
    for i in range(lo, hi):
        if not _content(lines[i]):
            continue
        ind = _indent(lines[i])
        if child is None:
            child = ind
        if ind != child:
            continue
        rest = _key_line(lines[i], key)
        if rest is not None:
            return i, ind, rest
    return None


def _child_indent(lines: list[str], lo: int, hi: int, default: int) -> int:
    for i in range(lo, hi):
        if _content(lines[i]):
            return _indent(lines[i])
    return default


def update_calibration_text(text: str, camera: str, updates: dict[str, Any],
                            comments: dict[str, str] | None = None) -> str | None:
    """``text`` with ``cameras.<camera>.calibration.<key>`` set for each update, or None when the
    file's layout is not one this editor can change safely (see the module docstring)."""
    comments = comments or {}
    try:
        before = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return None
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    top = _find_child(lines, 0, len(lines), "cameras")
    if top is None or top[1] != 0 or top[2]:
        return None
    cams_end = _block_end(lines, top[0], 0)
    cam = _find_child(lines, top[0] + 1, cams_end, camera)
    if cam is None or cam[2]:
        return None
    cam_i, cam_ind, _ = cam
    cam_end = _block_end(lines, cam_i, cam_ind)
    cal = _find_child(lines, cam_i + 1, cam_end, "calibration")
    if cal is None:
        ind = _child_indent(lines, cam_i + 1, cam_end, cam_ind + 2)
        new = [f"{' ' * ind}calibration:\n"]
        for k, v in updates.items():
            new += render_key(k, v, ind + 2, comments.get(k))
        lines[cam_end:cam_end] = new
    else:
        cal_i, cal_ind, rest = cal
        if rest and rest not in ("null", "~"):
            return None  # flow mapping or scalar
        if rest:
            lines[cal_i] = lines[cal_i].replace(rest, "", 1).rstrip() + "\n"
        cal_end = _block_end(lines, cal_i, cal_ind)
        kind = _child_indent(lines, cal_i + 1, cal_end, cal_ind + 2)
        for k, v in updates.items():
            new = render_key(k, v, kind, comments.get(k))
            found = _find_child(lines, cal_i + 1, cal_end, k)
            if found is not None:
                s = found[0]
                e = _value_end(lines, s, kind)
                kept = _trailing_comment(lines[s])
                if kept and k not in comments:  # keep the user's note on the replaced key
                    new[0] = new[0].rstrip("\n") + kept + "\n"
                lines[s:e] = new
                cal_end += len(new) - (e - s)
            else:
                lines[cal_end:cal_end] = new
                cal_end += len(new)
    out = "".join(lines)
    try:
        after = yaml.safe_load(out)
    except yaml.YAMLError:
        return None
    return out if after == _expected(before, camera, updates) else None


def _expected(raw: dict[str, Any], camera: str, updates: dict[str, Any]) -> dict[str, Any]:
    import copy

    want = copy.deepcopy(raw)
    name = next(k for k in want["cameras"] if str(k) == camera)  # YAML may key it as an int
    cam = want["cameras"][name]
    cal = cam.get("calibration") or {}
    for k, v in updates.items():
        cal[k] = _plain(v)
    cam["calibration"] = cal
    return want


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def dump_with_calibration(text: str, camera: str, updates: dict[str, Any]) -> str:
    """The whole config re-dumped with the calibration set (comments and layout are lost)."""
    raw = yaml.safe_load(text) or {}
    cams = raw.setdefault("cameras", {})
    cam = cams.get(camera)
    if isinstance(cam, str):
        cam = {"url": cam}
    cam = dict(cam or {})
    cam["calibration"] = {**(cam.get("calibration") or {}), **_plain(updates)}
    cams[camera] = cam
    return yaml.safe_dump(raw, sort_keys=False, default_flow_style=None)
