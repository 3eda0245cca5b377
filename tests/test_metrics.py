"""Prometheus metrics and health endpoints of a real run: `crowdstream run` in a subprocess with
`--metrics-port 0`, scraped over HTTP while it runs and until its server closes; the Grafana
dashboard's queries checked against what that run exported."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_pipeline import REPO, leftover_segments, make_clip, write_config

from pipeline.metrics import METRICS, CameraSnapshot, PipelineMetrics, Snapshot, exported_series
from pipeline.shm import LATENCY_BUCKETS

FRAMES_A, FRAMES_B = 37, 120
SLOTS = 2
DASHBOARD = REPO / "configs" / "grafana" / "crowdstream.json"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(body: str) -> tuple[Samples, dict[str, str]]:
    """Every sample (name, sorted labels) -> value, and family name -> type."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for fam in text_string_to_metric_families(body):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@dataclass
class Run:
    """One `crowdstream run` and everything read from it."""

    rc: int = -1
    stderr: str = ""
    port: int | None = None
    bodies: list[str] = field(default_factory=list)  # /metrics, in order
    health: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # /healthz
    ready: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # /readyz
    pid: int = 0


def _scrape(run: Run, base: str, done: threading.Event) -> None:
    while not done.is_set():
        try:
            with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
                run.bodies.append(r.read().decode())
            code, body = get(base + "/healthz")
            run.health.append((code, json.loads(body)))
            code, body = get(base + "/readyz")
            run.ready.append((code, json.loads(body)))
        except (OSError, ValueError):
            if done.wait(0.02):
                return


def run_config(tmp: Path) -> Path:
    """Camera a: lossless file, two zones, a ground calibration and two alert rules that are
    always active while it counts; camera b: a fast file under `latest` that drops."""
    make_clip(tmp / "a.mp4", FRAMES_A, w=320, h=240)
    make_clip(tmp / "b.mp4", FRAMES_B, w=320, h=240)
    cam_a = {
        "url": str(tmp / "a.mp4"),
        "zones": [{"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]},
                  {"name": "right", "polygon": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]}],
        "calibration": {"homography": [[0.01, 0, 0], [0, 0.01, 0], [0, 0, 1]],
                        "image_size": [320, 240]},
        "alerts": [{"name": "any", "threshold": 0, "severity": "warning"},
                   {"name": "left-any", "zone": "left", "threshold": 0, "severity": "critical"}],
    }
    cam_b = {"url": str(tmp / "b.mp4"), "queue_policy": "latest"}
    return write_config(tmp, {"a": cam_a, "b": cam_b}, runtime={"frame_slots": SLOTS})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("metrics_run")
    cfg = run_config(tmp)
    out = Run()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(cfg),
                             "--metrics-port", "0"], cwd=REPO, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    out.pid = proc.pid
    done = threading.Event()
    scraper: threading.Thread | None = None
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        m = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", line)
        if m and scraper is None:
            out.port = int(m.group(1))
            scraper = threading.Thread(target=_scrape, daemon=True,
                                       args=(out, f"http://127.0.0.1:{out.port}", done))
            scraper.start()
    out.rc = proc.wait(timeout=300)
    done.set()
    if scraper is not None:
        scraper.join(10)
    out.stderr = "".join(lines)
    yield out


def cameras(samples: Samples) -> set[str]:
    return {dict(k[1])["camera"] for k in samples if k[0] == "crowdstream_frames_in_total"}


def check_identity(samples: Samples, cam: str) -> dict[str, float]:
    """in = out + dropped + lost + in flight, exactly, in one scrape; returns the five."""
    got = {k: value(samples, f"crowdstream_frames_{k}", camera=cam) for k in
           ("in_total", "out_total", "dropped_total", "lost_total", "in_flight")}
    assert got["in_total"] == (got["out_total"] + got["dropped_total"] + got["lost_total"]
                               + got["in_flight"]), (cam, got)
    assert got["in_flight"] >= 0, (cam, got)
    return got


