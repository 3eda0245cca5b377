"""Inference stage: the one process that imports torch / CUDA. Runs the engines on batch slots.

The run's models are planned first (``plan_models``): the global ``model:`` section
(``model.engine`` / ``model.checkpoint`` / ``model.name``, a released model pulled on first use /
``model.random_init``) and each camera's own ``cameras.<name>.model`` (checkpoint / engine /
name; the rest of the global section applies), one model per distinct file. On start this
process loads one engine per model, logs each model's name and intended scenes from its model
card, reports each engine's geometry to the supervisor (which then creates one batch pool per
model to fit), and runs every queued batch in place, round robin over the pools: tiles are read
from and density maps written to shared memory. Only the tiles that need the model run (a batch
row the motion gate reused has no tile).

Example (what the supervisor does)::

    plan = plan_models(cfg, ["lobby", "door"])
    spawn_child(ctx, ChildSpec("inference", "pipeline.stages.inference:main", stop),
                stage_args, plan.choices, info_q, pool_ready)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.log import get_logger
from engines.yamlconfig import ConfigError
from pipeline.config import AppConfig, ModelConfig
from pipeline.process import StopFlag
from pipeline.stages.common import StageArgs


@dataclass(frozen=True)
class ModelChoice:
    """Which model the run uses, decided before any process starts (so errors come first)."""

    source: str | None
    random_init: str | None
    fallback_reason: str | None = None  # set when random init replaces a missing checkpoint

    @property
    def label(self) -> str:
        if self.random_init:
            return f"RANDOM-INIT {self.random_init} (untrained weights: counts are not meaningful)"
        return str(self.source)


def choose_model(cfg: AppConfig) -> ModelChoice:
    """Resolve ``cfg.model`` to a source file or a random-init spec, or raise ``ConfigError``.

    A configured but missing checkpoint falls back to ``model.random_init`` only when that key is
    set, and the run says so; without it the run fails naming the file.
    """
    m: ModelConfig = cfg.model
    file = cfg.source_file
    if m.name:
        if m.engine or m.checkpoint:
            raise ConfigError(file, "model.name", "set one of model.name, model.checkpoint and "
                                                  "model.engine, not several")
        return ModelChoice(pull_named(m.name, file), None)
    if m.engine:
        if not Path(m.engine).is_file():
            raise ConfigError(file, "model.engine", f"engine file not found: {m.engine}")
        return ModelChoice(m.engine, None)
    if m.checkpoint:
        if Path(m.checkpoint).is_file():
            return ModelChoice(m.checkpoint, None)
        if m.random_init:
            return ModelChoice(None, m.random_init,
                               f"checkpoint {m.checkpoint} not found; model.random_init is set")
        raise ConfigError(file, "model.checkpoint",
                          f"checkpoint file not found: {m.checkpoint} (train one with "
                          f"'crowdstream train', or set model.random_init to run a small "
                          f"randomly initialised model)")
    if m.random_init:
        return ModelChoice(None, m.random_init)
    from engines.models.shipped import general_model_path

    general = general_model_path()
    if general.is_file():  # no model named: the shipped general people-counting model
        return ModelChoice(str(general), None)
    raise ConfigError(file, "model", f"no model: set model.checkpoint, model.engine, model.name "
                                     f"or model.random_init (the shipped general model "
                                     f"{general} is missing from this install)")


def camera_model(cfg: AppConfig, camera: str) -> ModelChoice:
    """The model of a camera that names its own (``cameras.<camera>.model``), or ``ConfigError``
    naming that key."""
    own = cfg.cameras[camera].model
    assert own is not None
    key = f"cameras.{camera}.model"
    if own.name:
        return ModelChoice(pull_named(own.name, cfg.source_file, f"{key}.name"), None)
    path = str(own.engine or own.checkpoint)
    if not Path(path).is_file():
        what = "engine" if own.engine else "checkpoint"
        raise ConfigError(cfg.source_file, f"{key}.{what}",
                          f"{what} file of camera {camera!r} not found: {path}")
    return ModelChoice(path, None)


@dataclass
class ModelPlan:
    """The run's models: one ``ModelChoice`` per distinct model (the first camera's first), and
    which of them counts each camera (camera name -> index into ``choices``)."""

    choices: list[ModelChoice]
    cameras: dict[str, int] = field(default_factory=dict)

    def cameras_of(self, index: int) -> list[str]:
        return [c for c, i in self.cameras.items() if i == index]


def _identity(choice: ModelChoice) -> tuple[str | None, str | None]:
    return (os.path.realpath(choice.source) if choice.source else None), choice.random_init


def plan_models(cfg: AppConfig, cameras: list[str]) -> ModelPlan:
    """The models counting ``cameras``: a camera's own model (``cameras.<name>.model``) or the
    global ``model:`` section (resolved only when some camera uses it); two cameras naming the
    same file share one model (one engine, one batch pool). ``ConfigError`` names a bad key."""
    plan = ModelPlan([])
    seen: dict[tuple[str | None, str | None], int] = {}
    glob: ModelChoice | None = None
    for name in cameras:
        if cfg.cameras[name].model is not None:
            choice = camera_model(cfg, name)
        else:
            glob = glob or choose_model(cfg)
            choice = glob
        key = _identity(choice)
        if key not in seen:
            seen[key] = len(plan.choices)
            plan.choices.append(choice)
        plan.cameras[name] = seen[key]
    return plan


def pull_named(name: str, file: str | None, key: str = "model.name") -> str:
    """The converted checkpoint of the registry model ``name``, downloaded and converted now if
    it is not in the cache yet (progress on stderr); a failure is a ``ConfigError`` on ``key``."""
    from engines.models.hub import HubError, TextProgress, resolve

    try:
        return str(resolve(name, progress_for=lambda label: TextProgress(label)))
    except (HubError, ValueError, OSError) as e:
        raise ConfigError(file, key, f"cannot use the released model {name!r}: {e}") from None


def describe_model(choice: ModelChoice) -> dict[str, str]:
    """The model's name and intended scenes from its card, for the start-up log."""
    if choice.random_init:
        return {"name": choice.random_init, "scenes": "none (random weights)"}
    from engines.modelcard import card_of, scenes_line

    try:
        card = card_of(str(choice.source))
    except (ValueError, OSError, RuntimeError):  # an unreadable card must not stop the run
        card = None
    return {"name": card.name if card else Path(str(choice.source)).name,
            "scenes": scenes_line(card)}


