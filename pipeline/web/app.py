"""The console's HTTP API (``/api/v1``, OpenAPI at ``/api/v1/openapi.json``) and its pages.

Reads go to Redis through ``pipeline.client.CrowdClient`` (``DataSource``); the live view is one
``LiveHub`` thread fanned out as server-sent events (``/api/v1/events``). Writes change only what
an operator asks for, through the project's one code path for each: zones and calibration into
the run config (``pipeline.commands.calibrate_ground.store_camera_keys`` / ``fit_ground`` /
``store_calibration``: the comment-keeping writer, validated like ``config validate``), then a
reload request to the running pipelines (``CrowdClient.request_reload``); labels into the
camera's labels file (``pipeline.labels``). Nothing served holds a secret: no camera URL (only
its kind), the Redis URL redacted, no webhook.

Example::

    app = create_app(DataSource.from_config("configs/demo.yaml"))
    # GET /api/v1/cameras, /api/v1/cameras/mall/snapshot.jpg, /api/v1/events ...
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from engines.log import get_logger
from engines.yamlconfig import ConfigError
from pipeline.client import CrowdClient, ServerGone
from pipeline.web.hub import LiveHub
from pipeline.web.source import DataSource

STATIC = Path(__file__).parent / "static"
PAGES = {"/": "index.html", "/camera": "camera.html", "/zones": "zones.html",
         "/calibrate": "calibrate.html", "/label": "label.html"}
API_VERSION = "v1"
KEEPALIVE_S = 15.0
RELOAD_WAIT_S = 4.0
log = get_logger("console")


# ---------------------------------------------------------------------------------- bodies
class ZoneIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="Zone name, unique per camera.")
    polygon: list[tuple[float, float]] = Field(
        min_length=3, max_length=200, description="[x, y] in 0..1 of the frame (x right, y down).")


class ZonesIn(BaseModel):
    zones: list[ZoneIn] = Field(max_length=100, description="The camera's zones (all of them: "
                                                            "this replaces its zones: list).")


class GroundPointIn(BaseModel):
    image: tuple[float, float] = Field(description="Frame pixel [x, y] (full resolution).")
    ground: tuple[float, float] = Field(description="Floor position [x, y] in metres.")


class CalibrationIn(BaseModel):
    points: list[GroundPointIn] = Field(min_length=1, max_length=100)
    image_size: tuple[int, int] | None = Field(None, description="[w, h] the points were taken "
                                               "on (default: the camera's frame size).")
    max_error_m: float | None = Field(None, gt=0, le=100, description="Refuse a point farther "
                                      "than this from the fit (default: the config's).")
    grid_m: float = Field(1.0, gt=0, le=100, description="Preview grid spacing (metres).")


class LabelIn(BaseModel):
    points: list[tuple[float, float]] | None = Field(None, max_length=5000,
                                                     description="Head points, image pixels.")
    count: float | None = Field(None, ge=0, description="Or: the whole frame's count.")
    zone_counts: dict[str, float] | None = Field(None, description="Or: counts per zone.")


class Empty(BaseModel):
    pass


# ---------------------------------------------------------------------------------- the app
class Console:
    """What the routes share: the data source and the live hub."""

    def __init__(self, source: DataSource, token_required: bool) -> None:
        self.source = source
        self.hub = LiveHub(source)
        self.token_required = token_required
        self.started = time.time()

    @contextmanager
    def redis(self) -> Iterator[CrowdClient]:
        """The client for one request; 503 (one line) when Redis is not there."""
        import redis

        try:
            yield self.source.client()
        except ServerGone as e:
            raise HTTPException(503, f"Redis: {e}") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            self.source.lost(e)
            raise HTTPException(503, f"Redis: {type(e).__name__}: {e}") from None

    def config(self) -> Any:
        try:
            return self.source.config()
        except ConfigError as e:
            raise HTTPException(409, f"the config does not load: {e}") from None
        except OSError as e:
            raise HTTPException(409, f"the config cannot be read: {e}") from None

    def writable_config(self) -> Any:
        cfg = self.config()
        if cfg is None:
            raise HTTPException(409, "this console was started with --redis only: start it with "
                                     "--config SITE.yaml to change zones, calibration or labels")
        return cfg

    def camera_config(self, camera: str) -> Any:
        cfg = self.config()
        return cfg.cameras.get(camera) if cfg is not None else None

    def known(self, camera: str) -> None:
        if camera in self.hub.cameras or self.camera_config(camera) is not None:
            return
        with self.redis() as c:
            if camera in c.cameras():
                return
        raise HTTPException(404, f"no camera named {camera!r}")


def create_app(source: DataSource, *, token: str | None = None, loopback: bool = True,
               max_body: int = 256 * 1024, rate: float = 100.0, max_clients: int = 32) -> FastAPI:
    """The console app (see the module docstring); ``token``: required by every write."""
    from pipeline.web.security import Guard

    console = Console(source, token is not None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        console.hub.start()
        yield
        console.hub.stop()

    app = FastAPI(title="crowdstream console API", version=API_VERSION, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=f"/api/{API_VERSION}/openapi.json",
                  description="Cameras, counts, heatmaps, zones, calibration and labels of the "
                              "crowdstream pipelines publishing to one Redis. Writes need "
                              "'Authorization: Bearer <token>' when serve.token_env is set.")
    app.state.console = console
    app.add_middleware(Guard, token=token, loopback=loopback, max_body=max_body, rate=rate)
    app.include_router(_read_routes(console))
    app.include_router(_picture_routes(console))
    app.include_router(_write_routes(console))
    app.include_router(_event_routes(console, max_clients))
    app.include_router(_detail_route(console))
    _pages(app)
    return app


def _pages(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for route, name in PAGES.items():
        def page(name: str = name) -> FileResponse:
            return FileResponse(STATIC / name, headers={"cache-control": "no-cache"})
        app.add_api_route(route, page, methods=["GET"], include_in_schema=False)


# ---------------------------------------------------------------------------------- reads
def _camera_info(console: Console, name: str, active: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from engines.video import source_kind

    latest = console.hub.latest.get(name) or {}
    st = console.hub.status.get(name) or {}
    cam = console.camera_config(name)
    alerts = [a for a in active.values() if a.get("camera") == name]
    if not st and cam is not None and not cam.enabled:
        st = {"state": "offline", "reason": "disabled (enabled: false)"}
    return {
        "name": name,
        "state": st.get("state", "unknown"),
        "reason": st.get("reason", ""),
        "state_ts": st.get("ts"),
        "count": latest.get("count"),
        "density_m2": latest.get("density_m2"),
        "frame_index": latest.get("frame_index"),
        "result_ts": latest.get("result_ts"),
        "zones": latest.get("zones", {}),
        "engine_id": latest.get("engine_id"),
        "model": latest.get("model"),
        "snapshot_frame": (latest.get("snapshot") or {}).get("frame_index"),
        "frame_size": latest.get("frame_size"),
        "active_alerts": alerts,
        "configured": cam is not None,
        "calibrated": bool(cam is not None and cam.calibration is not None),
        "source": source_kind(cam.url) if cam is not None else None,
    }


def _read_routes(console: Console) -> APIRouter:
    r = APIRouter(prefix=f"/api/{API_VERSION}", tags=["read"])

    @r.get("/health", summary="The console and its Redis")
    def health() -> dict[str, Any]:
        try:
            console.source.client()  # connect now if not yet (throttled while it fails)
        except ServerGone:
            pass
        st = console.source.status()
        return {"status": "ok" if st["connected"] else "no_redis", "redis": st,
                "cameras": len(console.hub.cameras), "live_clients": console.hub.subscribers,
                "writable": console.source.writable, "token_required": console.token_required,
                "config": str(console.source.config_path) if console.source.config_path else None,
                "uptime_s": round(time.time() - console.started, 1), "api": API_VERSION}

    @r.get("/cameras", summary="Every camera: state, latest count, active alerts")
    def cameras() -> list[dict[str, Any]]:
        with console.redis() as c:
            active = c.active_alerts()
            names = console.hub.cameras or sorted(c.cameras())
        return [_camera_info(console, n, active) for n in names]

    @r.get("/alerts", summary="Alert events, newest last")
    def alerts(camera: str | None = None, limit: int = Query(200, ge=1, le=5000)
               ) -> list[dict[str, Any]]:
        with console.redis() as c:
            return [m for _, m in c.recent_alerts(limit, camera)]

    @r.get("/alerts/active", summary="Alerts in progress")
    def active_alerts() -> list[dict[str, Any]]:
        with console.redis() as c:
            return list(c.active_alerts().values())

    @r.get("/cameras/{camera:path}/latest", summary="The latest count envelope (count.v1)")
    def latest(camera: str) -> dict[str, Any]:
        with console.redis() as c:
            env = c.latest(camera)
        if env is None:
            raise HTTPException(404, f"camera {camera!r} has published nothing")
        return env

    @r.get("/cameras/{camera:path}/counts", summary="Counts over a time range, down-sampled")
    def counts(camera: str, minutes: float | None = Query(None, gt=0, le=60 * 24 * 7),
               start: float | None = Query(None, description="unix time"),
               end: float | None = Query(None, description="unix time (default: now)"),
               step: float | None = Query(None, gt=0, description="bucket seconds")
               ) -> dict[str, Any]:
        from pipeline.web.series import count_series

        end_ts = end or time.time()
        start_ts = start if start is not None else end_ts - 60 * (minutes or 10)
        if start_ts >= end_ts:
            raise HTTPException(422, "start must be before end")
        with console.redis() as c:
            return count_series(c, camera, start_ts, end_ts, step)

    @r.get("/cameras/{camera:path}/zones", summary="The camera's zones (config) and their counts")
    def zones(camera: str) -> dict[str, Any]:
        console.known(camera)
        cam = console.camera_config(camera)
        latest = (console.hub.latest.get(camera) or {}).get("zones", {})
        listed = [{"name": z.name, "polygon": [list(p) for p in z.polygon]}
                  for z in (cam.zones if cam is not None else ())]
        return {"camera": camera, "zones": listed, "latest": latest,
                "writable": console.source.writable}

    @r.get("/cameras/{camera:path}/calibration", summary="The camera's ground calibration")
    def calibration(camera: str) -> dict[str, Any]:
        console.known(camera)
        cam = console.camera_config(camera)
        cal = cam.calibration if cam is not None else None
        if cal is None:
            return {"camera": camera, "calibration": None, "writable": console.source.writable}
        return {"camera": camera, "writable": console.source.writable, "calibration": {
            "points": [{"image": list(p.image), "ground": list(p.ground)} for p in cal.points],
            "image_size": list(cal.image_size) if cal.image_size else None,
            "homography": [list(row) for row in cal.homography] if cal.homography else None,
            "max_reprojection_error_m": cal.max_reprojection_error_m,
            "perspective_map": bool(cal.perspective_map)}}

    @r.get("/cameras/{camera:path}/alert-rules", summary="The camera's alert rules (config)")
    def alert_rules(camera: str) -> list[dict[str, Any]]:
        console.known(camera)
        cam = console.camera_config(camera)
        return [a.model_dump(mode="json") for a in (cam.alerts if cam is not None else ())]

    @r.get("/cameras/{camera:path}/labels", summary="The camera's labels file")
    def labels(camera: str) -> dict[str, Any]:
        from pipeline.labels import LabelError, read_labels

        cfg = console.writable_config()
        try:
            return read_labels(cfg, camera)
        except LabelError as e:
            raise HTTPException(409, str(e)) from None

    return r


def _detail_route(console: Console) -> APIRouter:
    """Last of all routes: ``/cameras/{camera:path}`` would match every longer camera path."""
    r = APIRouter(prefix=f"/api/{API_VERSION}", tags=["read"])

    @r.get("/cameras/{camera:path}", summary="One camera: state, latest count, configuration")
    def camera(camera: str) -> dict[str, Any]:
        console.known(camera)
        with console.redis() as c:
            active = c.active_alerts()
        info = _camera_info(console, camera, active)
        cam = console.camera_config(camera)
        info["zone_polygons"] = [{"name": z.name, "polygon": [list(p) for p in z.polygon]}
                                 for z in (cam.zones if cam is not None else ())]
        return info

    return r


# ---------------------------------------------------------------------------------- pictures
IMAGE_CACHE = {"cache-control": "private, max-age=30"}


def _picture_routes(console: Console) -> APIRouter:
    from pipeline.web import pictures

    r = APIRouter(prefix=f"/api/{API_VERSION}", tags=["pictures"])

    def heatmap_for(c: CrowdClient, camera: str, frame: int | None) -> Any:
        key = c.keys.heatmap(camera, frame) if frame is not None else camera
        return c.heatmap(key)

    def calibration(camera: str) -> Any:
        cam = console.camera_config(camera)
        return cam.calibration if cam is not None else None

    @r.get("/cameras/{camera:path}/snapshot.jpg", summary="The latest JPEG snapshot",
           response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def snapshot(camera: str, full: bool = False) -> Response:
        with console.redis() as c:
            pic = c.snapshot(camera, full=full)
        if pic is None:
            raise HTTPException(404, f"no snapshot of {camera!r} (redis.snapshot_every_s: 0, or "
                                     f"the camera is not counting)")
        return Response(pic.data, media_type="image/jpeg", headers={
            **IMAGE_CACHE, "x-frame-index": str(pic.frame_index)})

    @r.get("/cameras/{camera:path}/heatmap.png", summary="A heatmap: coloured, or raw 16-bit",
           response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def heatmap(camera: str, frame: int | None = Query(None, ge=0),
                style: str = Query("colour", pattern="^(colour|raw)$")) -> Response:
        with console.redis() as c:
            if style == "raw":
                key = c.keys.heatmap(camera, frame) if frame is not None else \
                    (c.latest(camera) or {}).get("heatmap_key")
                data = c.redis.hget(key, "data") if key else None
                if data is None:
                    raise HTTPException(404, "no such heatmap (expired?)")
                return Response(data, media_type="image/png", headers=IMAGE_CACHE)
            hm = heatmap_for(c, camera, frame)
        if hm is None:
            raise HTTPException(404, f"no heatmap of {camera!r}" + (
                f" for frame {frame} (expired?)" if frame is not None else ""))
        return Response(pictures.heatmap_png(hm, calibration(camera)), media_type="image/png",
                        headers=IMAGE_CACHE)

    @r.get("/cameras/{camera:path}/legend.png", summary="The heatmap colours' scale",
           response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def legend(camera: str, height: int = Query(120, ge=40, le=1000)) -> Response:
        with console.redis() as c:
            hm = c.heatmap(camera)
        if hm is None:
            raise HTTPException(404, f"no heatmap of {camera!r} yet")
        return Response(pictures.legend_png(hm, calibration(camera), height),
                        media_type="image/png", headers=IMAGE_CACHE)

    @r.get("/cameras/{camera:path}/overlay.png", summary="Snapshot + heatmap + zones + alerts",
           response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def overlay(camera: str, opacity: float = Query(0.45, ge=0, le=1)) -> Response:
        with console.redis() as c:
            pic = c.snapshot(camera)
            if pic is None:
                raise HTTPException(404, f"no snapshot of {camera!r}")
            hm = c.heatmap(pic.meta["heatmap_key"]) if pic.meta.get("heatmap_key") else None
            latest = c.latest(camera)
            alerts = [a for a in c.active_alerts().values() if a.get("camera") == camera]
        cam = console.camera_config(camera)
        png = pictures.overlay_png(pic, hm, latest, cam.zones if cam is not None else (),
                                   alerts, calibration(camera), opacity)
        return Response(png, media_type="image/png", headers=IMAGE_CACHE)

    @r.get("/cameras/{camera:path}/labels/images/{image}", summary="A saved label frame",
           response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def label_image(camera: str, image: str) -> FileResponse:
        from pipeline.labels import LabelError, image_path

        cfg = console.writable_config()
        try:
            path = image_path(cfg, camera, image)
        except LabelError as e:
            raise HTTPException(404, str(e)) from None
        if not path.is_file():
            raise HTTPException(404, f"no saved frame {image!r}")
        return FileResponse(path, media_type="image/jpeg")

    return r


# ---------------------------------------------------------------------------------- writes
def _reload(console: Console, camera: str) -> dict[str, Any]:
    """Ask the running pipelines to apply the saved config; their replies (or why none)."""
    try:
        with console.redis() as c:
            rid = c.request_reload(camera, origin="console")
            replies = c.control_replies(rid, RELOAD_WAIT_S)
    except HTTPException as e:
        return {"requested": False, "replies": [], "message": f"not requested: {e.detail}"}
    if not replies:
        msg = ("no running pipeline answered: it applies the change when it starts (or on "
               "SIGHUP)")
    else:
        msg = "; ".join(r.get("message", "") for r in replies)
    return {"requested": True, "request_id": rid, "replies": replies,
            "applied": any(r.get("ok") and camera in r.get("applied", []) for r in replies),
            "message": msg}


def _stored(where: Any) -> dict[str, Any]:
    return {"file": str(where.path), "in_place": where.in_place, "note": where.note}


def _write_routes(console: Console) -> APIRouter:
    r = APIRouter(prefix=f"/api/{API_VERSION}", tags=["write"])

    def config_file(camera: str) -> tuple[Any, Path]:
        cfg = console.writable_config()
        if camera not in cfg.cameras:
            raise HTTPException(404, f"no camera {camera!r} in {console.source.config_path}")
        assert console.source.config_path is not None
        return cfg, console.source.config_path

    @r.put("/cameras/{camera:path}/zones", summary="Replace the camera's zones (saved + reloaded)")
    def put_zones(camera: str, body: ZonesIn) -> dict[str, Any]:
        from pipeline.commands.calibrate_ground import store_camera_keys

        _, path = config_file(camera)
        zones = [{"name": z.name, "polygon": [[round(x, 4), round(y, 4)] for x, y in z.polygon]}
                 for z in body.zones]
        try:
            where = store_camera_keys(path, camera, {"zones": zones})
        except ConfigError as e:
            raise HTTPException(422, str(e)) from None
        log.info("zones saved", camera=camera, zones=len(zones), file=str(where.path))
        reload = _reload(console, camera) if where.in_place else {
            "requested": False, "replies": [], "message": "not applied: the run reads "
                                                          f"{path}, the copy went to {where.path}"}
        return {"saved": _stored(where), "reload": reload, "zones": zones}

    def fit(camera: str, body: CalibrationIn) -> tuple[Any, Any, Any]:
        import numpy as np

        from calibrate.ground import CalibrationError
        from pipeline.commands.calibrate_ground import fit_ground

        cfg, path = config_file(camera)
        cam = cfg.cameras[camera]
        size = body.image_size
        if size is None:
            with console.redis() as c:
                pic = c.snapshot(camera)
            if pic is None:
                raise HTTPException(409, "give image_size: no snapshot tells the frame size")
            size = (int(pic.meta["frame_width"]), int(pic.meta["frame_height"]))
        img = np.array([p.image for p in body.points], float).reshape(-1, 2)
        gnd = np.array([p.ground for p in body.points], float).reshape(-1, 2)
        bound = body.max_error_m or (cam.calibration.max_reprojection_error_m
                                     if cam.calibration else 0.25)
        try:
            return fit_ground(img, gnd, tuple(size), bound, store_points=True,
                              zones=cam.zones), cam, path
        except CalibrationError as e:
            detail: dict[str, Any] = {"reason": e.reason, "message": e.message,
                                      "detail": f"refused ({e.reason}): {e.message}"}
            if e.report is not None:
                detail["errors_m"] = [float(v) for v in e.report.errors_m]
                detail["errors_px"] = [float(v) for v in e.report.errors_px]
                detail["lines"] = e.report.lines(img, gnd)
            raise HTTPException(422, detail) from None

    def fit_result(f: Any) -> dict[str, Any]:
        rep = f.cal.report
        return {"lines": f.lines, "errors_m": [float(v) for v in rep.errors_m],
                "errors_px": [float(v) for v in rep.errors_px], "rms_m": float(rep.rms_m),
                "max_m": float(rep.max_m), "exact": bool(rep.exact),
                "horizon_row": f.horizon_row, "image_size": list(f.image_size),
                "homography": f.updates["homography"]}

    @r.post("/cameras/{camera:path}/calibration/fit", summary="Fit ground points (no write)")
    def post_fit(camera: str, body: CalibrationIn) -> dict[str, Any]:
        f, _, _ = fit(camera, body)
        return fit_result(f)

    @r.post("/cameras/{camera:path}/calibration/preview", summary="Fit + the grid preview PNG",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def post_preview(camera: str, body: CalibrationIn) -> Response:
        from pipeline.web.pictures import preview_png

        f, cam, _ = fit(camera, body)
        with console.redis() as c:
            pic = c.snapshot(camera)
        if pic is None:
            raise HTTPException(404, f"no snapshot of {camera!r} to draw on")
        png = preview_png(pic, f.stored, cam.zones, title=f"camera {camera}")
        return Response(png, media_type="image/png", headers={"cache-control": "no-store"})

    @r.put("/cameras/{camera:path}/calibration", summary="Fit and store ground points "
                                                         "(as 'crowdstream calibrate ground')")
    def put_calibration(camera: str, body: CalibrationIn) -> dict[str, Any]:
        from pipeline.commands.calibrate_ground import store_calibration

        f, _, path = fit(camera, body)
        try:
            where = store_calibration(path, camera, f)
        except ConfigError as e:
            raise HTTPException(422, str(e)) from None
        log.info("calibration saved", camera=camera, points=len(body.points),
                 rms_m=round(f.rms_m, 4), file=str(where.path))
        return {**fit_result(f), "saved": _stored(where),
                "reload": _reload(console, camera) if where.in_place else None}

    @r.post("/cameras/{camera:path}/labels/frames", summary="Save the current frame (full "
                                                            "resolution) for labeling")
    def save_frame(camera: str, body: Empty) -> dict[str, Any]:
        from pipeline.labels import save_label_image

        cfg, _ = config_file(camera)
        if cfg.redis.snapshot_every_s <= 0:
            raise HTTPException(409, "the run publishes no snapshots (redis.snapshot_every_s: "
                                     "0): no frame to save")
        with console.redis() as c:
            pic = c.wait_full_frame(camera, timeout_s=10.0)
        if pic is None:
            raise HTTPException(504, f"no full frame of {camera!r} within 10 s (is it counting?)")
        name = save_label_image(cfg, camera, pic.data, pic.frame_index)
        log.info("label frame saved", camera=camera, image=name)
        return {"image": name, "width": pic.meta["width"], "height": pic.meta["height"],
                "frame_index": pic.frame_index}

    @r.put("/cameras/{camera:path}/labels/{image}", summary="Label a saved frame")
    def put_label(camera: str, image: str, body: LabelIn) -> dict[str, Any]:
        import cv2

        from pipeline.labels import LabelError, image_path, set_label

        cfg, _ = config_file(camera)
        try:
            path = image_path(cfg, camera, image)
            img = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
            size = (img.shape[1], img.shape[0]) if img is not None else None
            entry = {"image": image, "points": [list(p) for p in body.points]
                     if body.points is not None else None,
                     "count": body.count, "zone_counts": body.zone_counts}
            stored = set_label(cfg, camera, entry, size)
        except LabelError as e:
            raise HTTPException(422, str(e)) from None
        return {"stored": stored}

    return r


# ---------------------------------------------------------------------------------- live
def _event_routes(console: Console, max_clients: int) -> APIRouter:
    r = APIRouter(prefix=f"/api/{API_VERSION}", tags=["live"])

    @r.get("/events", summary="Server-sent events: counts, status changes, alerts",
           response_class=StreamingResponse)
    async def events(request: Request) -> Response:
        hub = console.hub
        if hub.subscribers >= max_clients:
            return JSONResponse({"detail": f"{max_clients} live clients already "
                                           f"(serve.max_event_clients)"}, status_code=503)
        q = hub.subscribe(asyncio.get_running_loop())

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield _sse(hub.hello())
                while True:
                    try:
                        ev = await asyncio.wait_for(q.get(), KEEPALIVE_S)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield b": keepalive\n\n"
                        continue
                    yield _sse(ev)
            finally:
                hub.unsubscribe(q)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache",
                                          "x-accel-buffering": "no"})

    return r


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


__all__ = ["Console", "create_app"]
