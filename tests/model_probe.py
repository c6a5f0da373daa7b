"""A callback for the QLoRA + ZeRO-3 test: measures ``configure_model`` on each rank and records the model it built.

Per rank it writes ``model-rank<r>.json`` with, right after ``configure_model`` (before DeepSpeed's engine exists):

- ``peak_bytes``: the most CPU memory torch held at once during ``configure_model`` above what it held before, from
  the allocation events of torch's profiler (every torch CPU allocation and free, bnb's quantization included; the
  memory-mapped checkpoint files are not allocations);
- ``params``: per parameter its class, dtype, bytes per element, requires_grad, ZeRO-3 full and local element
  counts and 4-bit quantization state bytes (:func:`describe`);

and, at the start of fit (after ``deepspeed.initialize``), ``params_at_fit_start`` (the same per-parameter view).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch as pl
import torch


def _allocation_peak(prof, mapped_sizes: set[int]) -> int:
    """Largest running total of the profiler's CPU allocation events (bytes above the level at its start).

    safetensors maps each checkpoint file into one storage, which the profiler reports as an allocation of the
    file's size: events of exactly a checkpoint file's size are left out (file-backed pages, not allocated memory).
    """
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
              and e.device_type().name == "CPU" and abs(e.nbytes()) not in mapped_sizes]
    events.sort(key=lambda e: e.start_ns())
    total = peak = 0
    for event in events:
        total += event.nbytes()
        peak = max(peak, total)
    return peak


def _quant_state_tensors(param) -> list[torch.Tensor]:
    state = getattr(param, "quant_state", None)
    if state is None:
        return []
    found, stack = [], [state]
    while stack:
        s = stack.pop()
        for value in vars(s).values():
            if isinstance(value, torch.Tensor):
                found.append(value)
            elif type(value).__name__ == "QuantState":
                stack.append(value)
    return found


def describe(model: torch.nn.Module) -> list[dict]:
    """Per parameter: class, dtype, bytes per element, requires_grad, ZeRO-3 full and local element counts, and the
    bytes of its 4-bit quantization state (absmax, code; whole on every rank)."""
    params = []
    for name, p in model.named_parameters():
        partitioned = hasattr(p, "ds_id")
        params.append({"name": name, "cls": type(p).__name__, "dtype": str(p.dtype).replace("torch.", ""),
                       "element_size": p.element_size(), "requires_grad": p.requires_grad, "partitioned": partitioned,
                       "numel": int(p.ds_numel) if partitioned else p.numel(),
                       "local": p.ds_tensor.numel() if partitioned else p.numel(),
                       "quant_state_bytes": sum(t.numel() * t.element_size() for t in _quant_state_tensors(p))})
    return params


class ModelProbe(pl.Callback):
    def __init__(self, record_dir: str, checkpoint_dir: str):
        self.record_dir = record_dir
        self.mapped_sizes = {f.stat().st_size for f in Path(checkpoint_dir).glob("*.safetensors")}

    def _path(self, trainer) -> str:
        return os.path.join(self.record_dir, f"model-rank{trainer.global_rank}.json")

    def setup(self, trainer, pl_module, stage) -> None:
        configure = pl_module.configure_model

        def measured() -> None:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                configure()
            record = {"peak_bytes": _allocation_peak(prof, self.mapped_sizes), "params": describe(pl_module.model),
                      "world_size": trainer.world_size}
            with open(self._path(trainer), "w") as f:
                json.dump(record, f)

        pl_module.configure_model = measured

    def on_fit_start(self, trainer, pl_module) -> None:
        with open(self._path(trainer)) as f:
            record = json.load(f)
        record["params_at_fit_start"] = describe(pl_module.model)
        with open(self._path(trainer), "w") as f:
            json.dump(record, f)