def test_port_zero_prints_the_address_and_every_scrape_adds_up(run: Run) -> None:
    assert run.rc == 0, run.stderr[-3000:]
    assert run.port and run.port != 9108
    assert f"http://127.0.0.1:{run.port}/healthz" in run.stderr  # health paths printed too
    assert len(run.bodies) >= 3, f"only {len(run.bodies)} scrapes"
    prev: dict[str, dict[str, float]] = {}
    for body in run.bodies:
        samples, _ = parse(body)
        for cam in cameras(samples):
            got = check_identity(samples, cam)
            # every in-flight frame holds a slot of the camera's ring
            assert got["in_flight"] <= SLOTS + 1, (cam, got)
            for k, v in got.items():  # counters never go back
                if k != "in_flight":
                    assert v >= prev.get(cam, {}).get(k, 0), (cam, k, v)
            prev[cam] = got
    # the last scrape (the server closes last) holds the final values
    final, _ = parse(run.bodies[-1])
    a, b = check_identity(final, "a"), check_identity(final, "b")
    assert a == {"in_total": FRAMES_A, "out_total": FRAMES_A, "dropped_total": 0,
                 "lost_total": 0, "in_flight": 0}
    assert b["in_total"] == FRAMES_B and b["in_flight"] == 0
    assert b["dropped_total"] > 0, "a 2-slot ring under `latest` should drop"
    m = re.search(r"b: (\d+) counted, (\d+) dropped, (\d+) lost", run.stderr)
    assert m, run.stderr[-2000:]
    assert [int(x) for x in m.groups()] == [b["out_total"], b["dropped_total"], b["lost_total"]]
    assert not leftover_segments(run.pid)


def test_summary_line_prints_the_counting_rate(run: Run) -> None:
    m = re.search(r"all sources ended; a: (\d+) counted.*; b: (\d+) counted.*; (\d+) frames "
                  r"counted in ([\d.]+) s: ([\d.]+) frames/s", run.stderr)
    assert m, run.stderr[-2000:]
    a, b, n, secs, fps = (float(x) for x in m.groups())
    assert n == a + b and secs > 0
    assert fps == pytest.approx(n / secs, rel=0.05)


def test_people_zone_density_and_alert_gauges(run: Run) -> None:
    # the values the post stage published while camera a counted (its last scrape before the
    # end shows them; the alerts end with the camera)
    live = [parse(b)[0] for b in run.bodies
            if 'crowdstream_alert_active{camera="a",rule="any"' in b]
    assert live, "no scrape with alert gauges"
    s = live[-1]
    a = value(s, "crowdstream_people", camera="a")
    left = value(s, "crowdstream_zone_people", camera="a", zone="left")
    right = value(s, "crowdstream_zone_people", camera="a", zone="right")
    assert math.isfinite(a) and a >= 0
    assert left + right == pytest.approx(a, rel=1e-3, abs=1e-3)  # the zones tile the frame
    d = value(s, "crowdstream_people_density_m2", camera="a")
    assert d == pytest.approx(a / (3.2 * 2.4), rel=1e-3, abs=1e-6)  # 3.2 m x 2.4 m of ground
    assert value(s, "crowdstream_zone_density_m2", camera="a", zone="left") == pytest.approx(
        left / (1.6 * 2.4), rel=1e-3, abs=1e-6)
    assert math.isfinite(value(s, "crowdstream_people", camera="b"))
    # camera b is not calibrated and has no zones: no density / zone series for it
    assert not [k for k in s if k[0].endswith("density_m2") and dict(k[1])["camera"] == "b"]
    saw_active = any(
        value(parse(b)[0], "crowdstream_alert_active", camera="a", rule="left-any", zone="left",
              severity="critical") == 1.0 for b in run.bodies if "left-any" in b)
    assert saw_active, "the always-true rule was never shown active"
    final, _ = parse(run.bodies[-1])
    assert value(final, "crowdstream_alert_active", camera="a", rule="any", zone="",
                 severity="warning") == 0.0  # ended when the camera finished


