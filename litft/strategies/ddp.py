"""DDP with the process-group backend chosen per device, and without CUDA streams on NPU/CPU."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any, Optional

import torch

from litft.accelerators.npu import npu_module
from litft.shims.lightning import DDPStrategyHooks
from litft.strategies.timeout import StartupTimeout

BACKENDS = {"cuda": "nccl", "npu": "hccl", "cpu": "gloo"}
"""torch.distributed backend per device type (anything else falls back to gloo)."""


def backend_for_device(device: torch.device | str) -> str:
    """nccl on CUDA, hccl on Ascend NPU, gloo on CPU."""
    return BACKENDS.get(torch.device(device).type, "gloo")


def device_stream_context(device: torch.device):
    """A side stream for wrapping a model in DDP: torch.cuda on CUDA, torch.npu on NPU, none on CPU."""
    if device.type == "cuda":
        return torch.cuda.stream(torch.cuda.Stream())
    if device.type == "npu":
        npu = npu_module()
        return npu.stream(npu.Stream())
    return nullcontext()


class LitFTDDPStrategy(StartupTimeout, DDPStrategyHooks):
    """Lightning's DDP, with the backend picked per device (nccl/hccl/gloo) and NPU-safe model wrapping.

    Stock DDP wraps the model in ``torch.cuda.stream(...)`` whenever the device is not a CPU, which raises on
    the CPU-only torch of Ascend hosts, and on Lightning <= 2.5 picks gloo for unknown devices.
    """

    def __init__(self, *args: Any, timeout: Optional[timedelta] = None, **kwargs: Any) -> None:
        # long until the first optimizer step, bounded after it: litft.strategies.timeout
        super().__init__(*args, timeout=self._startup_timeout_for(timeout), **kwargs)

    def default_process_group_backend(self) -> str:
        return backend_for_device(self.root_device)

    def setup_distributed(self) -> None:
        if self.root_device.type != "npu":
            return super().setup_distributed()
        self.setup_distributed_unbound()  # hccl binds the device through set_device, not init_process_group

    def ddp_wrap_context(self) -> AbstractContextManager:
        return device_stream_context(self.root_device)

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        for name, fup in (("ddp", None), ("ddp_find_unused_parameters_true", True),
                          ("ddp_find_unused_parameters_false", False)):
            kwargs = {} if fup is None else {"find_unused_parameters": fup}
            strategy_registry.register(name, cls, description=f"litft {cls.__name__}", override=True,
                                       start_method="popen", **kwargs)
