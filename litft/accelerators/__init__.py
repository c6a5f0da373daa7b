"""Accelerators litft adds to Lightning (registered before the CLI parses)."""

from __future__ import annotations


def register() -> None:
    """Register litft's accelerators in Lightning's AcceleratorRegistry (idempotent)."""


def default_precision(accelerator) -> str:
    """The fastest safe precision for an accelerator: bf16-mixed on CUDA GPUs with bf16, else 32-true."""
    import torch

    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    if name in ("auto", "gpu", "cuda") or "cuda" in name:
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed"
    return "32-true"
