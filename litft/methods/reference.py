"""The reference model of DPO and KTO at no second copy: the trained model with its adapters switched off.

LoRA (and QLoRA) only add to a frozen base, so the base *is* the reference: PEFT's ``disable_adapter()`` context
computes it with the same weights in memory, under ``torch.no_grad()``, in the same step. A full fine-tune has no
frozen base left to compare with: it is refused (one line) rather than given a silent second copy.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from litft.errors import LitFTError


def has_adapters(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a PEFT model whose adapters can be switched off."""
    return callable(getattr(model, "disable_adapter", None))


def check_reference(method: str, model: torch.nn.Module) -> None:
    """One line when ``method`` needs a reference model that ``model`` cannot give."""
    if not has_adapters(model):
        raise LitFTError(f"model.method={method} needs a reference model: the base with the adapters off. Set "
                         "model.lora (LoRA or QLoRA); full fine-tuning (model.lora: null) has no reference here")


@contextlib.contextmanager
def adapters_off(model: torch.nn.Module) -> Iterator[None]:
    """Inside: ``model`` computes the frozen base (the reference), without gradients."""
    with torch.no_grad(), model.disable_adapter():
        yield


def reference_scorer(model: torch.nn.Module, score: Callable) -> Callable:
    """``score`` computed with ``model``'s adapters off and no gradients."""

    def run(*args, **kwargs):
        with adapters_off(model):
            return score(*args, **kwargs)

    return run
