"""Which strategy / accelerator / precision / quantization combinations can work, with clear errors otherwise."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy

from litft.errors import LitFTError
from litft.strategies.deepspeed import is_zero3

NPU_QLORA_ENV = "LITFT_NPU_EXPERIMENTAL_QLORA"
"""Set to 1 to try QLoRA on Ascend NPU (needs a source build of bitsandbytes with its NPU backend)."""


def strategy_name(strategy: Any) -> str:
    """Lower-case registry name of a strategy given by name, or the class name of an instance."""
    return strategy.lower() if isinstance(strategy, str) else type(strategy).__name__.lower()


def is_fsdp(strategy: Any) -> bool:
    return isinstance(strategy, FSDPStrategy) or (isinstance(strategy, str) and strategy.lower().startswith("fsdp"))


FSDP_REFUSED = (
    "trainer.strategy={name}: litft does not offer FSDP (Lightning's plain FSDP would wrap the whole model as one "
    "unit, keep LoRA weights in the base dtype and checkpoint the full base model); use deepspeed_stage_3 to shard"
)


def check_strategy(strategy: Any, accelerator: str, precision: str | None) -> None:
    """Raise LitFTError for strategy/accelerator/precision choices that cannot work."""
    name = strategy_name(strategy)
    if is_fsdp(strategy):
        raise LitFTError(FSDP_REFUSED.format(name=name))
    if "deepspeed" in name and accelerator == "cpu" and precision in ("16-mixed", "16-true", "16"):
        raise LitFTError(
            f"trainer.precision={precision} with DeepSpeed on cpu: DeepSpeed has no fp16 on CPU; use 32-true or bf16-mixed"
        )
    if "deepspeed" in name and accelerator not in ("cuda", "gpu", "npu", "cpu"):
        raise LitFTError(f"trainer.strategy={name} runs on cuda, npu or cpu, not trainer.accelerator={accelerator}")


def check_quantization(
    strategy: Any,
    accelerator: str,
    *,
    bits: int | None,
    compute_dtype: torch.dtype,
    quant_storage: torch.dtype | None = None,
    double_quant: bool = False,
) -> torch.dtype | None:
    """Validate bitsandbytes quantization against the run and return the ``bnb_4bit_quant_storage`` to use.

    - ZeRO-3 shards parameters, which only works for 4-bit weights stored in the compute dtype
      (``bnb_4bit_quant_storage == compute dtype``; load with no ``device_map``): litft sets it when unset (``auto``)
      and refuses any other storage, ``uint8`` included (packed bytes would be partitioned and gathered as a dtype
      of their own beside every bf16/fp32 tensor of the layer, not as the weights they are).
    - 8-bit weights cannot be sharded by ZeRO-3.
    - FSDP is refused (see :func:`check_strategy`).
    - QLoRA on Ascend NPU is experimental (no released bitsandbytes has an NPU backend): opt in with
      LITFT_NPU_EXPERIMENTAL_QLORA=1, and keep double quantization off.
    """
    if not bits:
        return quant_storage
    if bits not in (4, 8):
        raise LitFTError(f"model.quantization bits={bits}: bitsandbytes supports 4 or 8")
    if accelerator == "npu":
        if os.environ.get(NPU_QLORA_ENV, "0") not in ("1", "true", "yes"):
            raise LitFTError(
                f"{bits}-bit quantization on Ascend NPU is experimental: no released bitsandbytes supports NPU. "
                f"Build bitsandbytes with its NPU backend from source and set {NPU_QLORA_ENV}=1 to try"
            )
        if double_quant:
            raise LitFTError("QLoRA on NPU: double quantization is not supported by the NPU backend; turn it off")
    if is_fsdp(strategy):
        raise LitFTError(FSDP_REFUSED.format(name=strategy_name(strategy)))
    if not is_zero3(strategy):
        return quant_storage
    kind = "DeepSpeed ZeRO-3"
    if bits == 8:
        raise LitFTError(f"8-bit quantization cannot be sharded by {kind}; use 4-bit (QLoRA) or ZeRO-2 / DDP")
    if quant_storage is not None and quant_storage != compute_dtype:
        name = str(quant_storage).replace("torch.", "")
        raise LitFTError(
            f"model.quantization.quant_storage={name}: QLoRA with {kind} stores 4-bit weights in the compute dtype "
            f"({str(compute_dtype).replace('torch.', '')}) to shard them; set quant_storage: auto"
        )
    return compute_dtype
