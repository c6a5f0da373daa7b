"""Writes the trained adapter to <output_dir>/adapter in PEFT format at the end of fit."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning.pytorch as L

from litft.callbacks.preemption import find
from litft.data.templates import chat_template_for
from litft.io import atomic_dir
from litft.strategies import gathered_trainable_state_dict

log = logging.getLogger(__name__)


def save_adapter(pl_module, target: str | os.PathLike, state_dict: dict | None = None, chat_template: str | None = None) -> Path:
    """Save pl_module's PEFT adapter (and tokenizer) to ``target`` atomically: a crash leaves the old one.

    state_dict: the adapter weights when the module's own are partitioned (DeepSpeed ZeRO-3).
    chat_template: the template the training data was rendered with, saved as the tokenizer's chat_template.
    """
    if chat_template is not None:
        pl_module.tokenizer.chat_template = chat_template
    target = Path(target)
    with atomic_dir(target) as tmp:
        pl_module.model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        pl_module.tokenizer.save_pretrained(tmp)
    return target


def _training_template(trainer: L.Trainer, pl_module) -> str | None:
    """The data module's training template (``data.template``) as Jinja, None when it is the tokenizer's own."""
    template = getattr(getattr(trainer, "datamodule", None), "template", None)
    if template is None:
        return None
    return chat_template_for(pl_module.tokenizer, template)


class SaveAdapter(L.Callback):
    """At the end of fit, write the adapter to ``<trainer.default_root_dir>/<dirname>``."""

    def __init__(self, dirname: str = "adapter"):
        self.dirname = dirname

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(pl_module, "lora", None) is None or trainer.global_step == 0:
            return
        preemption = find(trainer)
        if preemption is not None and preemption.preempted:
            return  # stopped early to be requeued: the resumed run writes the adapter when it finishes
        # Under ZeRO-3 each rank holds a shard of every weight: gather them (on all ranks) before saving.
        state_dict = gathered_trainable_state_dict(pl_module.model)
        if trainer.is_global_zero:
            path = save_adapter(pl_module, Path(trainer.default_root_dir) / self.dirname, state_dict=state_dict,
                                chat_template=_training_template(trainer, pl_module))
            log.info("Adapter written to %s", path)
        trainer.strategy.barrier("litft-save-adapter")
