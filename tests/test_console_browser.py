"""The console's pages in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by Selenium) against a real pipeline on the demo clip and a real ``crowdstream serve``.

Screenshots of every page are saved as artifacts: in ``$CROWDSTREAM_ARTIFACTS/console`` when set,
else in the test's temporary folder; the folder is printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from console_helpers import LiveRun, Serve, chromium, have_chromium, site_config

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not have_chromium(), reason="needs /usr/bin/chromium and /usr/bin/chromedriver "
                                "(apt-get install chromium chromium-driver; .ci/run does)")]
XSS = "<script>alert(1)</script>"


class Browser:
    def __init__(self, driver: Any, url: str, shots: Path, config: Path, run: LiveRun) -> None:
        self.d, self.url, self.shots, self.config, self.run = driver, url, shots, config, run

    def open(self, path: str) -> None:
        self.d.get(self.url.rstrip("/") + path)

    def shot(self, name: str) -> Path:
        p = self.shots / f"{name}.png"
        self.d.save_screenshot(str(p))
        return p

    def js(self, script: str, *args: Any) -> Any:
        return self.d.execute_script(script, *args)

    def wait(self, pred: Any, timeout: float = 20.0) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            v = pred()
            if v:
                return v
            time.sleep(0.1)
        return None

    def errors(self) -> list[str]:
        """Console errors of the page other than 404s of pictures not stored yet."""
        return [e["message"] for e in self.d.get_log("browser") if e["level"] == "SEVERE"
                and "favicon" not in e["message"]]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    tmp = tmp_path_factory.mktemp("console_browser")
    base = os.environ.get("CROWDSTREAM_ARTIFACTS")
    shots = Path(base) / "console" if base else tmp / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {shots}")
    config = site_config(tmp, {"mall": {}, XSS: {}}, fps=4.0)
    run = LiveRun(config, tmp / "run.log")
    serve = driver = None
    try:
        run.wait_counting(["mall", XSS])
        serve = Serve("--config", str(config), "--port", "0", log_path=tmp / "serve.log")
        driver = chromium(tmp / "chrome-profile")
        yield Browser(driver, serve.url, shots, config, run)
    finally:
        if driver is not None:
            driver.quit()
        if serve is not None:
            serve.stop()
        run.stop()


def tile_count(b: Browser, cam: str) -> str:
    return b.js("const t = [...document.querySelectorAll('.tile')].find("
                "(x) => x.dataset.camera === arguments[0]);"
                "return t ? t.querySelector('.count').textContent : null;", cam)


def test_wall_shows_the_demo_camera_count_changing(browser: Browser) -> None:
    b = browser
    b.open("/")
    assert b.wait(lambda: tile_count(b, "mall") not in (None, "–"), 30)
    first = tile_count(b, "mall")
    t0 = time.monotonic()
    changed = b.wait(lambda: tile_count(b, "mall") != first, 2.0)
    assert changed, f"count stayed {first} for 2 s"
    assert time.monotonic() - t0 <= 2.1
    # the picture and its heatmap are shown, the state badge is online
    assert b.wait(lambda: b.js("const t = document.querySelector('.tile[data-camera=mall]');"
                               "return t.querySelector('img.snap').naturalWidth > 0 && "
                               "t.querySelector('img.heat').naturalWidth > 0;"), 15)
    assert b.js("return document.querySelector('.tile[data-camera=mall] .badge')"
                ".textContent") == "online"
    assert b.js("return window.__csLatency.length") > 0
    # the heatmap toggle hides the overlay
    b.js("document.getElementById('heat').click()")
    assert b.js("return document.querySelector('.tile[data-camera=mall] img.heat')"
                ".style.opacity") == "0"
    b.js("document.getElementById('heat').click()")
    time.sleep(1.0)
    b.shot("wall")


def test_xss_camera_name_renders_as_text(browser: Browser) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    b = browser
    b.open("/")
    assert b.wait(lambda: tile_count(b, XSS) not in (None, "–"), 30)
    name = b.js("const t = [...document.querySelectorAll('.tile')].find("
                "(x) => x.dataset.camera === arguments[0]);"
                "return t.querySelector('.name').textContent;", XSS)
    assert name == XSS
    # no element was made from the name: the only scripts are the page's own
    srcs = b.js("return [...document.scripts].map((s) => s.src || 'inline')")
    assert all(s.startswith(b.url) for s in srcs), srcs
    with pytest.raises(NoAlertPresentException):
        b.d.switch_to.alert.text  # noqa: B018 - alert(1) never ran
    # its camera page (name in the query string) too
    link = b.js("const t = [...document.querySelectorAll('.tile')].find("
                "(x) => x.dataset.camera === arguments[0]);"
                "return t.querySelector('a.name').href;", XSS)
    b.d.get(link)
    assert b.wait(lambda: b.js("return document.getElementById('title').textContent") == XSS)
    assert b.wait(lambda: b.js("return document.getElementById('count').textContent") != "–", 20)
    with pytest.raises(NoAlertPresentException):
        b.d.switch_to.alert.text  # noqa: B018
    b.shot("camera-xss")


def canvas_click(b: Browser, canvas_id: str, fx: float, fy: float) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    el = b.d.find_element(By.ID, canvas_id)
    r = el.rect
    # offsets are from the element's centre
    ActionChains(b.d).move_to_element_with_offset(
        el, int(fx * r["width"] - r["width"] / 2), int(fy * r["height"] - r["height"] / 2)
    ).click().perform()


def test_zone_drawn_in_the_editor_is_saved_and_counted(browser: Browser) -> None:
    from selenium.webdriver.common.by import By

    b = browser
    b.open("/zones?c=mall")
    assert b.wait(lambda: b.js("return document.getElementById('snap').naturalWidth > 0"), 20)
    b.d.find_element(By.ID, "add").click()
    for fx, fy in ((0.55, 0.35), (0.95, 0.35), (0.95, 0.95), (0.55, 0.95)):
        canvas_click(b, "draw", fx, fy)
    name = b.d.find_element(By.CSS_SELECTOR, ".zone.selected input")
    name.clear()
    name.send_keys("right side")
    b.shot("zone-editor-drawn")
    b.d.find_element(By.ID, "save").click()
    msg = b.wait(lambda: (lambda t: t if "saved to" in t or "error" in
                          b.js("return document.getElementById('msg').className") else None)(
        b.js("return document.getElementById('msg').textContent")), 20)
    assert msg and "saved to" in msg, msg
    assert "applied zones and alerts of mall" in msg, msg
    doc = yaml.safe_load(b.config.read_text())
    zone = doc["cameras"]["mall"]["zones"][0]
    assert zone["name"] == "right side"
    assert np.allclose(zone["polygon"], [[0.55, 0.35], [0.95, 0.35], [0.95, 0.95], [0.55, 0.95]],
                       atol=0.01)
    assert b.config.read_text().startswith("# console test site")
    # the running pipeline counts it: its live count shows in the editor and on the camera page
    assert b.wait(lambda: b.js("const c = document.querySelector('.zone .zone-live');"
                               "return c && c.textContent !== '–';"), 20)
    b.shot("zone-editor-saved")
    b.open("/camera?c=mall")
    cell = b.wait(lambda: b.js("const r = [...document.querySelectorAll('#zone-rows tr')].find("
                               "(x) => x.dataset.zone === 'right side');"
                               "const c = r && r.querySelector('.zone-count');"
                               "return c && c.textContent !== '–' ? c.textContent : null;"), 20)
    assert cell is not None and float(cell) >= 0
    assert b.wait(lambda: b.js("return !!document.querySelector('#chart canvas')"), 20)
    time.sleep(1.5)
    b.shot("camera")


def test_calibration_picker_saves_points(browser: Browser) -> None:
    import cv2
    from selenium.webdriver.common.by import By

    b = browser
    b.open("/calibrate?c=mall")
    assert b.wait(lambda: b.js("return document.getElementById('snap').naturalWidth > 0"), 20)
    time.sleep(0.5)  # the frame size comes with the camera's info
    corners = [((100, 450), (0, 0)), ((540, 450), (4, 0)), ((420, 200), (4, 8)),
               ((220, 200), (0, 8))]
    h = cv2.getPerspectiveTransform(np.float32([c[1] for c in corners]),
                                    np.float32([c[0] for c in corners]))
    centre = h @ np.array([2.0, 4.0, 1.0])
    points = corners + [((centre[0] / centre[2], centre[1] / centre[2]), (2, 4))]
    for (x, y), (gx, gy) in points:
        canvas_click(b, "draw", x / 640, y / 480)
        inputs = b.d.find_elements(By.CSS_SELECTOR, "#rows tr:last-child input")
        inputs[0].send_keys(str(gx))
        inputs[1].send_keys(str(gy))
    b.d.find_element(By.ID, "check").click()
    assert b.wait(lambda: b.js("return document.getElementById('preview').naturalWidth > 0"), 20)
    errors = b.js("return [...document.querySelectorAll('.point-error')].map((e) => e.textContent)")
    assert len(errors) == 5 and all(e.endswith(" m") for e in errors), errors
    b.d.find_element(By.ID, "save").click()
    msg = b.wait(lambda: (lambda t: t if "saved to" in t else None)(
        b.js("return document.getElementById('msg').textContent")), 20)
    assert msg, b.js("return document.getElementById('msg').textContent")
    cal = yaml.safe_load(b.config.read_text())["cameras"]["mall"]["calibration"]
    assert len(cal["points"]) == 5 and cal["image_size"] == [640, 480]
    got = np.array([p["image"] for p in cal["points"]])
    want = np.array([p[0] for p in points])
    assert np.abs(got - want).max() <= 3.0  # clicks land on the frame's own pixels
    assert [p["ground"] for p in cal["points"]] == [[float(g[0]), float(g[1])] for _, g in points]
    assert "needs a restart" in msg  # the run applies calibrations when it restarts
    time.sleep(0.5)
    b.shot("calibration")


def test_labeling_page_saves_a_full_frame_and_head_points(browser: Browser) -> None:
    import json

    from selenium.webdriver.common.by import By

    from pipeline.config import load_config
    from pipeline.labels import labels_dir

    b = browser
    b.open("/label?c=mall")
    b.d.find_element(By.ID, "grab").click()
    assert b.wait(lambda: b.js("return document.getElementById('frame').naturalWidth"), 30), \
        b.js("return document.getElementById('msg').textContent")
    assert b.js("return document.getElementById('frame').naturalWidth") == 640
    heads = [(0.2, 0.6), (0.5, 0.5), (0.8, 0.7)]
    for fx, fy in heads:
        canvas_click(b, "draw", fx, fy)
    assert b.js("return document.getElementById('npoints').textContent") == "3"
    b.d.find_element(By.ID, "save").click()
    assert b.wait(lambda: "label of" in b.js("return document.getElementById('msg').textContent"))
    doc = json.loads((labels_dir(load_config(b.config), "mall") / "labels.json").read_text())
    entry = doc["images"][-1]
    assert doc["camera"] == "mall" and len(entry["points"]) == 3
    got = np.array(entry["points"])
    assert np.abs(got - np.array(heads) * [640, 480]).max() <= 3.0  # pixels of the saved frame
    b.shot("label")
