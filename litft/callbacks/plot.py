"""Loss curves as a PNG at the end of training (like LLaMA-Factory's plot_loss): training loss per optimizer step
(raw and smoothed) and validation loss at each validation, written atomically to ``<output_dir>/loss.png``. A run that
logs a second curve (the preference methods' ``rewards/accuracies``) gets it in a panel beside the loss."""

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
        second_key: a second metric (without its ``train/`` / ``val/`` prefix) drawn in a panel of its own when the
            run logs it: the preference methods' reward accuracy (litft.methods).
    """

    def __init__(self, train_key: str = "train/loss", val_key: str = "val/loss", filename: str = "loss.png",
                 second_key: str = "rewards/accuracies"):
        super().__init__()
        self.train_key, self.val_key, self.filename, self.second_key = train_key, val_key, filename, second_key
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.second: dict[str, list[tuple[int, float]]] = {"train": [], "val": []}
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
            self._record_second(trainer, "train", step)

    def _record_second(self, trainer: "pl.Trainer", split: str, step: int) -> None:
        value = self._value(trainer, f"{split}/{self.second_key}") if self.second_key else None
        if value is not None:
            self.second[split].append((step, value))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = self._value(trainer, self.val_key)
        if value is not None:
            self.val.append((trainer.global_step, value))
            self._record_second(trainer, "val", trainer.global_step)

    def state_dict(self) -> dict:
        return {"train": list(self.train), "val": list(self.val), "last_step": self._last_step,
                "second": {k: list(v) for k, v in self.second.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train = [tuple(x) for x in state_dict.get("train", [])]
        self.val = [tuple(x) for x in state_dict.get("val", [])]
        second = state_dict.get("second", {})
        self.second = {k: [tuple(x) for x in second.get(k, [])] for k in ("train", "val")}
        self._last_step = state_dict.get("last_step", -1)

    def path(self, trainer: "pl.Trainer") -> Path:
        p = Path(self.filename)
        return p if p.is_absolute() else Path(trainer.default_root_dir) / p

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.train:
            self._plot(trainer)

    def _plot(self, trainer: "pl.Trainer") -> Path:
        second = (self.second_key, self.second) if any(self.second.values()) else None
        return plot_loss(self.train, self.val, self.path(trainer), second=second)

    def on_exception(self, trainer, pl_module, exception) -> None:
        # A run that stopped early (NaN guard, Ctrl-C) still gets its curves: they show where it went wrong.
        if trainer.is_global_zero and self.train:
            self._plot(trainer)


Curve = list[tuple[int, float]]


def plot_loss(train: Curve, val: Curve, path: str | os.PathLike,
              second: Optional[tuple[str, dict[str, Curve]]] = None) -> Path:
    """Draw the curves on a bare ``Figure`` (no pyplot, no display: PNG goes through Agg, and the process-wide
    backend is left as it is) and write ``path`` atomically. ``second``: (name, {"train": curve, "val": curve}) drawn
    in a panel to the right (the figure is then 1,300 px wide instead of 700)."""
    fig = Figure(figsize=(13 if second else 7, 4.5), dpi=100)
    ax = fig.add_subplot(1, 2 if second else 1, 1)
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
    if second:
        name, curves = second
        ax2 = fig.add_subplot(1, 2, 2)
        if curves["train"]:
            steps2, values2 = [s for s, _ in curves["train"]], [v for _, v in curves["train"]]
            ax2.plot(steps2, values2, color="#2ca02c", alpha=0.35, label="train (raw)")
            ax2.plot(steps2, smooth(values2), color="#2ca02c", label="train (smoothed)")
        if curves["val"]:
            ax2.plot([s for s, _ in curves["val"]], [v for _, v in curves["val"]], color="#d62728", marker="o",
                     label="validation")
        ax2.set_xlabel("step")
        ax2.set_ylabel(name)
        ax2.set_title(name)
        ax2.grid(alpha=0.3)
        ax2.legend()
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
