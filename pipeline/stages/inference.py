"""Inference stage: the one process that imports torch / CUDA. Runs the engine on batch slots.

On start it loads the engine (``model.engine`` / ``model.checkpoint`` / ``model.name``, a released
model pulled on first use / ``model.random_init``), logs the model's name and intended scenes from
its model card, reports its geometry to the supervisor (which then creates the batch pool to fit), and runs every
queued batch in place: tiles are read from and density maps written to shared memory.

Example (what the supervisor does)::

    spawn_child(ctx, ChildSpec("inference", "pipeline.stages.inference:main", stop),
                stage_args, choice, info_q, pool_ready)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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
    refuse_camera_models(cfg)
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


def refuse_camera_models(cfg: AppConfig) -> None:
    """Until the inference stage holds one engine per model, a camera naming its own model
    (``cameras.<name>.model``) must not be counted by the global one: refuse the config."""
    for name, cam in cfg.cameras.items():
        if cam.enabled and cam.model is not None:
            raise ConfigError(cfg.source_file, f"cameras.{name}.model",
                              f"per-camera models: camera {name!r} names its own model "
                              f"({cam.model.source}), not yet supported by this build; run it "
                              "with that file as the top-level model: section, or remove "
                              f"cameras.{name}.model")


def pull_named(name: str, file: str | None) -> str:
    """The converted checkpoint of the registry model ``name``, downloaded and converted now if
    it is not in the cache yet (progress on stderr); a failure is a ``ConfigError``."""
    from engines.models.hub import HubError, TextProgress, resolve

    try:
        return str(resolve(name, progress_for=lambda label: TextProgress(label)))
    except (HubError, ValueError, OSError) as e:
        raise ConfigError(file, "model.name", f"cannot use the released model {name!r}: {e}") \
            from None


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


def main(args: StageArgs, choice: ModelChoice, info_q: Any, pool_ready: StopFlag) -> None:
    """Process target: load, report, then run batches until stopped."""
    log = get_logger("inference")
    if args.cfg.runtime.torch_threads:
        import torch

        torch.set_num_threads(args.cfg.runtime.torch_threads)
    prompts = {c.text_prompt for c in args.cfg.cameras.values() if c.enabled}
    prompt = prompts.pop() if len(prompts) == 1 else None
    if prompt is None and len(prompts) > 1:
        # one engine holds one prompt's text features; per-camera prompts need one engine each
        log.warning("cameras ask for different text prompts; using the model's own",
                    prompts=",".join(sorted(str(p) for p in prompts)))
    try:
        engine = load(args.cfg, choice, prompt)
        engine.warmup(1)
    except Exception as e:
        if info_q is None:  # a restarted process: child_main reports it, the supervisor restarts
            raise
        # the supervisor fails the run with this one line; the traceback only at DEBUG
        import logging
        import traceback

        from engines.log import error_line

        logging.getLogger("crowdstream.inference").debug(
            "engine load failed:\n%s", "".join(traceback.format_exception(e)).rstrip())
        info_q.put({"error": error_line(e)})
        raise SystemExit(1) from None
    if info_q is not None:  # None for a restarted process: the pool already fits the engine
        info_q.put(engine_info(engine))
    log.info("engine ready", engine=engine.engine_id, model=choice.label,
             backend=engine.description.get("backend"), device=engine.description.get("device"))
    log.info("model", **describe_model(choice))
    while not pool_ready.wait(0.2):
        if args.stop.is_set():
            return
    from pipeline.shm import BatchPool

    pool = BatchPool.attach(args.pool)
    if pool.window != tuple(engine.window) or pool.max_batch > engine.max_batch:
        raise RuntimeError(f"batch pool {pool.window} x {pool.max_batch} does not fit engine "
                           f"{engine.window} x {engine.max_batch}")
    try:
        while not args.stop.is_set():
            slot = pool.take_infer(timeout=0.2)
            if slot is None:
                continue
            n = pool.count(slot)
            t0 = time.perf_counter_ns()
            out = engine.run(pool.tiles(slot)[:n])
            pool.outputs(slot)[:n] = out
            pool.done_infer(slot, time.perf_counter_ns() - t0)
    finally:
        log.info("stopped")
        pool.close()
        engine.close()
