"""Ascend NPU accelerator for Lightning (Lightning itself has none).

Everything that touches ``torch_npu`` goes through :func:`npu_module`, which imports it once, guarded:
on a CPU machine, a login node or a host without CANN the import fails (``ImportError``, ``OSError``,
``RuntimeError`` or, with older torch_npu, ``SystemExit``) and litft simply sees no NPU.

Nothing here has run on a real NPU: it is written against torch_npu's documented ``torch.npu`` API
and tested with a stand-in namespace (tests/test_npu.py).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from functools import lru_cache
from typing import Any

import torch
from lightning.pytorch.accelerators import Accelerator

from litft.errors import LitFTError
from litft.versions import check

log = logging.getLogger(__name__)

VISIBLE_DEVICES_ENV = "ASCEND_RT_VISIBLE_DEVICES"
JIT_COMPILE_ENV = "LITFT_NPU_JIT_COMPILE"
"""Set to 1 to keep NPU JIT compilation on (litft turns it off by default, as it is slow for dynamic shapes)."""


@lru_cache(maxsize=1)
def _import_torch_npu() -> bool:
    """Import torch_npu if it is installed and loads; never raise (it may call sys.exit without CANN)."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        # optional (Ascend hosts only), heavy; may call sys.exit without CANN
        import torch_npu  # noqa: F401
    except (ImportError, OSError, RuntimeError, SystemExit) as err:  # SystemExit: older torch_npu without CANN
        log.warning("torch_npu is installed but cannot be loaded (%s); NPUs are not used.", err)
        return False
    return True


def npu_module() -> Any | None:
    """The ``torch.npu`` namespace, or None when torch_npu is absent or does not load."""
    npu = getattr(torch, "npu", None)
    if npu is None and _import_torch_npu():
        npu = getattr(torch, "npu", None)
    return npu


def npu_device_count() -> int:
    """How many NPUs this process sees (0 when there is no usable torch_npu)."""
    npu = npu_module()
    if npu is None:
        return 0
    try:
        return int(npu.device_count())
    except Exception as err:  # a broken driver must not crash a login node
        log.warning("torch.npu.device_count() failed (%s); NPUs are not used.", err)
        return 0


def npu_bf16_supported() -> bool:
    """Whether the NPU supports bf16 (Ascend 910B does, 910A does not)."""
    npu = npu_module()
    return bool(npu is not None and npu_device_count() > 0 and npu.is_bf16_supported())


def visible_device_ids(value: str | None = None) -> list[int] | None:
    """Parse and validate ``ASCEND_RT_VISIBLE_DEVICES`` (None when unset).

    Like CUDA_VISIBLE_DEVICES, the listed cards are renumbered from 0; unlike it, the runtime silently
    stops at the first bad entry, so litft rejects anything that is not strictly ascending integers.
    """
    value = os.environ.get(VISIBLE_DEVICES_ENV) if value is None else value
    if value is None or value.strip() == "":
        return None
    ids: list[int] = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit():
            raise LitFTError(
                f"{VISIBLE_DEVICES_ENV}={value!r}: {part!r} is not a device id; "
                "use ascending non-negative integers, e.g. 0,1,2,3"
            )
        if ids and int(part) <= ids[-1]:
            raise LitFTError(
                f"{VISIBLE_DEVICES_ENV}={value!r}: ids must be strictly ascending "
                f"({part} comes after {ids[-1]}); the Ascend runtime would ignore everything from there on"
            )
        ids.append(int(part))
    return ids


def parse_npu_devices(devices: int | str | list[int] | tuple[int, ...], available: int) -> list[int]:
    """Turn ``trainer.devices`` (int, '2', '0,1', '-1', [0, 1]) into NPU indices, checked against what is visible."""
    if isinstance(devices, str):
        text = devices.strip().strip("[]")
        if text in ("-1", "auto"):
            indices = list(range(available))
        elif "," in text:
            try:
                indices = [int(p) for p in text.split(",") if p.strip()]
            except ValueError:
                raise LitFTError(f"trainer.devices={devices!r}: expected a count, 'a,b,..' indices or -1") from None
        else:
            try:
                return parse_npu_devices(int(text), available)
            except ValueError:
                raise LitFTError(f"trainer.devices={devices!r}: expected a count, 'a,b,..' indices or -1") from None
    elif isinstance(devices, bool):
        raise LitFTError(f"trainer.devices={devices!r}: expected a count, indices or -1")
    elif isinstance(devices, int):
        if devices == -1:
            indices = list(range(available))
        elif devices <= 0:
            raise LitFTError(f"trainer.devices={devices}: must be a positive count, a list of indices or -1")
        else:
            indices = list(range(devices))
    else:
        indices = [int(i) for i in devices]
    if not indices:
        raise LitFTError(f"trainer.devices={devices!r}: no NPU is visible to this process")
    if len(set(indices)) != len(indices):
        raise LitFTError(f"trainer.devices={devices!r}: an NPU index is listed twice")
    visible = visible_device_ids()
    bad = [i for i in indices if i < 0 or i >= available]
    if bad:
        seen = f" ({VISIBLE_DEVICES_ENV}={os.environ[VISIBLE_DEVICES_ENV]!r})" if visible is not None else ""
        raise LitFTError(
            f"trainer.devices={devices!r} asks for NPU {bad[0]} but this process sees {available} NPU(s)"
            f" numbered 0..{available - 1}{seen}"
        )
    return indices


def jit_compile_requested() -> bool:
    """NPU JIT compile is off unless LITFT_NPU_JIT_COMPILE is 1/true/yes."""
    return os.environ.get(JIT_COMPILE_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


class NPUAccelerator(Accelerator):
    """Huawei Ascend NPUs through torch_npu (``trainer.accelerator: npu``)."""

    def setup_device(self, device: torch.device) -> None:
        if device.type != "npu":
            raise LitFTError(f"the npu accelerator was given device {device}; expected npu:<index>")
        npu = npu_module()
        if npu is None:
            raise LitFTError("trainer.accelerator=npu but torch_npu is not installed or cannot load (pip install litft[npu])")
        check("torch-npu", missing_ok=True)  # litft/versions.py; torch.npu loaded: a source build has no version record
        npu.set_compile_mode(jit_compile=jit_compile_requested())
        npu.set_device(device)

    def teardown(self) -> None:
        npu = npu_module()
        if npu is not None:
            npu.empty_cache()

    def get_device_stats(self, device: Any) -> dict[str, Any]:
        npu = npu_module()
        return dict(npu.memory_stats(device)) if npu is not None else {}

    @staticmethod
    def parse_devices(devices: int | str | list[int]) -> list[int]:
        visible_device_ids()  # validate ASCEND_RT_VISIBLE_DEVICES before anything uses it
        return parse_npu_devices(devices, npu_device_count())

    @staticmethod
    def get_parallel_devices(devices: int | str | list[int]) -> list[torch.device]:
        if not isinstance(devices, list):
            devices = NPUAccelerator.parse_devices(devices)
        return [torch.device("npu", i) for i in devices]

    @staticmethod
    def auto_device_count() -> int:
        return npu_device_count()

    @staticmethod
    def is_available() -> bool:
        return npu_device_count() > 0

    @staticmethod
    def name() -> str:
        return "npu"

    @classmethod
    def register_accelerators(cls, accelerator_registry: Any) -> None:
        accelerator_registry.register(cls.name(), cls, description=cls.__name__, override=True)