def test_types_labels_histogram_and_restarts(run: Run) -> None:
    final, types = parse(run.bodies[-1])
    # every family exported is declared in METRICS with that type and exactly those labels
    for name, kind in types.items():
        assert name in METRICS and METRICS[name][0] == kind, (name, kind)
    for (series, labels), _ in final.items():
        fam = next(n for n in METRICS if series in exported_series(n))
        names = {k for k, _ in labels} - {"le"}
        assert names == set(METRICS[fam][1]), (series, labels)
    # counters are _total, restarts included
    assert types["crowdstream_stage_restarts"] == "counter"
    assert value(final, "crowdstream_stage_restarts_total", stage="inference") == 0
    # latency: a histogram per camera with the fixed buckets; it saw every counted frame
    for cam in ("a", "b"):
        les = sorted(float(dict(k[1])["le"]) for k in final
                     if k[0] == "crowdstream_latency_seconds_bucket"
                     and dict(k[1])["camera"] == cam)
        assert les == [*LATENCY_BUCKETS, math.inf]
        count = value(final, "crowdstream_latency_seconds_count", camera=cam)
        assert count == value(final, "crowdstream_frames_out_total", camera=cam)
        assert value(final, "crowdstream_latency_seconds_bucket", camera=cam, le="+Inf") == count
        assert value(final, "crowdstream_latency_seconds_sum", camera=cam) > 0
    # camera and edge are separate labels; shared batch queues have their own metric
    assert ("crowdstream_queue_depth", (("camera", "a"), ("edge", "frames"))) in final
    assert {dict(k[1])["edge"] for k in final if k[0] == "crowdstream_batch_queue_depth"} == {
        "infer", "post"}


def test_health_endpoints_answer_json_with_a_reason(run: Run) -> None:
    assert run.health and all(code == 200 and doc["status"] == "ok" and doc["reason"]
                              for code, doc in run.health), run.health[:3]
    ready = [doc for code, doc in run.ready if code == 200]
    assert ready, [doc for _, doc in run.ready][:5]
    doc = ready[0]
    assert doc["ready"] is True and doc["cameras_planned"] == doc["cameras_configured"] == 2
    assert doc["engine_loaded"] is True and doc["phase"] == "running"
    assert all(doc["stages"][s] for s in ("tile", "inference", "post"))
    for code, doc in run.ready:  # every "not ready" says why
        assert (code == 200) == doc["ready"] and doc["reason"]
    # the run stopping is not ready any more (the sources ended): once a scrape saw it, every
    # later one does (whether a scrape falls in the short drain is up to timing; the bare
    # endpoint test below checks the stopping answer itself)
    stops = [i for i, (code, doc) in enumerate(run.ready) if doc["reason"] == "stopping"]
    assert all(run.ready[i][0] == 503 for i in stops)
    assert not stops or stops == list(range(stops[0], len(run.ready))), run.ready[stops[0]:]


def test_metrics_port_in_use_is_a_one_line_error_before_anything_starts(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"a": {"url": str(make_clip(tmp_path / "a.mp4", 5))}})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(cfg),
                            "--metrics-port", str(port)], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    err = [ln for ln in r.stderr.splitlines() if "config error" in ln]
    assert len(err) == 1 and "metrics.port" in err[0] and f"127.0.0.1:{port}" in err[0], r.stderr
    assert "already in use" in err[0] and "0 to pick one" in err[0]
    assert "Traceback" not in r.stderr
    # nothing was planned or spawned before the check
    assert "plan cameras" not in r.stderr and "spawned" not in r.stderr, r.stderr
    assert time.monotonic() - t0 < 60


