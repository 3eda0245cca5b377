"""A model for one camera: ``crowdstream adapt`` / ``crowdstream snapshot`` on a run config's camera.

``adapt_camera`` gathers what is known about the camera, runs ``engines.train.adapt`` and applies
the guard rail:

- labeled frames from the camera's labels file (``engines.train.sitelabels``; imports from
  labeling tools go through ``engines.train.labelimport`` first), read at full resolution, their
  zone counts masked by the camera's zone polygons (``pipeline.zones.polygon_mask``, the same
  rasteriser the pipeline counts zones with) and everything by its ROI (``load_roi_mask`` of the
  post stage);
- unlabeled footage (a recording or a live URL for N minutes) opened with the camera's own
  settings through ``engines.video`` (the pipeline's decoder, BGR24 as the ingest writes it),
  frames kept by the camera's ``fps`` sampler (``FpsSampler``), each paired with the frame
  ``pair_s`` later;
- the base: ``--base`` (a checkpoint or a released model's name), else the shipped general model
  (``engines/models/shipped/general.pt``) when present, else the camera's current model.

A share of the labeled frames is held back; the adapted model must count them better than the
base, or the camera keeps its base (both figures are reported, the YAML is not touched). With no
labeled frames nothing can be checked: the camera is pointed at the model only when the caller
accepts that (``accept_unverified``). The checkpoint (with its model card, and a JSON report
beside it) goes to ``<run_dir>/adapt/<camera>/``; the config gets ``cameras.<camera>.model:
{checkpoint: ...}`` through the comment-keeping writer (``pipeline.config.write_camera_updates``).

Example::

    out = adapt_camera(AdaptRequest(config=Path("site.yaml"), camera="lobby",
                                    footage="rtsp://cam/1", minutes=10, train_minutes=5))
    print(out.message)
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.log import get_logger
from engines.models.shipped import general_model_path
from engines.redact import redact_url
from engines.train.sitelabels import LabelsError, SiteLabels, labels_path, read_labels
from engines.yamlconfig import ConfigError
from pipeline.config import AppConfig, CameraConfig, load_config

log = get_logger("adapt")

GENERAL_MODEL = general_model_path()  # the shipped general model (engines.models.shipped)
MAX_FOOTAGE_BYTES = 1 << 30  # footage frames are kept in memory: at most this much


class AdaptError(ValueError):
    """What the user asked for cannot be done; the message says what to do instead."""


@dataclass
class AdaptRequest:
    """Everything ``crowdstream adapt`` takes (see ``pipeline.commands.adapt``)."""

    config: Path
    camera: str
    base: str | None = None
    labels: Path | None = None
    imports: Sequence[Path] = ()
    images_dir: Path | None = None
    footage: str | None = None
    minutes: float | None = None  # of footage
    train_minutes: float = 5.0
    steps: int | None = None
    holdout: float = 0.25
    accept_unverified: bool = False
    update_config: bool = True
    out: Path | None = None
    lr: float | None = None  # None: engines.train.adapt's default (by input)
    seed: int = 0
    adabn: bool = False  # re-estimate BatchNorm on the camera's frames first (see engines)
    footage_pairs: int = 60
    pair_s: float = 0.2
    command: str = ""  # the command line, for the model card (URLs redacted here)


@dataclass
class AdaptOutcome:
    """What ``adapt_camera`` did."""

    checkpoint: Path
    base: Path
    accepted: bool  # the camera now counts with the adapted model (or would: update_config off)
    verified: bool  # held-back labeled frames checked it
    base_mae: float | None = None
    adapted_mae: float | None = None
    held_back: int = 0
    config_written: Path | None = None
    message: str = ""
    report: dict[str, Any] = field(default_factory=dict)


# -- inputs ------------------------------------------------------------------------------------


def camera_of(cfg: AppConfig, camera: str) -> CameraConfig:
    if camera not in cfg.cameras:
        raise ConfigError(cfg.source_file, "cameras", f"no camera {camera!r} (cameras: "
                                                      f"{', '.join(cfg.cameras)})")
    return cfg.cameras[camera]


def camera_labels_path(cfg: AppConfig, camera: str, override: Path | None = None) -> Path:
    """``override``, else ``<run_dir>/labels/<camera>/labels.json``."""
    return Path(override) if override else labels_path(cfg.run_dir, camera)


def resolve_base(cfg: AppConfig, camera: str, base: str | None) -> tuple[Path, str]:
    """(checkpoint file, how it was chosen) of the model to adapt from."""
    if base:
        p = Path(base).expanduser()
        if p.is_file():
            return p, f"--base {base}"
        if p.suffix or os.sep in base:
            raise AdaptError(f"--base {base}: no such checkpoint file")
        from pipeline.stages.inference import pull_named

        return Path(pull_named(base, None)), f"released model {base}"
    if GENERAL_MODEL.is_file():
        return GENERAL_MODEL, "the general model"
    m = camera_of(cfg, camera).model or cfg.model
    where = f"cameras.{camera}.model" if camera_of(cfg, camera).model else "model"
    if m.name:
        from pipeline.stages.inference import pull_named

        return Path(pull_named(m.name, cfg.source_file)), f"the camera's model ({m.name})"
    if m.engine:
        raise AdaptError(f"the camera's model is an exported engine ({m.engine}, {where}.engine), "
                         "which cannot be fine-tuned; give --base CHECKPOINT.pt or a released "
                         "model's name")
    if m.checkpoint:
        if not Path(m.checkpoint).is_file():
            raise AdaptError(f"the camera's model {m.checkpoint} ({where}.checkpoint) does not "
                             "exist; give --base")
        return Path(m.checkpoint), f"the camera's model ({where}.checkpoint)"
    raise AdaptError(f"no base model: {GENERAL_MODEL} is not shipped in this build and the "
                     "config names no checkpoint; give --base CHECKPOINT.pt or a released "
                     "model's name ('crowdstream models list')")


def roi_fn(cam: CameraConfig) -> Any:
    """The camera's ROI as a mask function of the density grid (the post stage's own)."""
    if not cam.roi_mask:
        return None
    from pipeline.stages.post import load_roi_mask

    path = cam.roi_mask
    if not Path(path).is_file():
        raise AdaptError(f"roi_mask {path}: file not found")

    def fn(map_shape: tuple[int, int], frame_size: tuple[int, int], cell: float) -> np.ndarray:
        return load_roi_mask(path, map_shape)

    return fn


def zone_fn(polygon: Sequence[Sequence[float]]) -> Any:
    """A zone polygon as a mask function of the density grid (``pipeline.zones``'s own)."""
    from pipeline.zones import polygon_mask

    poly = [tuple(p) for p in polygon]

    def fn(map_shape: tuple[int, int], frame_size: tuple[int, int], cell: float) -> np.ndarray:
        return polygon_mask(poly, map_shape, frame_size, cell)

    return fn


def labeled_frames(labels: SiteLabels, cam: CameraConfig) -> list[Any]:
    """The labeled entries as ``LabeledFrame`` (RGB at full size, zone masks attached)."""
    import cv2

    from engines.train.adapt import LabeledFrame

    zones = {z.name: z.polygon for z in cam.zones}
    out = []
    for i, e in enumerate(labels.entries):
        if e.kind == "unlabeled":
            continue
        where = f"{labels.path}: images[{i}] ({e.image})"
        bgr = cv2.imread(str(labels.image_path(e)), cv2.IMREAD_COLOR)
        if bgr is None:
            raise AdaptError(f"{where}: image {labels.image_path(e)} missing or unreadable")
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        h, w = rgb.shape[:2]
        if e.points is not None and len(e.points) and (
                e.points[:, 0].max() >= w or e.points[:, 1].max() >= h):
            raise AdaptError(f"{where}: points outside the {w}x{h} image (labels must be in "
                             "pixels of the saved image)")
        zc = {}
        for zname, n in (e.zone_counts or {}).items() if e.kind == "zones" else ():
            if zname not in zones:
                have = ", ".join(zones) or "none"
                raise AdaptError(f"{where}: zone {zname!r} is not a zone of the camera (its "
                                 f"zones: {have})")
            zc[zname] = (zone_fn(zones[zname]), n)
        out.append(LabeledFrame(e.image, rgb, e.points, e.count, zc))
    return out


def footage_pairs(cam: CameraConfig, url: str, minutes: float | None, *, max_pairs: int = 60,
                  pair_s: float = 0.2, say: Callable[[str], None] = print) -> list[Any]:
    """Frame pairs of a recording or a live source, decoded as the pipeline decodes the camera.

    Frames are kept by the camera's ``fps`` sampler; one every ``span / max_pairs`` seconds of
    source time becomes the first of a pair, with the first decoded frame at least ``pair_s``
    later. A file is read for its first ``minutes`` (default: all of it), a live source for
    ``minutes`` of wall time.
    """
    from engines.train.adapt import FootagePair
    from engines.video import (
        FpsSampler,
        SourceError,
        count_frames,
        frame_duration_s,
        is_live,
        iter_video_frames,
        open_source,
    )

    live = is_live(url)
    if live and not minutes:
        raise AdaptError(f"--footage {redact_url(url)} is live: give --minutes N (how long to "
                         "record it)")
    src = cam.model_copy(update={"url": url})
    try:
        container = open_source(src)
    except SourceError as e:
        raise AdaptError(f"--footage: {e}") from None
    try:
        fdur = frame_duration_s(container)
        if minutes:
            span = minutes * 60.0
        else:
            span = count_frames(src) * fdur
        interval = span / max(1, max_pairs)
        sampler = FpsSampler(cam.fps)
        pairs: list[Any] = []
        pending: tuple[float, np.ndarray] | None = None
        t_first: float | None = None
        next_anchor = 0.0
        wall0 = time.monotonic()
        stall = cam.reconnect.stall_timeout_s if live else None
        budget = max(1, max_pairs)
        for i, frame in enumerate(iter_video_frames(container, stall_timeout_s=stall)):
            t = float(frame.time) if frame.time is not None else i * fdur
            t_first = t if t_first is None else t_first
            rel = t - t_first
            if rel >= span - 0.5 * fdur or (live and time.monotonic() - wall0 >= span):
                break
            if pending is not None and rel - pending[0] >= pair_s - 1e-6:
                pairs.append(FootagePair(pending[1], _rgb(frame), rel - pending[0]))
                pending = None
                if len(pairs) % 10 == 0:
                    say(f"footage: {len(pairs)} frame pairs ({rel:.0f} s of {span:.0f} s)")
                if len(pairs) >= budget:
                    break
            if sampler.keep(t) and pending is None and rel >= next_anchor:
                img = _rgb(frame)
                if len(pairs) == 0:
                    budget = min(max_pairs, max(1, MAX_FOOTAGE_BYTES // (2 * img.nbytes)))
                pending = (rel, img)
                next_anchor += interval
    except SourceError as e:
        if not pairs:
            raise AdaptError(f"--footage: {e}") from None
        log.warning("footage ended early", reason=str(e), pairs=len(pairs))
    finally:
        container.close()
    if not pairs:
        raise AdaptError(f"--footage {redact_url(url)}: no frame pairs decoded (too short, or "
                         "the camera's fps keeps no frame)")
    return pairs


def _rgb(frame: Any) -> np.ndarray:
    # BGR24 through the same libswscale conversion the ingest uses, then RGB
    return np.ascontiguousarray(frame.to_ndarray(format="bgr24")[:, :, ::-1])


def check_sizes(cam: CameraConfig, labeled: Sequence[Any], footage: Sequence[Any]) -> None:
    """Every frame must be the camera's frame at full resolution (one size, the file's own)."""
    from engines.video import probe_video

    probe = probe_video(cam)
    want = (probe.height, probe.width) if probe is not None else None
    for name, img in [(f.name, f.rgb) for f in labeled] + [("footage", p.first)
                                                            for p in footage[:1]]:
        size = img.shape[:2]
        if want is None:
            want = size
        if size != want:
            raise AdaptError(f"{name} is {size[1]}x{size[0]} but the camera's frames are "
                             f"{want[1]}x{want[0]}: label frames saved at the camera's full "
                             "resolution ('crowdstream snapshot')")


# -- the command -------------------------------------------------------------------------------


@dataclass
class _Inputs:
    """What is known about the camera, loaded and checked."""

    cfg: AppConfig
    cam: CameraConfig
    frames: list[Any]  # LabeledFrame
    footage: list[Any]  # FootagePair
    base_path: Path
    base: Any
    base_meta: dict[str, Any]


def _gather(req: AdaptRequest, say: Callable[[str], None]) -> _Inputs:
    """Imports, labels, base and footage; every input error comes before any training."""
    from engines.checkpoint import load_checkpoint
    from engines.train.labelimport import import_export

    cfg = load_config(req.config)
    cam = camera_of(cfg, req.camera)
    lpath = camera_labels_path(cfg, req.camera, req.labels)
    for exp in req.imports:
        say(import_export(exp, lpath, req.camera, images_dir=req.images_dir).summary())
    try:
        labels = read_labels(lpath, req.camera, missing_ok=True)
    except LabelsError as e:
        raise AdaptError(str(e)) from None
    if not labels.labeled() and not req.footage:
        raise AdaptError(f"nothing to adapt from: no labeled frames in {lpath} and no --footage "
                         "(label frames saved with 'crowdstream snapshot', import them with "
                         "'crowdstream labels import', or give --footage)")
    if not labels.labeled() and not req.accept_unverified and req.update_config:
        raise AdaptError("footage only: with no labeled frames nothing can check the adapted "
                         "model against the base; pass --accept-unverified to point the camera at "
                         "it anyway (or label a few frames)")
    frames = labeled_frames(labels, cam)  # bad labels fail before anything is loaded
    base_path, how = resolve_base(cfg, req.camera, req.base)
    base, base_meta = load_checkpoint(base_path)
    say(f"camera {req.camera}: adapting {base_path} ({how})")
    footage = []
    if req.footage:
        footage = footage_pairs(cam, req.footage, req.minutes, max_pairs=req.footage_pairs,
                                pair_s=req.pair_s, say=say)
        say(f"footage: {len(footage)} frame pairs from {redact_url(req.footage)}")
    check_sizes(cam, frames, footage)
    return _Inputs(cfg, cam, frames, footage, base_path, base, base_meta)


def adapt_camera(req: AdaptRequest, say: Callable[[str], None] = print,
                 on_step: Callable[[int, float, dict[str, float]], None] | None = None
                 ) -> AdaptOutcome:
    """Adapt, check on the held-back frames and (when better) point the camera at the model."""
    from engines.train.adapt import Adapter, AdaptSettings, score, split_holdout

    inp = _gather(req, say)
    cfg = inp.cfg
    train, held = split_holdout(inp.frames, req.holdout, req.seed)
    if inp.frames and not train and not inp.footage:
        raise AdaptError(f"one labeled frame is held back to check the result, which leaves "
                         f"nothing to train on: label at least 2 frames (have "
                         f"{len(inp.frames)}) or add --footage")
    say(f"labeled frames: {len(train)} to train on ({_kinds(train)}), {len(held)} held back "
        "to check the result")
    settings = AdaptSettings(lr=req.lr, steps=req.steps, time_limit_s=req.train_minutes * 60,
                             overlap=cfg.model.overlap, window=cfg.model.window, seed=req.seed,
                             adabn=req.adabn)
    roi = roi_fn(inp.cam)
    result = Adapter(inp.base, settings, roi, on_step=on_step).run(train, inp.footage)
    say(f"adapted: {result.steps} steps in {result.seconds:.0f} s; last losses "
        + ", ".join(f"{k} {v:.3g}" for k, v in result.mean_parts().items()))
    base_s = adapted_s = None
    if held:
        kw = {"overlap": cfg.model.overlap, "window": cfg.model.window}
        base_s = score(inp.base, held, roi, **kw)
        adapted_s = score(result.model, held, roi, **kw)
    better = base_s is not None and adapted_s is not None and adapted_s.mae < base_s.mae
    accepted = better or (not held and req.accept_unverified)
    outcome = _save(req, inp, train, held, result, settings, base_s, adapted_s, accepted)
    if held and not better:
        outcome.message = (f"camera {req.camera} keeps its base model: the adapted model is not "
                           f"better on the {_figures(outcome)}; nothing written to {req.config} "
                           f"(the rejected model is at {outcome.checkpoint})")
    elif not req.update_config or not accepted:
        outcome.message = (f"adapted model written to {outcome.checkpoint} "
                           f"({_figures(outcome)}); {req.config} left as it is")
    else:
        _point_camera(req, outcome)
    return outcome


def _save(req: AdaptRequest, inp: _Inputs, train: Sequence[Any], held: Sequence[Any],
          result: Any, settings: Any, base_s: Any, adapted_s: Any, accepted: bool
          ) -> AdaptOutcome:
    """The adapted checkpoint with its card and metadata, and the JSON report beside it."""
    from engines.checkpoint import file_hash, save_checkpoint

    out_path = req.out or (Path(inp.cfg.run_dir) / "adapt" / req.camera /
                           f"{req.camera}-adapted-{time.strftime('%Y%m%d-%H%M%S')}.pt")
    report = _report(req, inp.base_path, file_hash(inp.base_path), train, held, inp.footage,
                     result, settings, base_s, adapted_s, accepted)
    card = _card(req, inp.base_meta, inp.base_path, str(getattr(inp.base.spec, "name", "") or ""),
                 train, held, inp.footage, settings, result, base_s, adapted_s)
    save_checkpoint(out_path, result.model, {"adapted": report}, card=card)
    out_path.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    return AdaptOutcome(out_path, inp.base_path, accepted, bool(held),
                        base_s.mae if base_s else None, adapted_s.mae if adapted_s else None,
                        len(held), report=report)


def _figures(o: AdaptOutcome) -> str:
    if not o.verified:
        return "unverified: no labeled frames to check it against the base"
    return (f"held-back frames ({o.held_back}): adapted MAE {o.adapted_mae:.2f}, base MAE "
            f"{o.base_mae:.2f}")


def _point_camera(req: AdaptRequest, o: AdaptOutcome) -> None:
    """``cameras.<camera>.model: {checkpoint: ...}`` in the config, comments kept."""
    from pipeline.config import write_camera_updates

    rel = os.path.relpath(o.checkpoint.resolve(), Path(req.config).resolve().parent)
    note = (f"crowdstream adapt {time.strftime('%Y-%m-%d')}: from {o.base.name}; "
            + (f"held-back MAE {o.adapted_mae:.2f} vs base {o.base_mae:.2f}" if o.verified
               else "unverified (footage only)"))
    target, kept = write_camera_updates(req.config, req.camera, {"model": {"checkpoint": rel}},
                                        {"model": note}, copy_suffix=".adapted")
    o.config_written = target
    o.message = (f"camera {req.camera} now counts with {o.checkpoint} ({_figures(o)}); "
                 f"cameras.{req.camera}.model.checkpoint set in {target}"
                 + ("" if kept else " (a full copy without comments: the original's layout is "
                                    "beyond the in-place editor)"))


def _kinds(frames: Sequence[Any]) -> str:
    kinds: dict[str, int] = {}
    for f in frames:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in kinds.items()) or "none"


def _fig(s: Any) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"mae": round(s.mae, 4), "rmse": round(s.rmse, 4), "frames": [
        {"image": f.name, "kind": f.kind, "true": round(f.true, 3), "pred": round(f.pred, 3)}
        for f in s.frames]}


def _report(req: AdaptRequest, base: Path, base_sha: str, train: Sequence[Any],
            held: Sequence[Any], footage: Sequence[Any], result: Any, settings: Any,
            base_s: Any, adapted_s: Any, accepted: bool) -> dict[str, Any]:
    """Plain data about the run (checkpoint metadata and the JSON beside it)."""
    return {"camera": req.camera, "config": str(req.config), "base": str(base),
            "base_sha256": base_sha, "train_frames": [f.name for f in train],
            "held_back": [f.name for f in held], "kinds": _kinds(train),
            "footage": redact_url(req.footage) if req.footage else None,
            "footage_pairs": len(footage), "steps": result.steps,
            "seconds": round(result.seconds, 1), "losses": result.mean_parts(),
            "settings": {"lr": settings.lr_for(bool(train)), "steps": settings.steps,
                         "time_limit_s": settings.time_limit_s,
                         "rank_weight": settings.rank_weight,
                         "temporal_weight": settings.temporal_weight,
                         "anchor_weight": settings.anchor_for(bool(train)),
                         "holdout": req.holdout, "seed": req.seed},
            "base_scores": _fig(base_s), "adapted_scores": _fig(adapted_s),
            "verified": bool(held), "accepted": accepted}


def _card(req: AdaptRequest, base_meta: dict[str, Any], base_path: Path, spec_name: str,
          train: Sequence[Any], held: Sequence[Any], footage: Sequence[Any], settings: Any,
          result: Any, base_s: Any, adapted_s: Any) -> Any:
    from engines.modelcard import Figure, ModelCard, card_from_metadata

    try:
        bcard = card_from_metadata(base_meta)
    except ValueError:
        bcard = None
    bname = bcard.name if bcard else (spec_name or base_path.stem)
    trained_on = list(bcard.trained_on) if bcard else [f"{base_path.name} (no card)"]
    if train:
        trained_on.append(f"camera {req.camera}: {len(train)} labeled frames ({_kinds(train)})")
    if footage:
        trained_on.append(f"camera {req.camera}: {len(footage)} unlabeled frame pairs of "
                          f"{redact_url(req.footage or '')}")
    figures = []
    if adapted_s is not None and base_s is not None:
        figures.append(Figure(dataset=f"camera {req.camera}: {len(held)} held-back labeled frames",
                              mae=round(adapted_s.mae, 4), rmse=round(adapted_s.rmse, 4),
                              images=len(held), source="measured here (crowdstream adapt)",
                              note=f"base {bname} on the same frames: MAE {base_s.mae:.4g}, "
                                   f"RMSE {base_s.rmse:.4g}"))
    summary = (f"{bname} adapted to camera {req.camera!r} of {Path(req.config).name} by "
               f"crowdstream adapt ({_kinds(train) if train else 'no labels'}"
               + (", footage" if footage else "") + ")"
               + ("" if held else "; unverified: no labeled frames checked it"))
    return ModelCard(
        name=f"{bname}@{req.camera}", summary=summary, trained_on=tuple(trained_on),
        recipe=(f"{settings.describe(bool(train), bool(footage))}; {result.steps} steps in "
                f"{result.seconds:.0f} s on the camera's frames at full resolution, tiled as "
                "the pipeline tiles them"),
        command=req.command or f"crowdstream adapt {req.camera} --config {req.config}",
        figures=tuple(figures), scenes=(f"camera {req.camera} only (its view, as adapted)",),
        not_for=("other cameras: adapted to one camera's view",
                 *(bcard.not_for if bcard else ())),
        licence=bcard.licence if bcard else "", attribution=bcard.attribution if bcard else "",
        source=f"adapted here from {base_path}")


def redacted_command(argv: Sequence[str]) -> str:
    """The command line for a model card, with any password in a URL removed."""
    return shlex.join(redact_url(a) if "://" in a else a for a in argv)


# -- snapshot ----------------------------------------------------------------------------------


def snapshot(cfg: AppConfig, camera: str, labels_file: Path | None = None, *, at_s: float = 0.0,
             count: int = 1, every_s: float = 1.0, say: Callable[[str], None] = print
             ) -> list[Path]:
    """Save ``count`` frames of the camera (from ``at_s`` seconds of a file, ``every_s`` apart)
    as JPEG beside its labels file, each added as an entry with no labels yet."""
    import cv2

    from engines.train.sitelabels import LabelEntry, write_labels
    from engines.video import SourceError, is_live, iter_video_frames, open_source

    cam = camera_of(cfg, camera)
    lpath = camera_labels_path(cfg, camera, labels_file)
    labels = read_labels(lpath, camera, missing_ok=True)
    live = is_live(cam.url)
    try:
        container = open_source(cam)
    except SourceError as e:
        raise AdaptError(f"camera {camera}: {e}") from None
    saved: list[Path] = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    next_t: float | None = None
    t0: float | None = None
    try:
        stall = cam.reconnect.stall_timeout_s if live else None
        for i, frame in enumerate(iter_video_frames(container, stall_timeout_s=stall)):
            t = float(frame.time) if frame.time is not None else float(i)
            t0 = t if t0 is None else t0
            rel = t - t0
            if next_t is None:
                next_t = 0.0 if live else at_s  # a live source has no position: from now
            if rel + 1e-6 < next_t:
                continue
            bgr = frame.to_ndarray(format="bgr24")
            name = _free_name(lpath.parent, f"{camera}-{stamp}-f{i:06d}.jpg")
            lpath.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(lpath.parent / name), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise AdaptError(f"cannot write {lpath.parent / name}")
            labels = labels.upsert(LabelEntry(name))
            saved.append(lpath.parent / name)
            say(f"saved {lpath.parent / name} ({bgr.shape[1]}x{bgr.shape[0]}, frame {i}, "
                f"{rel:.2f} s)")
            next_t += every_s
            if len(saved) >= count:
                break
    except SourceError as e:
        if not saved:
            raise AdaptError(f"camera {camera}: {e}") from None
    finally:
        container.close()
    if len(saved) < count:
        what = f"{len(saved)} of {count} frames" if saved else "no frame"
        if not saved:
            raise AdaptError(f"camera {camera}: {what} at {at_s:g} s or later (the source ends "
                             "before)")
        say(f"note: the source ended after {what}")
    write_labels(labels)
    return saved


def _free_name(folder: Path, name: str) -> str:
    stem, suffix = os.path.splitext(name)
    k = 1
    while (folder / name).exists():
        k += 1
        name = f"{stem}-{k}{suffix}"
    return name


__all__ = ["AdaptError", "AdaptOutcome", "AdaptRequest", "GENERAL_MODEL", "adapt_camera",
           "camera_labels_path", "check_sizes", "footage_pairs", "labeled_frames",
           "redacted_command", "resolve_base", "roi_fn", "snapshot", "zone_fn"]
