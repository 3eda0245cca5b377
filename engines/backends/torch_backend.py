"""torch backend: eager on CPU; on CUDA fp16 autocast, channels_last and CUDA graphs.

On CUDA a graph is captured per fixed batch size (powers of two up to ``max_batch``, plus
``max_batch``); a batch of ``n`` tiles is copied into the smallest captured size that holds it
and the graph replayed, which removes the per-kernel launch cost that dominates small batches.
cuDNN autotuning is on for CUDA engines: the window and batch sizes are fixed, so the search
pays once, during warm-up.

``precision`` is fp32, fp16 or bf16 (autocast; bf16 is for direct use and the GPU check
``benchmarks/gpu_check.py``, the run config offers fp32 / fp16); ``channels_last`` and
``cuda_graphs`` can be turned off one by one so each can be measured against plain fp32.

Example::

    engine = TorchEngine(model, device="cpu", max_batch=8)
    maps = engine.run(tiles)            # (n, 1, H/8, W/8)
    plain = TorchEngine(model, device="cuda", channels_last=False, cuda_graphs=False)
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from engines.backends.base import Engine, EngineError, make_description
from engines.log import get_logger

log = get_logger("engine.torch")

TORCH_PRECISIONS = ("fp32", "fp16", "bf16")


def graph_batch_sizes(max_batch: int) -> list[int]:
    """Batch sizes that get a CUDA graph: 1, 2, 4, ... below ``max_batch``, and ``max_batch``."""
    sizes = {max_batch}
    b = 1
    while b < max_batch:
        sizes.add(b)
        b *= 2
    return sorted(sizes)


class TorchEngine(Engine):
    """An ``nn.Module`` following the model contract, behind the Engine interface."""

    def __init__(self, model: Any, *, device: str = "cpu", precision: str = "fp32",
                 max_batch: int = 8, window: tuple[int, int] | None = None,
                 checkpoint_hash: str | None = None, source: str | None = None,
                 cuda_graphs: bool = True, threads: int | None = None,
                 channels_last: bool | None = None) -> None:
        import torch

        self._torch = torch
        spec = getattr(model, "spec", None)
        block = getattr(model, "block_size", None) or getattr(spec, "block_size", None)
        if block is None:
            raise EngineError("torch backend: the model has no block_size (expected a model from "
                              "engines.models.create_model)")
        self.block_size = int(block)
        win = window or (tuple(spec.window) if spec is not None else None)
        if win is None:
            raise EngineError("torch backend: no window given and the model spec has none")
        self.window = (int(win[0]), int(win[1]))
        if self.window[0] % self.block_size or self.window[1] % self.block_size:
            raise EngineError(f"window {self.window} is not a multiple of the model's block size "
                              f"{self.block_size}")
        if max_batch < 1:
            raise EngineError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = int(max_batch)
        if precision not in TORCH_PRECISIONS:
            raise EngineError(f"torch backend runs fp32 (CPU, CUDA) or fp16 / bf16 (CUDA), not "
                              f"{precision}; int8 engines come from `crowdstream calibrate int8` "
                              "and run on onnx / tensorrt")
        self._cuda = device.startswith("cuda")
        if not self._cuda and device != "cpu":
            raise EngineError(f"unknown device {device!r} (expected cpu, cuda or cuda:N)")
        if self._cuda and not torch.cuda.is_available():
            raise EngineError(f"device {device} requested but torch sees no CUDA GPU "
                              f"(torch {torch.__version__}); use device cpu")
        if precision != "fp32" and not self._cuda:
            raise EngineError(f"{precision} needs a GPU: use precision fp32 on CPU (or int8 via "
                              "onnx)")
        if threads and not self._cuda:
            torch.set_num_threads(int(threads))
        self.precision = precision
        self._autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self._device = torch.device(device)
        # NHWC lets cuDNN pick tensor-core convolution kernels for fp16 (default on CUDA).
        self._channels_last = self._cuda if channels_last is None else bool(channels_last)
        self._format = torch.channels_last if self._channels_last else torch.contiguous_format
        # Set both ways: the module is moved in place, so another engine may have left it NHWC.
        model = model.eval().to(self._device).to(memory_format=self._format)
        if self._cuda:
            # Fixed window and batch sizes: cuDNN's algorithm search runs once per shape, in
            # warm-up, and then every batch gets the fastest kernels.
            torch.backends.cudnn.benchmark = True
        self._model = model
        self._use_graphs = bool(cuda_graphs and self._cuda)
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}  # size -> (graph, static_in, static_out)
        self._sizes = graph_batch_sizes(self.max_batch)
        tag = f"{checkpoint_hash or source or id(model)}|{precision}|{device}|{self.window}"
        self.engine_id = f"torch-{precision}-{hashlib.sha256(tag.encode()).hexdigest()[:12]}"
        self.description = make_description(
            backend="torch", precision=precision, device=device, window=self.window,
            block_size=self.block_size, max_batch=self.max_batch,
            checkpoint_hash=checkpoint_hash, source=source, spec=spec,
            cuda_graphs=self._use_graphs, channels_last=self._channels_last,
            text_prompt=spec.text_prompt if getattr(model, "text_prompted", False) else None,
            threads=torch.get_num_threads() if not self._cuda else None)

    # -- eager ---------------------------------------------------------------------------
    def _forward(self, x: Any) -> Any:
        torch = self._torch
        # Autocast's weight-cast cache must be off under CUDA graph capture: cached casts made
        # during capture would be freed memory at replay.
        with torch.autocast(device_type="cuda", dtype=self._autocast_dtype or torch.float16,
                            enabled=self._cuda and self._autocast_dtype is not None,
                            cache_enabled=not self._use_graphs):
            return self._model(x)

    def _run_eager(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if self._cuda:
                x = x.to(self._device, non_blocking=False).contiguous(memory_format=self._format)
            y = self._forward(x)
            return y.float().cpu().numpy()

    # -- CUDA graphs (not reachable on a CPU-only machine) ---------------------------------
    def _capture(self, size: int) -> tuple[Any, Any, Any]:
        torch = self._torch
        # mid-grey, not zeros: zeros can run faster than real data and bias cuDNN's timing of
        # candidate kernels in the warm-up below
        static_in = torch.full((size, 3, *self.window), 0.5, device=self._device).contiguous(
            memory_format=self._format)
        # torch.cuda.graph captures on a stream of the *current* device: make it this engine's
        # (a graph captured on cuda:0's stream would not hold the kernels of a cuda:1 engine).
        with torch.cuda.device(self._device), torch.no_grad():
            stream = torch.cuda.Stream(device=self._device)
            stream.wait_stream(torch.cuda.current_stream(self._device))
            # Warm up on a side stream so cuDNN/cuBLAS workspaces exist before capture.
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self._forward(static_in)
            torch.cuda.current_stream(self._device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
        torch.cuda.synchronize(self._device)
        log.info("cuda_graph_captured", batch=size, window=f"{self.window[0]}x{self.window[1]}",
                 precision=self.precision)
        return graph, static_in, static_out

    def _run_graph(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        n = batch.shape[0]
        size = next(s for s in self._sizes if s >= n)
        if size not in self._graphs:
            self._graphs[size] = self._capture(size)
        graph, static_in, static_out = self._graphs[size]
        with torch.cuda.device(self._device), torch.no_grad():
            # Rows n..size keep stale tiles; their outputs are discarded (eval-mode model, no
            # cross-sample coupling), so no need to clear them.
            static_in[:n].copy_(torch.from_numpy(batch).to(self._device))
            graph.replay()
            return static_out[:n].float().cpu().numpy()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._use_graphs:
            return self._run_graph(batch)
        return self._run_eager(batch)

    def warmup(self, iterations: int = 2) -> None:
        """Eager: a few full batches. CUDA graphs: capture every fixed size now, not mid-stream."""
        if self._use_graphs:
            for size in self._sizes:
                self.run(np.full((size, 3, *self.window), 0.5, dtype=np.float32))
            return
        super().warmup(iterations)

    def close(self) -> None:
        self._graphs.clear()
