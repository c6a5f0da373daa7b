"""DeepSpeed ZeRO through Lightning on CUDA, Ascend NPU and CPU, saving adapter-only checkpoints.

Lightning's DeepSpeedStrategy refuses anything but CUDA. Two changes make it run elsewhere: environment
set-up as plain DDP (no CUDA check), and an indexed device per rank on CPU (``cpu:<local rank>``, as GPUs
have), so Lightning's own device check and ``deepspeed.initialize(device_rank=...)`` work unchanged.
DeepSpeed's own accelerator is pinned to the trainer's through ``DS_ACCELERATOR`` (and
``deepspeed.accelerator.set_accelerator`` when DeepSpeed was imported before).

Gradient accumulation is Lightning's, as under DDP: Lightning groups the micro-batches of each epoch (the
last, possibly shorter, group steps on the epoch's last batch) and divides the training-step loss by
``accumulate_grad_batches``. DeepSpeed is told not to count micro-steps itself
(``managed_gradient_accumulation: false``: ``engine.step()`` is the boundary) and not to divide the loss
again (``backward(scale_wrt_gas=False)``). So every strategy scales the loss the same way
(:func:`litft.strategies.scale.loss_multiplier`) and steps on the same micro-batches.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any, Optional

import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from litft import versions
from litft.accelerators import resolve_accelerator
from litft.errors import LitFTError
from litft.shims.lightning import DeepSpeedStrategyHooks
from litft.strategies import checkpointing, sequence_parallel
from litft.strategies.ddp import backend_for_device
from litft.strategies.timeout import StartupTimeout

log = logging.getLogger(__name__)

DS_ACCELERATORS = {"cuda": "cuda", "gpu": "cuda", "npu": "npu", "cpu": "cpu"}


def pin_deepspeed_accelerator(accelerator: str) -> None:
    """Set DS_ACCELERATOR for litft's accelerator name before DeepSpeed picks one on its own.

    A DS_ACCELERATOR the user exported that contradicts trainer.accelerator is an error.
    """
    wanted = DS_ACCELERATORS.get(accelerator)
    if wanted is None:
        raise LitFTError(f"DeepSpeed does not run on trainer.accelerator={accelerator!r}; use cuda, npu or cpu")
    current = os.environ.get("DS_ACCELERATOR")
    if current is not None and current != wanted and os.environ.get("_LITFT_DS_ACCELERATOR") != current:
        raise LitFTError(
            f"DS_ACCELERATOR={current} contradicts trainer.accelerator={accelerator}; unset it or set DS_ACCELERATOR={wanted}"
        )
    os.environ["DS_ACCELERATOR"] = wanted
    os.environ["_LITFT_DS_ACCELERATOR"] = wanted  # marks the value as ours, so a later choice may replace it
    if "deepspeed.accelerator" in sys.modules:
        # DeepSpeed was imported (and may have guessed) before the accelerator was known: tell it, publicly.
        from deepspeed.accelerator import get_accelerator, set_accelerator  # optional (litft[deepspeed]): imported already

        if get_accelerator().device_name() != wanted:
            set_accelerator(_ds_accelerator(wanted))


def _ds_accelerator(name: str):
    """DeepSpeed's accelerator object for ``cuda``, ``npu`` or ``cpu``."""
    if name == "cpu":
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator  # optional, heavy: only with DeepSpeed

        return CPU_Accelerator()
    if name == "npu":
        from deepspeed.accelerator.npu_accelerator import NPU_Accelerator  # optional, heavy: only with DeepSpeed

        return NPU_Accelerator()
    from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator  # optional, heavy: only with DeepSpeed

    return CUDA_Accelerator()


