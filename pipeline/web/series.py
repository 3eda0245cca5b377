"""Counts over a time range, down-sampled on the server for charts.

The last minutes come from the counts stream itself (one entry per frame); longer ranges from the
rollup stream (``crowdstream.rollup.v1``, one entry per ``redis.rollup_every_s`` window), which
the publisher writes beside it. Either way the points are bucketed into ``step`` seconds: mean
and max count, mean people/m² and each zone's mean count; empty buckets are None (a gap in the
chart, not a zero).

Example::

    s = count_series(client, "mall", start_ts=time.time() - 600, end_ts=time.time(), step_s=5)
    s["t"][:3], s["count"][:3], s["source"]      # bucket starts, means, "counts" | "rollup"
"""

from __future__ import annotations

import math
from typing import Any

MAX_POINTS = 2000  # buckets per answer: a chart is at most a few thousand pixels wide
MAX_RAW_ENTRIES = 20000  # counts read for one answer (the stream holds ~stream_maxlen)


def choose_step(span_s: float, step_s: float | None) -> float:
    """The bucket width: as asked (at least 1 s), widened so the answer has <= MAX_POINTS."""
    step = max(1.0, float(step_s) if step_s else span_s / 300.0)
    return max(step, math.ceil(span_s / MAX_POINTS))


def count_series(client: Any, camera: str, start_ts: float, end_ts: float,
                 step_s: float | None = None) -> dict[str, Any]:
    """Bucketed counts of ``camera`` between two unix times (see the module docstring)."""
    step = choose_step(end_ts - start_ts, step_s)
    first = client.first_count_ts(camera)
    if first is not None and first <= start_ts + step:
        rows = [_from_count(m) for _, m in client.counts_between(camera, start_ts - 1,
                                                                 end_ts + 1, MAX_RAW_ENTRIES)]
        source = "counts"
    else:
        rows = [_from_rollup(m) for _, m in client.rollups(camera, start_ts - 1, end_ts + 1)]
        source = "rollup"
        if first is not None:  # the newest minutes are in the counts stream at full detail
            rows = [r for r in rows if r["ts"] < first] + [
                _from_count(m) for _, m in client.counts_between(camera, first - 1, end_ts + 1,
                                                                 MAX_RAW_ENTRIES)]
    out = bucket(rows, start_ts, end_ts, step)
    out.update({"camera": camera, "source": source, "start_ts": start_ts, "end_ts": end_ts})
    return out


def _from_count(m: dict[str, Any]) -> dict[str, Any]:
    return {"ts": float(m["capture_ts"]), "w": 1, "count": float(m["count"]),
            "max": float(m["count"]), "m2": m.get("density_m2"),
            "zones": {n: (float(z["count"]), z.get("density_m2"))
                      for n, z in (m.get("zones") or {}).items()}}


def _from_rollup(m: dict[str, Any]) -> dict[str, Any]:
    return {"ts": float(m["start_ts"]), "w": int(m["frames"]), "count": float(m["count_mean"]),
            "max": float(m["count_max"]), "m2": m.get("density_m2_mean"),
            "zones": {n: (float(z["count_mean"]), z.get("density_m2_mean"))
                      for n, z in (m.get("zones") or {}).items()}}


def _mean(total: float, n: float) -> float | None:
    return round(total / n, 4) if n else None


def bucket(rows: list[dict[str, Any]], start_ts: float, end_ts: float,
           step: float) -> dict[str, Any]:
    """Weighted means per ``step``-second bucket from ``start_ts`` (rows: ts, w, count, max, m2,
    zones {name: (count, m2)})."""
    n = max(1, math.ceil((end_ts - start_ts) / step))
    tot = [0.0] * n
    wts = [0.0] * n
    peak: list[float | None] = [None] * n
    m2t = [0.0] * n
    m2w = [0.0] * n
    zones: dict[str, tuple[list[float], list[float], list[float], list[float]]] = {}
    for r in rows:
        i = int((r["ts"] - start_ts) // step)
        if not 0 <= i < n:
            continue
        w = r["w"]
        tot[i] += r["count"] * w
        wts[i] += w
        p = peak[i]
        peak[i] = r["max"] if p is None else max(p, r["max"])
        if r["m2"] is not None:
            m2t[i] += float(r["m2"]) * w
            m2w[i] += w
        for name, (c, zm2) in r["zones"].items():
            zt, zw, zmt, zmw = zones.setdefault(name, ([0.0] * n, [0.0] * n, [0.0] * n,
                                                       [0.0] * n))
            zt[i] += c * w
            zw[i] += w
            if zm2 is not None:
                zmt[i] += float(zm2) * w
                zmw[i] += w
    return {
        "step_s": step,
        "t": [round(start_ts + i * step, 3) for i in range(n)],
        "count": [_mean(tot[i], wts[i]) for i in range(n)],
        "count_max": peak,
        "density_m2": [_mean(m2t[i], m2w[i]) for i in range(n)],
        "zones": {name: {"count": [_mean(zt[i], zw[i]) for i in range(n)],
                         "density_m2": [_mean(zmt[i], zmw[i]) for i in range(n)]}
                  for name, (zt, zw, zmt, zmw) in sorted(zones.items())},
        "frames": int(sum(wts)),
    }


__all__ = ["MAX_POINTS", "bucket", "choose_step", "count_series"]
