"""The one comment-keeping writer of run configs (engines.yamledit): any key of a camera."""

from __future__ import annotations

import yaml

from engines.yamledit import dump_with_updates, update_camera_text
from pipeline.config import config_from_dict

TEXT = """\
# site config: keep this comment
cameras:
  lobby:   # the front door
    url: rtsp://cam/1
    fps: 5          # keep me too
    zones:
      - {name: old, polygon: [[0, 0], [1, 0], [1, 1]]}
    alerts: []
  yard:
    url: yard.mp4
"""

ZONES = [{"name": "door", "polygon": [[0.1, 0.5], [0.4, 0.5], [0.4, 1.0], [0.1, 1.0]]},
         {"name": 'desk: "A"', "polygon": [[0.5, 0.5], [0.9, 0.5], [0.9, 0.9]]}]


def test_camera_keys_are_replaced_and_added_in_place() -> None:
    out = update_camera_text(TEXT, "lobby", {"zones": ZONES, "model": {"checkpoint": "m.pt"}})
    assert out is not None
    assert "# site config: keep this comment" in out and "# the front door" in out
    assert "fps: 5          # keep me too" in out
    assert out.splitlines()[-2:] == ["  yard:", "    url: yard.mp4"]  # others byte for byte
    raw = yaml.safe_load(out)
    assert raw["cameras"]["lobby"]["zones"] == ZONES
    assert raw["cameras"]["lobby"]["model"] == {"checkpoint": "m.pt"}
    assert raw["cameras"]["lobby"]["alerts"] == []
    # what it wrote loads as a config (the same checks as `config validate`)
    cfg = config_from_dict({"cameras": {"lobby": {"url": "x.mp4",
                                                  "zones": raw["cameras"]["lobby"]["zones"]}}})
    assert [z.name for z in cfg.cameras["lobby"].zones] == ["door", 'desk: "A"']


def test_a_section_key_and_a_new_section() -> None:
    out = update_camera_text(TEXT, "yard", {"image_size": [640, 480]}, section="calibration")
    assert out is not None and yaml.safe_load(out)["cameras"]["yard"]["calibration"] == {
        "image_size": [640, 480]}


def test_layouts_it_cannot_edit_safely_fall_back_to_a_dump() -> None:
    flow = "cameras: {lobby: {url: a.mp4}}\n"
    assert update_camera_text(flow, "lobby", {"zones": ZONES}) is None
    bare = "cameras:\n  lobby: a.mp4\n"
    assert update_camera_text(bare, "lobby", {"zones": ZONES}) is None
    raw = yaml.safe_load(dump_with_updates(bare, "lobby", {"zones": ZONES}))
    assert raw["cameras"]["lobby"] == {"url": "a.mp4", "zones": ZONES}
