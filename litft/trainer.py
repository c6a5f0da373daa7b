"""LitFTTrainer: Lightning's Trainer with litft's defaults (precision "auto", default callbacks)."""

from __future__ import annotations

from typing import Union

import lightning.pytorch as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.accelerators import Accelerator
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar, RichProgressBar

from litft.callbacks.adapter import SaveAdapter
from litft.callbacks.checkpoint import LitFTCheckpoint
from litft.callbacks.plot import LossPlot
from litft.callbacks.preemption import Preemption, slurm_plugins
from litft.callbacks.throughput import Throughput
from litft.resume import resolve_ckpt_path
from litft.shims.lightning import PRECISION_INPUT, leave_signals_alone
from litft.slurm import check_allocation
from litft.strategies import trainer_kwargs


def default_callbacks(enable_checkpointing: bool = True) -> list[Callback]:
    """Callbacks every litft run has unless the config already lists one of the same class."""
    callbacks: list[Callback] = [SaveAdapter(), LossPlot(), Throughput(), Preemption()]
    if enable_checkpointing:
        callbacks.append(LitFTCheckpoint(every_n_train_steps=100))
    try:
        callbacks.append(RichProgressBar(leave=True))
    except ModuleNotFoundError:  # rich missing (Lightning checks when the bar is made): Lightning's tqdm bar
        pass
    return callbacks


class LitFTTrainer(L.Trainer):
    """Lightning's Trainer; ``precision: auto`` picks bf16-mixed where bf16 is fast (recent GPUs, NPUs), else 32-true.

    litft's default callbacks (adapter export, progress bar, ...) are added to ``callbacks`` unless a callback
    of the same kind is already there.
    """

    def __init__(
        self,
        *args,
        accelerator: Union[str, Accelerator] = "auto",
        precision: PRECISION_INPUT = "auto",
        callbacks: Union[list[Callback], Callback, None] = None,
        **kwargs,
    ):
        # Inside a SLURM job: refuse an allocation that disagrees with num_nodes/devices (else DDP hangs).
        check_allocation(kwargs.get("num_nodes", 1), kwargs.get("devices", "auto"))
        # accelerator/precision "auto" (NPUs included), NPU single-device/DDP/autocast, DeepSpeed on cpu/npu,
        # one-line errors for impossible combinations: litft.strategies.trainer_kwargs is the one place for it.
        resolved = trainer_kwargs(
            accelerator=accelerator,
            precision=precision,
            strategy=kwargs.pop("strategy", "auto"),
            devices=kwargs.pop("devices", "auto"),
            num_nodes=kwargs.pop("num_nodes", 1),
            # Inside SLURM: Lightning's auto-requeue off (it saves inside the signal handler); Preemption does it.
            plugins=slurm_plugins(kwargs.pop("plugins", None)),
        )
        if kwargs.get("enable_model_summary") is None:
            # litft logs the trainable/total parameter counts itself; Lightning's table adds a "FLOPs 0" column.
            kwargs["enable_model_summary"] = False
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or [])
        for extra in default_callbacks(kwargs.get("enable_checkpointing") is not False):
            kind = ProgressBar if isinstance(extra, ProgressBar) else ModelCheckpoint if isinstance(extra, ModelCheckpoint) else type(extra)
            if kwargs.get("enable_progress_bar") is False and kind is ProgressBar:
                continue
            if not any(isinstance(c, kind) for c in callbacks):
                callbacks.append(extra)
        super().__init__(*args, callbacks=callbacks, **resolved, **kwargs)
        if any(isinstance(cb, Preemption) for cb in callbacks):
            leave_signals_alone(self)  # Preemption owns SIGUSR1/SIGTERM; Lightning's handler would not save
        if SLURMEnvironment.detect():  # elsewhere at fit's setup (a Trainer that never fits leaves signals alone)
            for cb in callbacks:
                if isinstance(cb, Preemption):
                    cb.install()  # now: a signal during data preparation or model loading is kept for training

    def fit(self, model, train_dataloaders=None, val_dataloaders=None, datamodule=None, ckpt_path=None, **kwargs):
        """Lightning's fit; ``ckpt_path="last"`` (and, inside SLURM, no ckpt_path) resumes from the newest loadable
        checkpoint in the output folder, whatever its kind (litft.resume)."""
        ckpt_path = resolve_ckpt_path(ckpt_path, self.default_root_dir, SLURMEnvironment.detect())
        return super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, **kwargs)
