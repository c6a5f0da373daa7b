"""The reference model of DPO and KTO at no second copy: the trained model with its adapters switched off.

LoRA (and QLoRA) only add to a frozen base, so the base *is* the reference: PEFT's ``disable_adapter()`` context
computes it with the same weights in memory, under ``torch.no_grad()``, in the same step. A full fine-tune has no
frozen base left to compare with: it is refused (one line, :class:`litft.methods.objective.PreferenceObjective`)
rather than given a silent second copy.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch


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