def load(cfg: AppConfig, choice: ModelChoice, text_prompt: str | None = None) -> Any:
    """Load the engine ``choice`` names with the config's backend / precision / device / batch."""
    from engines.backends import load_engine

    m = cfg.model
    # the same cache as `crowdstream calibrate int8`, so a calibrated INT8 engine is found
    cache_dir = str(m.engine_cache_dir)
    return load_engine(choice.source, backend=m.backend, precision=m.precision, device=m.device,
                       max_batch=m.batch, window=m.window, cache_dir=cache_dir,
                       random_init=choice.random_init, text_prompt=text_prompt,
                       threads=cfg.runtime.torch_threads)


def engine_info(engine: Any) -> dict[str, Any]:
    return {"window": tuple(engine.window), "block_size": int(engine.block_size),
            "max_batch": int(engine.max_batch), "engine_id": str(engine.engine_id),
            "description": dict(engine.description)}


def model_prompt(args: StageArgs, index: int, log: Any) -> str | None:
    """The text prompt of model ``index``: the one its cameras agree on, else the model's own."""
    prompts = {args.cfg.cameras[c].text_prompt for i, c in enumerate(args.cameras)
               if args.model_of(i) == index}
    prompt = prompts.pop() if len(prompts) == 1 else None
    if prompt is None and len(prompts) > 1:
        # one engine holds one prompt's text features; per-camera prompts need one engine each
        log.warning("cameras ask for different text prompts; using the model's own",
                    prompts=",".join(sorted(str(p) for p in prompts)))
    return prompt


def _load_all(args: StageArgs, choices: list[ModelChoice], info_q: Any, log: Any) -> list[Any]:
    """Load and warm up one engine per model; report their geometry (and names) to the
    supervisor, or the first error."""
    engines: list[Any] = []
    current = 0
    try:
        for current, choice in enumerate(choices):
            engine = load(args.cfg, choice, model_prompt(args, current, log))
            engines.append(engine)
            engine.warmup(1)
    except Exception as e:
        for engine in engines:
            engine.close()
        if info_q is None:  # a restarted process: child_main reports it, the supervisor restarts
            raise
        # the supervisor fails the run with this one line; the traceback only at DEBUG
        import logging
        import traceback

        from engines.log import error_line

        logging.getLogger("crowdstream.inference").debug(
            "engine load failed:\n%s", "".join(traceback.format_exception(e)).rstrip())
        info_q.put({"error": error_line(e), "model": current})
        raise SystemExit(1) from None
    infos = []
    for choice, engine in zip(choices, engines, strict=True):
        about = describe_model(choice)
        infos.append({**engine_info(engine), "model": about["name"]})
        log.info("engine ready", engine=engine.engine_id, model=choice.label,
                 backend=engine.description.get("backend"),
                 device=engine.description.get("device"))
        log.info("model", **about)
    if info_q is not None:  # None for a restarted process: the pools already fit the engines
        info_q.put({"engines": infos})
    return engines


def main(args: StageArgs, choices: list[ModelChoice], info_q: Any, pool_ready: StopFlag) -> None:
    """Process target: load every model's engine, report, then run batches until stopped."""
    log = get_logger("inference")
    if args.cfg.runtime.torch_threads:
        import torch

        torch.set_num_threads(args.cfg.runtime.torch_threads)
    engines = _load_all(args, choices, info_q, log)
    while not pool_ready.wait(0.2):
        if args.stop.is_set():
            for engine in engines:
                engine.close()
            return
    from pipeline.shm import BatchPool, PoolSet

    pools = PoolSet([BatchPool.attach(m.pool) for m in args.models])
    for pool, engine in zip(pools.pools, engines, strict=True):
        if pool.window != tuple(engine.window) or pool.max_batch > engine.max_batch:
            raise RuntimeError(f"batch pool {pool.window} x {pool.max_batch} does not fit "
                               f"engine {engine.window} x {engine.max_batch}")
    try:
        while not args.stop.is_set():
            got = pools.take_infer(timeout=0.2)
            if got is None:
                continue
            i, slot = got
            pool = pools[i]
            k = pool.tile_count(slot)
            t0 = time.perf_counter_ns()
            if k:  # a batch of reused tiles only goes on to post without the engine
                pool.outputs(slot)[:k] = engines[i].run(pool.tiles(slot)[:k])
            pool.done_infer(slot, time.perf_counter_ns() - t0)
    finally:
        log.info("stopped")
        pools.close()
        for engine in engines:
            engine.close()