def test_killed_post_counts_a_restart_and_the_frames_still_add_up(tmp_path: Path) -> None:
    """A live-like looping source; SIGKILL the post process: the restart shows as
    `crowdstream_stage_restarts_total{stage="post"}` 1, the frames it held as lost, and every
    scrape (during the crash and after SIGTERM) keeps in = out + dropped + lost + in flight."""
    from test_supervisor import RunningCli

    make_clip(tmp_path / "a.mp4", 50)
    cfg = write_config(tmp_path, {"a": {"url": str(tmp_path / "a.mp4"), "loop": True,
                                        "realtime": True}},
                       runtime={"restart_backoff_s": 0.2}, metrics={"port": 0})
    run = RunningCli(cfg)
    out = Run()
    done = threading.Event()
    try:
        port = int(run.wait_for(r"metrics at http://127\.0\.0\.1:(\d+)/metrics").group(1))
        scraper = threading.Thread(target=_scrape, daemon=True,
                                   args=(out, f"http://127.0.0.1:{port}", done))
        scraper.start()
        run.wait_for(r"spawned stage=ingest:a")
        deadline = time.monotonic() + 60
        while not any('crowdstream_frames_out_total{camera="a"} 5' in b for b in out.bodies):
            assert time.monotonic() < deadline and run.proc.poll() is None, run.text()[-3000:]
            time.sleep(0.1)
        os.kill(run.pid_of("post"), signal.SIGKILL)
        run.wait_for(r"spawned stage=post pid=\d+[\s\S]*spawned stage=post pid=\d+")
        run.wait_for(r"post started[\s\S]*post started", timeout=120)
        n = value(parse(out.bodies[-1])[0], "crowdstream_frames_out_total", camera="a")
        deadline = time.monotonic() + 120
        while value(parse(out.bodies[-1])[0], "crowdstream_frames_out_total", camera="a") < n + 5:
            assert time.monotonic() < deadline, run.text()[-3000:]  # counting resumed
            time.sleep(0.1)
        run.proc.send_signal(signal.SIGTERM)
        rc = run.finish(60)
    finally:
        done.set()
        if run.proc.poll() is None:
            run.proc.kill()
    # the frames the killed stage held are lost: the run says so and exits 3
    assert rc == 3 and "DATA LOST: a" in run.text(), run.text()[-3000:]
    restarts = []
    for body in out.bodies:
        samples, _ = parse(body)
        if ("crowdstream_frames_in_total", (("camera", "a"),)) in samples:
            check_identity(samples, "a")
        restarts.append(value(samples, "crowdstream_stage_restarts_total", stage="post")
                        if ("crowdstream_stage_restarts_total", (("stage", "post"),)) in samples
                        else 0.0)
    assert restarts[0] == 0 and restarts[-1] == 1 and restarts == sorted(restarts)
    final, _ = parse(out.bodies[-1])
    got = check_identity(final, "a")
    assert "stopped by signal, drained" in run.text(), run.text()[-3000:]
    assert got["in_flight"] == 0 and got["out_total"] > 5, got
    lost = re.search(r"a: \d+ counted, \d+ dropped, (\d+) lost", run.text())
    assert lost and int(lost.group(1)) == got["lost_total"], run.text()[-2000:]


# ---------------------------------------------------------------- health, on a bare endpoint
def snapshot(up: dict[str, bool], pool: bool = True, stopping: bool = False,
             cams: tuple[str, ...] = ("a",)) -> Snapshot:
    ring = {"puts": 3, "refused": 0, "drops": 0, "gets": 3, "depth": 0, "ended": 0,
            "tiled": 3, "emitted": 3, "lost": 0, "eos_seen": 0, "last_index": 2}
    return Snapshot(time.time(), {c: CameraSnapshot(dict(ring), np.zeros(0), "online")
                                  for c in cams},
                    {"batches": 1, "tiles": 3, "requeued": 0, "infer_ns": 0, "queued_infer": 0,
                     "queued_post": 0} if pool else {}, {}, up, stopping=stopping)


def test_readiness_reasons_and_a_stalled_loop_fails_liveness() -> None:
    m = PipelineMetrics(["a", "b"], port=0, stale_s=0.5)
    try:
        base = m.url.rsplit("/", 1)[0] if m.url else ""
        code, body = get(base + "/readyz")
        assert code == 503 and json.loads(body)["reason"].startswith("starting")
        assert get(base + "/healthz")[0] == 200  # starting is alive
        up = {"ingest": True, "tile": True, "inference": True, "post": True}
        m.update(snapshot(up))
        code, body = get(base + "/readyz")
        assert code == 503 and json.loads(body)["reason"] == "cameras not planned: b"
        m.update(snapshot(up, pool=False, cams=("a", "b")))
        assert json.loads(get(base + "/readyz")[1])["reason"] == "engine not loaded"
        m.update(snapshot({**up, "inference": False}, cams=("a", "b")))
        assert json.loads(get(base + "/readyz")[1])["reason"] == "stage(s) not running: inference"
        m.update(snapshot(up, cams=("a", "b")))
        code, body = get(base + "/readyz")
        assert code == 200 and json.loads(body)["ready"] is True
        code, body = get(base + "/healthz")
        assert code == 200 and json.loads(body)["status"] == "ok"
        time.sleep(0.8)  # no update: the supervisor loop is stuck
        code, body = get(base + "/healthz")
        assert code == 503 and "has not run for" in json.loads(body)["reason"]
        m.update(snapshot(up, cams=("a", "b"), stopping=True))
        code, body = get(base + "/readyz")
        assert code == 503 and json.loads(body)["reason"] == "stopping"
        assert get(base + "/healthz")[0] == 200
        assert get(base + "/nothing")[0] == 404
    finally:
        m.close()


