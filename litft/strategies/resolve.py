"""Turn the trainer flags a user writes (accelerator, strategy, devices, num_nodes, precision) into what
Lightning needs so the same YAML runs on CPU, CUDA and Ascend NPU.

Lightning alone, given ``accelerator: npu``, would pick a CPU single-device strategy for devices=1 and
autocast on "cuda"; this is the one place that fixes that.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.strategies import DeepSpeedStrategy, SingleDeviceStrategy

from litft.accelerators import NPUAccelerator, accelerator_name, default_precision, npu_bf16_supported, resolve_accelerator
from litft.errors import LitFTError
from litft.strategies.compat import check_strategy, strategy_name
from litft.strategies.deepspeed import pin_deepspeed_accelerator


def trainer_kwargs(
    *,
    accelerator: Any = "auto",
    strategy: Any = "auto",
    devices: Any = "auto",
    num_nodes: int = 1,
    precision: Any = "auto",
    plugins: Any = None,
) -> dict[str, Any]:
    """Resolved ``accelerator, strategy, devices, num_nodes, precision, plugins`` for ``Trainer.__init__``.

    - ``accelerator: auto`` also finds Ascend NPUs; ``precision: auto`` → :func:`default_precision`.
    - ``strategy: auto`` on one NPU → single device on npu:<index>; several → litft's DDP (hccl).
    - mixed precision on NPU autocasts on "npu" (bf16 only where the NPU supports it).
    - DeepSpeed: DS_ACCELERATOR pinned to the accelerator; impossible combinations raise LitFTError.
    """
    name = resolve_accelerator(accelerator)
    acc: Any = accelerator if not isinstance(accelerator, str) else name
    if precision in (None, "auto"):
        precision = default_precision(name)
    precision = str(precision)
    plugins = [] if plugins is None else (list(plugins) if isinstance(plugins, (list, tuple)) else [plugins])
    if isinstance(strategy, str):
        strategy = strategy.lower()
    check_strategy(strategy, name, precision)

    is_ds = isinstance(strategy, DeepSpeedStrategy) or "deepspeed" in strategy_name(strategy)
    if is_ds:
        pin_deepspeed_accelerator(name)

    if name == "npu":
        if strategy == "auto":
            count = devices if devices != "auto" else NPUAccelerator.auto_device_count()
            indices = NPUAccelerator.parse_devices(count)
            strategy = SingleDeviceStrategy(device=torch.device("npu", indices[0])) if (
                len(indices) == 1 and num_nodes == 1) else "ddp"
        if precision.startswith("bf16") and not npu_bf16_supported():
            raise LitFTError(f"trainer.precision={precision}: this NPU has no bf16; use 16-mixed or 32-true")
        if precision in ("bf16-mixed", "16-mixed") and not is_ds:
            plugins.append(MixedPrecision(precision, device="npu"))  # Lightning would autocast on "cuda"
            precision = None
    return {
        "accelerator": acc,
        "strategy": strategy,
        "devices": devices,
        "num_nodes": num_nodes,
        "precision": precision,
        "plugins": plugins or None,
    }


__all__ = ["trainer_kwargs", "accelerator_name"]
