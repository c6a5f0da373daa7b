"""Accelerators litft adds to Lightning, and the per-device defaults that go with them.

Importing this package registers the ``npu`` accelerator in Lightning's AcceleratorRegistry, so
``--trainer.accelerator npu`` parses; torch_npu itself is only imported (guarded) when an NPU is asked for
or ``accelerator: auto`` looks for one.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.accelerators import AcceleratorRegistry, MPSAccelerator

from litft.accelerators.npu import NPUAccelerator, npu_bf16_supported, npu_device_count
from litft.shims.lightning import select_auto_accelerator

__all__ = ["NPUAccelerator", "register", "resolve_accelerator", "default_precision", "native_bf16",
           "precision_dtype"]


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
    return "mps" if MPSAccelerator.is_available() else "cuda"  # Lightning then says no GPU is available


def native_bf16(accelerator: Any = "auto") -> bool:
    """Whether the devices of ``accelerator`` compute bf16 in hardware: the one place litft decides it.

    CUDA: every visible GPU has compute capability >= 8.0 (Ampere and later); ``torch.cuda.is_bf16_supported()``
    is not enough, it answers True on V100/T4 too because it counts emulation. ROCm: torch's answer. NPU:
    ``torch.npu.is_bf16_supported()`` (910B yes, 910A no). CPU: False (bf16 autocast is ~40x slower than fp32
    on the CPUs we measured).
    """
    name = resolve_accelerator(accelerator)
    if name in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            return False
        if torch.version.hip:
            return bool(torch.cuda.is_bf16_supported())  # ROCm: torch checks no emulation there
        count = max(1, torch.cuda.device_count())
        return all(tuple(torch.cuda.get_device_capability(i)) >= (8, 0) for i in range(count))
    if name == "npu":
        return npu_bf16_supported()
    return False


def default_precision(accelerator: Any = "auto") -> str:
    """``trainer.precision: auto``: bf16-mixed where the device has bf16 in hardware (:func:`native_bf16`).

    CUDA GPUs without it (V100, T4: compute capability 7.x) get 16-mixed: fp16 autocast with Lightning's
    dynamic loss scaling, the usual choice of fine-tuning tools on these cards (LLaMA-Factory falls back to fp16
    where bf16 is missing, axolotl's ``bf16: auto`` to fp16, Unsloth's notebooks set ``fp16 = not is_bfloat16_supported()``); fp32
    runs at 1/8 of their fp16 tensor-core rate. If a model overflows in fp16 (the loss turns nan and litft
    stops), set ``trainer.precision: 32-true``. NPUs without bf16 (910A) and CPUs get 32-true.
    """
    name = resolve_accelerator(accelerator)
    if native_bf16(name):
        return "bf16-mixed"
    if name in ("cuda", "gpu") and torch.cuda.is_available():
        return "16-mixed"
    return "32-true"


def precision_dtype(precision: Any) -> torch.dtype:
    """The compute dtype of a Lightning precision string (bf16-* → bfloat16, 16-* → float16, else float32)."""
    p = str(precision)
    if p.startswith("bf16"):
        return torch.bfloat16
    if p.startswith("16"):
        return torch.float16
    return torch.float32


register()