class LitFTDeepSpeedStrategy(StartupTimeout, DeepSpeedStrategyHooks):
    """DeepSpeed (ZeRO 1/2/3, offload, or a JSON config) on CUDA, NPU or CPU.

    Differences from Lightning's: runs on npu and cpu as well; ``exclude_frozen_parameters`` defaults to
    True so checkpoints hold the adapter only (resume then loads them non-strictly).
    """

    def __init__(self, *args: Any, exclude_frozen_parameters: bool = True, sequence_parallel_size: int = 1,
                 **kwargs: Any) -> None:
        """sequence_parallel_size: ranks that split each sequence (DeepSpeed Ulysses, ZeRO-2/3 only; 1 = none):
        litft.strategies.sequence_parallel."""
        versions.check("deepspeed")  # older DeepSpeed ignores managed_gradient_accumulation (litft/versions.py)
        if "DS_ACCELERATOR" not in os.environ:
            pin_deepspeed_accelerator(resolve_accelerator("auto"))
        # long until the first optimizer step, bounded after it (DeepSpeed's groups too): litft.strategies.timeout
        kwargs["timeout"] = self._startup_timeout_for(kwargs.get("timeout"))
        super().__init__(*args, exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)
        offload = (self.config.get("zero_optimization") or {}).get("offload_optimizer") or {}
        if offload.get("device", "none") != "none":
            # The optimizer comes from configure_optimizers (torch AdamW...), which DeepSpeed refuses with offload
            # unless told otherwise. With LoRA the optimizer state is small, so a torch optimizer on CPU is fine.
            self.config.setdefault("zero_force_ds_cpu_optimizer", False)
        if self.config.get("managed_gradient_accumulation", False):
            raise LitFTError(
                "DeepSpeed config: managed_gradient_accumulation must be false (or unset) with litft: Lightning "
                "groups the micro-batches (trainer.accumulate_grad_batches) for every strategy"
            )
        self.config["managed_gradient_accumulation"] = False
        zero = self.config.get("zero_optimization") or {}

        sequence_parallel.check_size(int(sequence_parallel_size), int(zero.get("stage", 0)))
        self.sequence_parallel_size = int(sequence_parallel_size)
        if zero.get("stage", 0) < 2 and zero.get("overlap_comm"):
            zero["overlap_comm"] = False  # DeepSpeed allows overlap_comm without managed accumulation only from stage 2

    @property
    def handles_gradient_accumulation(self) -> bool:
        """False: Lightning's loop accumulates and calls the optimizer step (``engine.step()``) per group."""
        return False

    def backward(self, closure_loss: torch.Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        # Lightning has already divided the loss by accumulate_grad_batches; DeepSpeed must not divide again.
        kwargs.setdefault("scale_wrt_gas", False)
        return super().backward(closure_loss, optimizer, *args, **kwargs)

    @contextmanager
    def block_backward_sync(self) -> Generator[None, None, None]:
        """Nothing to block: without managed accumulation, ZeRO-2/3 reduce each backward into their partitions
        and stages 0/1 reduce in ``step()`` (the engine's ``no_sync`` refuses ZeRO-2/3)."""
        yield

    def grad_norm(self) -> float | None:
        """Total gradient norm (before clipping) of the last optimizer step, as DeepSpeed computed it."""
        norm = self.model.get_global_grad_norm() if self.model is not None else None
        return None if norm is None else float(norm)

    @property
    def _on_cuda(self) -> bool:
        return self.root_device.type == "cuda"

    def setup_environment(self) -> None:
        pin_deepspeed_accelerator(self.root_device.type)
        if self._on_cuda:
            return super().setup_environment()
        DDPStrategy.setup_environment(self)  # DeepSpeedStrategy's raises for anything but CUDA

    def default_process_group_backend(self) -> str:
        return backend_for_device(self.root_device)

    @property
    def parallel_devices(self) -> Optional[list[torch.device]]:
        return DeepSpeedStrategy.parallel_devices.fget(self)

    @parallel_devices.setter
    def parallel_devices(self, devices: Optional[list[torch.device]]) -> None:
        # Every rank gets an indexed device, CPU included (cpu:<local rank>): Lightning's device-index check and
        # its deepspeed.initialize(device_rank=root_device.index) then hold on CPU as they do on GPUs.
        DeepSpeedStrategy.parallel_devices.fset(self, None if devices is None else [
            torch.device("cpu", i) if d.type == "cpu" and d.index is None else d for i, d in enumerate(devices)
        ])

    @contextmanager
    def model_sharded_context(self) -> Generator[None, None, None]:
        """ZeRO-3: let transformers partition the base model as it loads, and build adapters unpartitioned.

        Lightning runs all of configure_model inside ``deepspeed.zero.Init``; transformers does not know it
        is there (weight init then indexes empty placeholders) and PEFT would initialise LoRA weights on
        placeholders (a no-op: lora_B would not start at zero). Registering the config with transformers
        (HfDeepSpeedConfig) makes ``from_pretrained`` load into ZeRO-3 partitions itself; adapters created
        afterwards are ordinary tensors that ``deepspeed.initialize`` partitions.
        """
        if not is_zero3(self):
            yield
            return
        # heavy (transformers.integrations pulls in accelerate: ~200 modules, ~0.3 s); only ZeRO-3 runs need it
        from transformers.integrations import HfDeepSpeedConfig

        self.complete_config()
        self._hf_deepspeed_config = HfDeepSpeedConfig(self.config)  # transformers holds only a weak reference
        yield

    def teardown(self) -> None:
        if getattr(self, "_hf_deepspeed_config", None) is not None:
            # heavy (pulls in accelerate); imported by model_sharded_context already when this runs
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
            self._hf_deepspeed_config = None
        super().teardown()

    def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Any = None) -> None:
        # Atomic: a new folder per save, made current by one pointer swap (litft.strategies.checkpointing).
        save = lambda c, p: DeepSpeedStrategy.save_checkpoint(self, c, p, storage_options)  # noqa: E731
        checkpointing.atomic_save(self, save, checkpoint, filepath)

    def remove_checkpoint(self, filepath: Any) -> None:
        if self.is_global_zero:
            checkpointing.remove(filepath)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        if self.exclude_frozen_parameters and self.lightning_module is not None:
            # the checkpoint holds trainable (adapter) weights only: the frozen base comes from the model files
            self.lightning_module.strict_loading = False
        return super().load_checkpoint(checkpoint_path, weights_only)

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        entries = {
            "deepspeed": {},
            "deepspeed_stage_1": {"stage": 1},
            "deepspeed_stage_2": {"stage": 2},
            "deepspeed_stage_2_offload": {"stage": 2, "offload_optimizer": True},
            "deepspeed_stage_3": {"stage": 3},
            "deepspeed_stage_3_offload": {"stage": 3, "offload_optimizer": True, "offload_parameters": True},
        }
        for name, kwargs in entries.items():
            strategy_registry.register(name, cls, description=f"litft {cls.__name__} {kwargs}", override=True, **kwargs)


def is_deepspeed(strategy: Any) -> bool:
    return isinstance(strategy, DeepSpeedStrategy)


ZERO3_NAMES = ("deepspeed_stage_3", "deepspeed_stage_3_offload")
"""Registry names of the strategies that partition parameters."""


def is_zero3(strategy: Any) -> bool:
    """Whether the run's parameters are partitioned across ranks: DeepSpeed ZeRO stage 3, given as a strategy or its
    registry name (the only sharding litft offers: FSDP is refused, litft/strategies/compat.py). The one place litft
    answers it."""
    if isinstance(strategy, str):
        return strategy in ZERO3_NAMES
    if not isinstance(strategy, DeepSpeedStrategy):
        return False
    return bool((strategy.config or {}).get("zero_optimization", {}).get("stage") == 3)
