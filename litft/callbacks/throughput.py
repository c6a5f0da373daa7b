"""Real (non-padding) tokens per second and model FLOPs utilisation (MFU).

Tokens are counted from each batch: the 2-D ``attention_mask`` sum for padded rows, all ``input_ids`` for packed
rows (which carry ``position_ids`` and no 2-D mask). FLOPs per token follow the usual estimates with N the number
of model parameters: LoRA/frozen-base ≈ 4N (forward 2N + backward through the activations 2N), full fine-tune 6N
(+ weight gradients 2N), +2N with activation recomputation (gradient checkpointing). MFU is reported only where the
peak is known: litft's table of dense peaks (:mod:`litft.accelerators.flops`, fp32 counted at the TF32 rate when
TF32 is allowed) or ``peak_flops``; otherwise one log line says why there is no ``mfu``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import lightning.pytorch as pl
import torch

from litft.accelerators import flops as peak_table
from litft.accelerators import precision_dtype
from litft.model.params import count_parameters  # noqa: F401  (ZeRO-3 partitions and 4-bit weights at full size)

log = logging.getLogger(__name__)


def count_tokens(batch: Any) -> int:
    """Non-padding tokens in a batch dict (see the module docstring)."""
    if not isinstance(batch, dict) or "input_ids" not in batch:
        return 0
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return int(mask.sum().item())
    return int(batch["input_ids"].numel())


def flops_per_token(n_params: int, *, full: bool, recompute: bool) -> int:
    """4N (adapter training), 6N (full fine-tune), +2N with activation recomputation."""
    return (6 if full else 4) * n_params + (2 * n_params if recompute else 0)


def compute_dtype(trainer: "pl.Trainer", model: torch.nn.Module) -> torch.dtype:
    """The dtype the matmuls run in: that of a bf16 / 16 precision (litft.accelerators.precision_dtype), else the
    weights' most common dtype."""
    autocast = precision_dtype(trainer.precision)
    if autocast is not torch.float32:
        return autocast
    dtypes = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return max(set(dtypes), key=dtypes.count) if dtypes else torch.float32


def peak_flops_per_device(device: torch.device, dtype: torch.dtype) -> Optional[float]:
    """Theoretical dense peak FLOP/s of one device for ``dtype``, or None when unknown (CPU, unlisted chips)."""
    return peak_table.lookup(device, dtype).flops


class Throughput(pl.Callback):
    """Log ``tokens_per_sec`` (real tokens over all ranks, shown on the progress bar) and ``mfu`` every
    ``log_every_n_steps`` optimizer steps (default: the trainer's).

    Args:
        log_every_n_steps: window length in optimizer steps (None: ``trainer.log_every_n_steps``).
        peak_flops: dense peak FLOP/s of one device, overriding litft's table (e.g. for an unlisted chip).
        full_finetune: None to detect (every parameter trainable → 6N), else force 6N (True) or 4N (False).
    """

    def __init__(self, log_every_n_steps: Optional[int] = None, peak_flops: Optional[float] = None,
                 full_finetune: Optional[bool] = None):
        super().__init__()
        self.log_every_n_steps = log_every_n_steps
        self.peak_flops = peak_flops
        self.full_finetune = full_finetune
        self.flops_per_token: Optional[int] = None
        self.peak: Optional[float] = None
        self._tokens = 0
        self._t0: Optional[float] = None
        self._last_step = -1
        self._said = False

    def on_train_start(self, trainer, pl_module) -> None:
        # Here, not in setup(): LitFTModule builds its model in configure_model(), after the setup hooks.
        total, trainable = count_parameters(pl_module)
        full = self.full_finetune if self.full_finetune is not None else (trainable == total)
        inner = getattr(pl_module, "model", None) or pl_module
        recompute = bool(getattr(inner, "is_activation_checkpointing", None)
                         or getattr(inner, "is_gradient_checkpointing", False))
        self.flops_per_token = flops_per_token(total, full=full, recompute=recompute)
        self.peak = self.peak_flops or self._table_peak(trainer, pl_module)
        self._t0, self._tokens, self._last_step = time.perf_counter(), 0, trainer.global_step

    def _table_peak(self, trainer, pl_module) -> Optional[float]:
        """The peak from litft's table; says once (rank 0) which figure MFU uses, or why there is no MFU."""
        found = peak_table.lookup(pl_module.device, compute_dtype(trainer, pl_module))
        if not self._said and trainer.is_global_zero:
            if found.flops is None:
                log.info("MFU n/a: unknown peak for %s %s; set Throughput(peak_flops=...)", found.device_name,
                         found.dtype_name)
            else:
                note = " (an estimate: no vendor figure for this exact part)" if found.peak.estimate else ""
                log.info("MFU against %.1f TFLOPS, the dense %s peak of %s%s; override with "
                         "Throughput(peak_flops=...)", found.flops / 1e12, found.dtype_name, found.peak.chip, note)
        self._said = True
        return found.flops

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Under sequence parallelism every rank of a group holds the group's whole batch (each trains its shard):
        # count it once per group, so tokens_per_sec and mfu are not N times too high.
        self._tokens += count_tokens(batch) / getattr(trainer.strategy, "sequence_parallel_size", 1)
        every = self.log_every_n_steps or max(1, trainer.log_every_n_steps)
        step = trainer.global_step
        if step == self._last_step or step % every != 0:
            return
        elapsed = time.perf_counter() - self._t0
        # float32, never float64 on the device (HCCL handles it poorly): exact up to 2**24 tokens per window
        local = torch.tensor(float(self._tokens), device=pl_module.device, dtype=torch.float32)
        tokens = trainer.strategy.reduce(local, reduce_op="sum")
        tokens_per_sec = float(tokens) / max(elapsed, 1e-9)
        metrics = {"tokens_per_sec": tokens_per_sec}
        if self.peak and self.flops_per_token:
            metrics["mfu"] = tokens_per_sec * self.flops_per_token / (self.peak * trainer.world_size)
        pl_module.log("tokens_per_sec", tokens_per_sec, prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)
        if "mfu" in metrics:
            pl_module.log("mfu", metrics["mfu"], prog_bar=False, on_step=True, on_epoch=False, rank_zero_only=True)
        self.last_metrics = metrics
        self._t0, self._tokens, self._last_step = time.perf_counter(), 0, step