# ---------------------------------------------------------------- the Grafana dashboard
PROMQL_FUNCS = {
    "abs", "avg_over_time", "ceil", "clamp_min", "clamp_max", "count_over_time", "delta",
    "deriv", "floor", "histogram_quantile", "idelta", "increase", "irate", "label_replace",
    "max_over_time", "min_over_time", "rate", "resets", "round", "sort", "sort_desc",
    "sum_over_time", "time", "timestamp", "vector", "scalar", "absent", "changes",
    "last_over_time", "quantile_over_time",
}
PROMQL_AGGS = {"sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile", "stddev",
               "stdvar", "group", "count_values"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset"}
_TOKEN = re.compile(r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<range>\[[^\]]+\])
    |(?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?)|(?P<id>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<var>\$\{?[A-Za-z_][A-Za-z0-9_]*\}?)
    |(?P<op>=~|!~|!=|==|>=|<=|[-+*/%^(){},=<>]))""", re.X)


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects. Tokenises the whole expression (an
    unknown character fails), checks brackets balance, that every call is a PromQL function
    or aggregation, and skips label names inside ``{...}`` and ``by (...)`` clauses."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        assert m and m.end() > pos, f"cannot parse {expr[pos:]!r} in {expr!r}"
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    names: set[str] = set()
    depth: list[str] = []  # open brackets, with "labels" for {...} and by (...)
    for i, (kind, tok) in enumerate(tokens):
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if tok in "({":
            prev = tokens[i - 1][1] if i else ""
            depth.append("labels" if tok == "{" or prev in ("by", "without", "on", "ignoring",
                                                            "group_left", "group_right")
                         else "(")
        elif tok in ")}":
            assert depth, f"unbalanced {tok!r} in {expr!r}"
            depth.pop()
        elif kind == "id" and "labels" not in depth:
            if nxt == "(":
                assert tok in PROMQL_FUNCS | PROMQL_AGGS | PROMQL_WORDS, f"{tok}( in {expr!r}"
            elif tok not in PROMQL_WORDS | PROMQL_AGGS:
                names.add(tok)
    assert not depth, f"unclosed bracket in {expr!r}"
    return names


def dashboard_queries(doc: Any) -> Iterator[str]:
    """Every ``expr`` of every panel (nested rows too) and every templating query."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "expr" and isinstance(v, str):
                yield v
            elif k == "query" and isinstance(v, str | dict):
                q = v if isinstance(v, str) else v.get("query", "")
                m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", q or "")
                if m:
                    yield m.group(1)
            else:
                yield from dashboard_queries(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from dashboard_queries(v)


def test_promql_reader_finds_metric_names_and_refuses_nonsense() -> None:
    expr = ('histogram_quantile(0.99, sum by (camera, le) (rate(crowdstream_latency_seconds_'
            'bucket{camera=~"$camera"}[$__rate_interval])))')
    assert promql_metrics(expr) == {"crowdstream_latency_seconds_bucket"}
    assert promql_metrics('sum(crowdstream_people) / on (camera) group_left '
                          'crowdstream_frames_in_flight') == {
        "crowdstream_people", "crowdstream_frames_in_flight"}
    with pytest.raises(AssertionError):
        promql_metrics("rate(crowdstream_people[5m]")
    with pytest.raises(AssertionError):
        promql_metrics("frobnicate(crowdstream_people)")


def test_dashboard_queries_only_metrics_the_run_exports(run: Run) -> None:
    doc = json.loads(DASHBOARD.read_text())
    exprs = list(dashboard_queries(doc))
    assert len(exprs) >= 10
    exported = {k[0] for body in run.bodies for k in parse(body)[0]}
    queried: set[str] = set()
    for expr in exprs:
        names = promql_metrics(expr)
        assert names, f"no metric in {expr!r}"
        missing = names - exported
        assert not missing, f"{expr!r} queries {missing}, not exported by the run"
        queried |= names
    # the dashboard covers what the issue asks for
    for name in ("crowdstream_people", "crowdstream_zone_people", "crowdstream_people_density_m2",
                 "crowdstream_zone_density_m2", "crowdstream_alert_active",
                 "crowdstream_frames_in_total", "crowdstream_frames_out_total",
                 "crowdstream_frames_dropped_total", "crowdstream_frames_lost_total",
                 "crowdstream_latency_seconds_bucket", "crowdstream_queue_depth",
                 "crowdstream_stage_restarts_total"):
        assert name in queried, f"the dashboard has no panel on {name}"
