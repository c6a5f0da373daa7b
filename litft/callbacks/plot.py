"""Loss curves as a PNG at the end of training (like LLaMA-Factory's plot_loss): training loss per optimizer step
(raw and smoothed) and validation loss at each validation, written atomically to ``<output_dir>/loss.png``."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
from matplotlib.figure import Figure

from litft.io import atomic_write


def smooth(values: list[float], weight: Optional[float] = None) -> list[float]:
    """Exponential moving average; the weight grows with the number of points (as LLaMA-Factory does)."""
    if not values:
        return []
    if weight is None:
        weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    out, last = [], values[0]
    for v in values:
        last = last * weight + (1 - weight) * v
        out.append(last)
    return out


class LossPlot(pl.Callback):
    """Record ``train_key`` after every optimizer step and ``val_key`` after every validation; plot at fit end.

    Args:
        train_key: logged metric holding the step's training loss.
        val_key: logged metric holding the validation loss.
        filename: output file, relative to ``trainer.default_root_dir`` unless absolute.
    """

    def __init__(self, train_key: str = "train/loss", val_key: str = "val/loss", filename: str = "loss.png"):
        super().__init__()
        self.train_key, self.val_key, self.filename = train_key, val_key, filename
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self._last_step = -1

    @staticmethod
    def _value(trainer: "pl.Trainer", key: str) -> Optional[float]:
        value = trainer.callback_metrics.get(key)
        if value is None:
            return None
        value = float(value)
        return value if math.isfinite(value) else None

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step <= self._last_step:  # still accumulating gradients
            return
        value = self._value(trainer, self.train_key)
        if value is not None:
            self._last_step = step
            self.train.append((step, value))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = self._value(trainer, self.val_key)
        if value is not None:
            self.val.append((trainer.global_step, value))

    def state_dict(self) -> dict:
        return {"train": list(self.train), "val": list(self.val), "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train = [tuple(x) for x in state_dict.get("train", [])]
        self.val = [tuple(x) for x in state_dict.get("val", [])]
        self._last_step = state_dict.get("last_step", -1)

    def path(self, trainer: "pl.Trainer") -> Path:
        p = Path(self.filename)
        return p if p.is_absolute() else Path(trainer.default_root_dir) / p

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.train:
            plot_loss(self.train, self.val, self.path(trainer))

    def on_exception(self, trainer, pl_module, exception) -> None:
        # A run that stopped early (NaN guard, Ctrl-C) still gets its curves: they show where it went wrong.
        if trainer.is_global_zero and self.train:
            plot_loss(self.train, self.val, self.path(trainer))


def plot_loss(train: list[tuple[int, float]], val: list[tuple[int, float]], path: str | os.PathLike) -> Path:
    """Draw the curves on a bare ``Figure`` (no pyplot, no display: PNG goes through Agg, and the process-wide
    backend is left as it is) and write ``path`` atomically."""
    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    steps = [s for s, _ in train]
    losses = [v for _, v in train]
    ax.plot(steps, losses, color="#1f77b4", alpha=0.35, label="train (raw)")
    ax.plot(steps, smooth(losses), color="#1f77b4", label="train (smoothed)")
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], color="#d62728", marker="o", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
