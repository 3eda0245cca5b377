"""The comment-keeping writer of run configs: set keys of one camera in a YAML file in place.

Every command that changes a config goes through here: ``calibrate ground`` (the camera's
``calibration:``), the console's zone editor (``zones:``), ``adapt`` (the camera's ``model:``).
PyYAML cannot round-trip comments, so an update is a targeted text edit of the block-style YAML:
only the keys being set are replaced (or appended), everything else - comments, order, other
cameras - stays byte for byte. The edit is then checked by parsing both versions: the new one
must equal the old one plus exactly the new keys. A layout the editor does not handle (flow-style
mappings, a camera given as a bare URL, anchors) makes :func:`update_camera_text` return None,
and the caller writes a plain dump instead (:func:`dump_with_updates`, comments lost).

Example::

    new = update_camera_text(text, "lobby", {"image_size": [640, 480]}, section="calibration")
    new = update_camera_text(text, "lobby", {"zones": [{"name": "door", "polygon": [...]}]})
    if new is None:
        new = dump_with_updates(text, "lobby", {...})
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


def _scalar(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return yaml.safe_dump(v).split("\n")[0].removesuffix("...").strip()
    if isinstance(v, (int, float)):
        return _num(v)
    text = yaml.safe_dump(str(v), default_style=None, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _flow(v: Any) -> str:
    """One-line YAML for a value (numbers written to round-trip exactly)."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_scalar(k)}: {_flow(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    return _scalar(v)


def render_key(key: str, value: Any, indent: int, comment: str | None = None) -> list[str]:
    """Block YAML lines for one key: a list of lists or of mappings one item per line (each item
    in flow style), a mapping as a block, anything else on the key's line."""
    pad = " " * indent
    tail = f"  # {comment}" if comment else ""
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(x, (list, tuple, dict)) for x in value):
        return [f"{pad}{key}:{tail}\n", *(f"{pad}  - {_flow(x)}\n" for x in value)]
    if isinstance(value, dict) and value:
        out = [f"{pad}{key}:{tail}\n"]
        for k, x in value.items():
            out += render_key(str(k), x, indent + 2)
        return out
    return [f"{pad}{key}: {_flow(value)}{tail}\n"]


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


def update_camera_text(text: str, camera: str, updates: dict[str, Any],
                       comments: dict[str, str] | None = None, *,
                       section: str | None = None) -> str | None:
    """``text`` with ``cameras.<camera>[.<section>].<key>`` set for each update, or None when the
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
    if section is None:
        kind = _child_indent(lines, cam_i + 1, cam_end, cam_ind + 2)
        _set_keys(lines, cam_i, cam_end, kind, updates, comments)
    else:
        sec = _find_child(lines, cam_i + 1, cam_end, section)
        if sec is None:
            ind = _child_indent(lines, cam_i + 1, cam_end, cam_ind + 2)
            new = [f"{' ' * ind}{section}:\n"]
            for k, v in updates.items():
                new += render_key(k, v, ind + 2, comments.get(k))
            lines[cam_end:cam_end] = new
        else:
            sec_i, sec_ind, rest = sec
            if rest and rest not in ("null", "~"):
                return None  # flow mapping or scalar
            if rest:
                lines[sec_i] = lines[sec_i].replace(rest, "", 1).rstrip() + "\n"
            sec_end = _block_end(lines, sec_i, sec_ind)
            kind = _child_indent(lines, sec_i + 1, sec_end, sec_ind + 2)
            _set_keys(lines, sec_i, sec_end, kind, updates, comments)
    out = "".join(lines)
    try:
        after = yaml.safe_load(out)
    except yaml.YAMLError:
        return None
    return out if after == _expected(before, camera, updates, section) else None


def _set_keys(lines: list[str], parent: int, end: int, kind: int, updates: dict[str, Any],
              comments: dict[str, str]) -> None:
    """Replace (or append) each key among the children of ``lines[parent]`` at indent ``kind``."""
    for k, v in updates.items():
        new = render_key(k, v, kind, comments.get(k))
        found = _find_child(lines, parent + 1, end, k)
        if found is not None:
            s = found[0]
            e = _value_end(lines, s, kind)
            kept = _trailing_comment(lines[s])
            if kept and k not in comments:  # keep the user's note on the replaced key
                new[0] = new[0].rstrip("\n") + kept + "\n"
            lines[s:e] = new
            end += len(new) - (e - s)
        else:
            lines[end:end] = new
            end += len(new)


def update_calibration_text(text: str, camera: str, updates: dict[str, Any],
                            comments: dict[str, str] | None = None) -> str | None:
    """``update_camera_text`` on the camera's ``calibration:`` section."""
    return update_camera_text(text, camera, updates, comments, section="calibration")


def _expected(raw: dict[str, Any], camera: str, updates: dict[str, Any],
              section: str | None) -> dict[str, Any]:
    import copy

    want = copy.deepcopy(raw)
    name = next(k for k in want["cameras"] if str(k) == camera)  # YAML may key it as an int
    cam = want["cameras"][name]
    target = cam if section is None else (cam.get(section) or {})
    for k, v in updates.items():
        target[k] = _plain(v)
    if section is not None:
        cam[section] = target
    return want


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def dump_with_updates(text: str, camera: str, updates: dict[str, Any], *,
                      section: str | None = None) -> str:
    """The whole config re-dumped with the keys set (comments and layout are lost)."""
    raw = yaml.safe_load(text) or {}
    cams = raw.setdefault("cameras", {})
    cam = cams.get(camera)
    if isinstance(cam, str):
        cam = {"url": cam}
    cam = dict(cam or {})
    if section is None:
        cam.update(_plain(updates))
    else:
        cam[section] = {**(cam.get(section) or {}), **_plain(updates)}
    cams[camera] = cam
    return yaml.safe_dump(raw, sort_keys=False, default_flow_style=None)


def dump_with_calibration(text: str, camera: str, updates: dict[str, Any]) -> str:
    """``dump_with_updates`` of the camera's ``calibration:`` section."""
    return dump_with_updates(text, camera, updates, section="calibration")
