"""Strategies litft adds to Lightning (registered before the CLI parses).

After :func:`register`, the names ``ddp``, ``ddp_find_unused_parameters_{true,false}``, ``deepspeed``,
``deepspeed_stage_{1,2,3}``, ``deepspeed_stage_2_offload`` and ``deepspeed_stage_3_offload`` resolve to
litft's classes (per-device backend; DeepSpeed on CUDA, NPU and CPU with adapter-only checkpoints).
A DeepSpeed JSON goes through ``class_path: litft.strategies.LitFTDeepSpeedStrategy`` + ``init_args.config``.
"""

from __future__ import annotations

from lightning.pytorch.strategies import StrategyRegistry

from litft.strategies.compat import check_quantization, check_strategy
from litft.strategies.ddp import LitFTDDPStrategy, backend_for_device
from litft.strategies.deepspeed import LitFTDeepSpeedStrategy, is_deepspeed, is_zero3
from litft.strategies.resolve import trainer_kwargs
from litft.strategies.state import gathered_trainable_state_dict

__all__ = [
    "LitFTDDPStrategy", "LitFTDeepSpeedStrategy", "backend_for_device", "check_quantization", "check_strategy",
    "gathered_trainable_state_dict", "is_deepspeed", "is_zero3", "register", "trainer_kwargs",
]


def register() -> None:
    """Register litft's strategies in Lightning's StrategyRegistry (idempotent; replaces Lightning's entries)."""
    if StrategyRegistry["ddp"]["strategy"] is not LitFTDDPStrategy:
        LitFTDDPStrategy.register_strategies(StrategyRegistry)
    if StrategyRegistry["deepspeed_stage_2"]["strategy"] is not LitFTDeepSpeedStrategy:
        LitFTDeepSpeedStrategy.register_strategies(StrategyRegistry)


register()
