"""Resumable, adapter-sized, atomic checkpoints.

* :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file and ``os.replace``s it over the old one,
  so a crash or a failed write in the middle of a save leaves the previous checkpoint intact and loadable.
* :class:`LitFTCheckpoint` (a ``ModelCheckpoint``) saves every N optimizer steps and at the end of training into
  ``<output_dir>/checkpoints/last.ckpt`` (so ``--ckpt_path last`` finds it), and adds the RNG states of every rank.
  The weights in it are what ``LitFTModule.state_dict()`` returns: trainable (adapter) weights only. Lightning adds
  optimizer, LR scheduler, loop progress (step, epoch, batch) and the train loader's ``state_dict()`` (data
  position). Optionally the adapter is also written in PEFT format next to each checkpoint.

RNG states are restored just before the first training batch after a resume (after the data loader's iterator
was created, which itself draws from the torch RNG), and validation runs leave the training RNG stream untouched,
so a resumed run continues on exactly the random stream of an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from litft.io import atomic_dir, atomic_write
from litft.shims.lightning import ModelCheckpointHooks
from litft.strategies import gathered_trainable_state_dict

log = logging.getLogger(__name__)

RNG_KEY = "litft_rng_states"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temp file next to the target, fsync, then ``os.replace`` (local paths)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def use_atomic_io(trainer: "pl.Trainer") -> None:
    """Give the trainer's strategy the atomic CheckpointIO unless it has a custom one already."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:  # the default (Lightning creates it on first access)
        strategy.checkpoint_io = AtomicCheckpointIO()


def save_now(trainer: "pl.Trainer") -> str:
    """Save a resumable checkpoint now, on every rank (call it at a step boundary), through the run's
    :class:`LitFTCheckpoint` (``last.ckpt``); without one, to ``<default_root_dir>/checkpoints/last.ckpt``."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, LitFTCheckpoint):
            return cb.save_last_now(trainer)
    use_atomic_io(trainer)
    path = os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")
    trainer.save_checkpoint(path)
    return path


def collect_rng_state() -> dict[str, Any]:
    """This process's RNG states in a form that loads with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    npu = getattr(torch, "npu", None)
    if npu is not None and hasattr(npu, "get_rng_state_all"):
        try:
            state["npu"] = npu.get_rng_state_all()
        except Exception:  # NPU runtime present but not initialized
            pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "npu" in state and getattr(torch, "npu", None) is not None:
        torch.npu.set_rng_state_all(state["npu"])  # type: ignore[attr-defined]


def _gather(trainer: "pl.Trainer", obj: Any) -> list:
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


class LitFTCheckpoint(ModelCheckpointHooks):
    """Adapter-only, atomic, exactly resumable checkpoints every ``every_n_train_steps`` steps and at the end.

    Args:
        every_n_train_steps: save every N optimizer steps (0: only at the end).
        dirpath: folder (default ``<output_dir>/checkpoints``, where ``--ckpt_path last`` looks).
        keep_all: also keep a ``step=N.ckpt`` per save (default: only ``last.ckpt``, replaced atomically).
        save_adapter: also write the adapter in PEFT format next to each checkpoint (``<name>-adapter/``).
    """

    def __init__(self, every_n_train_steps: int = 100, dirpath: Optional[str] = None, keep_all: bool = False,
                 save_adapter: bool = False, **kwargs: Any):
        if kwargs.get("filename") is None:  # unset (the CLI passes filename=None and auto_insert_metric_name=True)
            kwargs["filename"], kwargs["auto_insert_metric_name"] = "step={step}", False
        super().__init__(
            dirpath=dirpath, every_n_train_steps=every_n_train_steps or None, save_last=True,
            save_top_k=-1 if keep_all else 0, enable_version_counter=False, **kwargs,
        )
        self.save_adapter = save_adapter
        self._pending_rng: Optional[dict] = None
        self._train_rng: Optional[dict] = None
        self._restore_after_val = False

    # -- where: a fixed <output_dir>/checkpoints, not a per-logger-version folder ------------------------------------
    def _default_dir(self, trainer: "pl.Trainer") -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._default_dir(trainer)
        use_atomic_io(trainer)
        super().setup(trainer, pl_module, stage)

    def save_last_now(self, trainer: "pl.Trainer") -> str:
        """Write ``last.ckpt`` now (all ranks; at a step boundary), unless this step is saved already."""
        if self.last_saved_step != trainer.global_step or not self.last_model_path:
            self.write_last(trainer)
        return self.last_model_path

    def before_find_last(self, trainer: "pl.Trainer") -> None:
        self._default_dir(trainer)

    # -- when: every N steps (ModelCheckpoint) and at the end ------------------------------------------------------
    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.last_saved_step != trainer.global_step and not trainer.sanity_checking:
            self.write_last(trainer)

    # -- what: RNG states of every rank --------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Saved right after a resume, before the first batch (a preemption at train start): the restored states
        # are still pending and are the ones the run continues with.
        state = self._pending_rng if self._pending_rng is not None else collect_rng_state()
        checkpoint[RNG_KEY] = _gather(trainer, state)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get(RNG_KEY)
        if not states:
            return
        if len(states) != trainer.world_size:
            log.warning("Checkpoint has RNG states of %d ranks, this run has %d: not restoring them "
                        "(the resumed run will not be bit-identical).", len(states), trainer.world_size)
            return
        self._pending_rng = states[trainer.global_rank]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
        elif self._restore_after_val and self._train_rng is not None:
            set_rng_state(self._train_rng)
        self._pending_rng, self._restore_after_val = None, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The training stream as it stands after this batch: what a checkpoint saved now holds, and what the
        # next batch starts from even if a validation run (whose loader iterator draws from the torch RNG) comes
        # in between -- a resumed run skips the validation that was due at its checkpoint.
        self._train_rng = collect_rng_state()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._restore_after_val = True

    # -- optional PEFT adapter next to each checkpoint -------------------------------------------------------------
    def after_file_saved(self, trainer: "pl.Trainer", filepath: str) -> None:
        model = getattr(trainer.lightning_module, "model", None)
        if self.save_adapter and model is not None and hasattr(model, "save_pretrained"):
            # Under ZeRO-3 every rank holds a shard: gather on all ranks, as SaveAdapter does,
            # so the PEFT files hold the real weights and not empty placeholders.
            state_dict = gathered_trainable_state_dict(model)
            if trainer.is_global_zero:
                with atomic_dir(_adapter_dir(filepath)) as tmp:
                    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            trainer.strategy.barrier("litft-checkpoint-adapter")

    def after_file_removed(self, trainer: "pl.Trainer", filepath: str) -> None:
        if self.save_adapter and trainer.is_global_zero:
            shutil.rmtree(_adapter_dir(filepath), ignore_errors=True)


def _adapter_dir(ckpt_path: str) -> Path:
    p = Path(ckpt_path)
    return p.with_name(p.stem + "-adapter")
