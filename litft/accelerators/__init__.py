"""Accelerators litft adds to Lightning, and the per-device defaults that go with them.

Importing this package registers the ``npu`` accelerator in Lightning's AcceleratorRegistry, so
``--trainer.accelerator npu`` parses; torch_npu itself is only imported (guarded) when an NPU is asked for
or ``accelerator: auto`` looks for one.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.accelerators import AcceleratorRegistry

from litft.accelerators.npu import NPUAccelerator, npu_bf16_supported, npu_device_count
from litft.shims.lightning import select_auto_accelerator

__all__ = ["NPUAccelerator", "register", "resolve_accelerator", "default_precision"]


def register() -> None:
    """Register litft's accelerators in Lightning's AcceleratorRegistry (idempotent)."""
    if "npu" not in AcceleratorRegistry:
        NPUAccelerator.register_accelerators(AcceleratorRegistry)


def accelerator_name(accelerator: Any) -> str:
    """The registry name of an accelerator given as a string or an Accelerator instance/class."""
    if isinstance(accelerator, str):
        return accelerator.lower()
    name = getattr(accelerator, "name", None)
    if callable(name):
        return name()
    return type(accelerator).__name__.replace("Accelerator", "").lower()


def resolve_accelerator(accelerator: Any = "auto") -> str:
    """Concrete accelerator name for ``auto`` / ``gpu``: CUDA first, then Ascend NPU, else CPU.

    Lightning's own auto-selection does not know NPUs; litft picks ``npu`` when torch_npu loads and
    NPUs are present (and no CUDA device is).
    """
    name = accelerator_name(accelerator)
    if name not in ("auto", "gpu"):
        return name
    if name == "auto":
        chosen = select_auto_accelerator()
        if chosen != "cpu":
            return chosen
        return "npu" if npu_device_count() > 0 else "cpu"
    # "gpu": any GPU-like device
    if torch.cuda.is_available():
        return "cuda"
    if npu_device_count() > 0:
        return "npu"
    from lightning.pytorch.accelerators import MPSAccelerator

    return "mps" if MPSAccelerator.is_available() else "cuda"  # Lightning then says no GPU is available


def default_precision(accelerator: Any = "auto") -> str:
    """``trainer.precision: auto``: bf16-mixed on CUDA/NPU devices with bf16, else 32-true.

    CPUs always get 32-true: bf16 autocast is ~40x slower than fp32 on the CPUs we measured.
    """
    name = resolve_accelerator(accelerator)
    if name in ("cuda", "gpu"):
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    if name == "npu":
        return "bf16-mixed" if npu_bf16_supported() else "32-true"
    return "32-true"


register()
