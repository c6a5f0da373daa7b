"""Contract tests for the Ascend NPU accelerator, with a stand-in for the ``torch.npu`` namespace.

No NPU (and no torch_npu) exists here. The stand-in below lives in this file only: it records the calls
litft makes and answers device_count / is_bf16_supported like torch_npu does. What it proves is that litft
calls the torch_npu API the documented way; it proves nothing about a real NPU.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.strategies import SingleDeviceStrategy

import litft.accelerators as acc
from litft.accelerators import npu as npu_mod
from litft.errors import LitFTError
from litft.strategies import LitFTDDPStrategy, backend_for_device, trainer_kwargs
from litft.strategies.ddp import device_stream_context

# The stand-in renames torch's private-use device to "npu": process-wide and irreversible, and afterwards
# torch.optim's accelerator check fails in every later test of the process. tests/conftest.py therefore runs
# the tests marked npu_standin after all others.
pytestmark = pytest.mark.npu_standin


class FakeNPU:
    """Stand-in for ``torch.npu`` (torch_npu's namespace): the subset litft calls, with a call log."""

    def __init__(self, count: int = 8, bf16: bool = True):
        self.count, self.bf16, self.calls = count, bf16, []

    def device_count(self):
        return self.count

    def is_available(self):
        return self.count > 0

    def is_bf16_supported(self):
        return self.bf16

    def set_device(self, device):
        self.calls.append(("set_device", str(device)))

    def set_compile_mode(self, *, jit_compile):
        self.calls.append(("set_compile_mode", jit_compile))

    def memory_stats(self, device=None):
        return {"allocated_bytes.all.current": 0}

    def empty_cache(self):
        self.calls.append(("empty_cache",))

    def Stream(self):  # noqa: N802 - mirrors torch.npu.Stream
        return "npu-side-stream"

    @contextlib.contextmanager
    def stream(self, s):
        self.calls.append(("stream", s))
        yield


@pytest.fixture
def fake_npu(monkeypatch):
    """Install the stand-in as ``torch.npu`` and name torch's private-use device 'npu' (as torch_npu does)."""
    if torch._C._get_privateuse1_backend_name() != "npu":
        torch.utils.rename_privateuse1_backend("npu")  # process-wide, irreversible: only the name changes
    fake = FakeNPU()
    monkeypatch.setattr(torch, "npu", fake, raising=False)
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("LITFT_NPU_JIT_COMPILE", raising=False)
    return fake


# --- registration and guarded import -------------------------------------------------------------------------


def test_npu_is_registered_and_absent_on_this_host():
    assert AcceleratorRegistry["npu"]["accelerator"] is acc.NPUAccelerator
    acc.register()  # idempotent
    assert not hasattr(torch, "npu")
    assert acc.NPUAccelerator.is_available() is False
    assert acc.NPUAccelerator.auto_device_count() == 0
    assert acc.resolve_accelerator("auto") == "cpu"
    with pytest.raises(Exception, match="NPUAccelerator.*not available"):
        Trainer(accelerator="npu", logger=False)


@pytest.mark.parametrize("body", ["import sys; sys.exit(1)", "raise ImportError('libhccl.so missing')",
                                  "raise OSError('libascendcl.so: cannot open')"])
def test_broken_torch_npu_import_never_crashes(tmp_path, monkeypatch, body):
    (tmp_path / "torch_npu.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("torch_npu", None)
    npu_mod._import_torch_npu.cache_clear()
    try:
        assert npu_mod._import_torch_npu() is False
        assert npu_mod.npu_module() is None
        assert npu_mod.npu_device_count() == 0
        assert acc.default_precision("auto") == "32-true"
    finally:
        sys.modules.pop("torch_npu", None)
        npu_mod._import_torch_npu.cache_clear()


def test_import_litft_changes_no_process_wide_setting():
    """torch's out-of-tree backend autoload stays as the user left it (litft imports torch_npu itself, guarded)."""
    code = "import os; before = dict(os.environ); import litft, litft.cli; print(dict(os.environ) == before)"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_DEVICE_BACKEND_AUTOLOAD"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"


# --- device parsing and ASCEND_RT_VISIBLE_DEVICES ------------------------------------------------------------


@pytest.mark.parametrize(
    "devices,expected",
    [(2, [0, 1]), ("2", [0, 1]), ("0,3", [0, 3]), ("[1, 2]", [1, 2]), ([5, 7], [5, 7]), (-1, list(range(8))),
     ("-1", list(range(8))), ("auto", list(range(8)))],
)
def test_parse_devices(fake_npu, devices, expected):
    assert acc.NPUAccelerator.parse_devices(devices) == expected
    assert acc.NPUAccelerator.get_parallel_devices(expected) == [torch.device("npu", i) for i in expected]


@pytest.mark.parametrize("devices,message", [(0, "positive"), ("9", "asks for NPU 8"), ([8], "asks for NPU 8"),
                                             ("two", "expected a count"), ([1, 1], "twice")])
def test_parse_devices_rejects(fake_npu, devices, message):
    with pytest.raises(LitFTError, match=message):
        acc.NPUAccelerator.parse_devices(devices)


def test_visible_devices_renumber_from_zero(fake_npu, monkeypatch):
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "4,5")
    fake_npu.count = 2  # the runtime exposes only the listed cards, as npu:0 and npu:1
    assert npu_mod.visible_device_ids() == [4, 5]
    assert acc.NPUAccelerator.parse_devices(2) == [0, 1]
    with pytest.raises(LitFTError, match=r"asks for NPU 2 but this process sees 2 NPU\(s\).*ASCEND_RT_VISIBLE_DEVICES='4,5'"):
        acc.NPUAccelerator.parse_devices(3)


@pytest.mark.parametrize("value,message", [("3,1", "strictly ascending"), ("0,0", "strictly ascending"),
                                           ("0,x,2", "'x' is not a device id"), ("0,,1", "'' is not a device id"),
                                           ("-1", "'-1' is not a device id")])
def test_visible_devices_invalid(fake_npu, monkeypatch, value, message):
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", value)
    with pytest.raises(LitFTError, match=message):
        acc.NPUAccelerator.parse_devices(1)
    with pytest.raises(LitFTError, match="ASCEND_RT_VISIBLE_DEVICES"):
        Trainer(**trainer_kwargs(accelerator="npu", devices=1), logger=False)


def test_visible_devices_unset_or_blank():
    assert npu_mod.visible_device_ids("") is None
    assert npu_mod.visible_device_ids(" 0, 2 ,7") == [0, 2, 7]


# --- device set-up, JIT compile, backend, streams ------------------------------------------------------------


def test_setup_device_turns_jit_compile_off_by_default(fake_npu, monkeypatch):
    acc.NPUAccelerator().setup_device(torch.device("npu", 1))
    assert fake_npu.calls == [("set_compile_mode", False), ("set_device", "npu:1")]
    monkeypatch.setenv("LITFT_NPU_JIT_COMPILE", "1")
    fake_npu.calls.clear()
    acc.NPUAccelerator().setup_device(torch.device("npu", 0))
    assert fake_npu.calls[0] == ("set_compile_mode", True)
    with pytest.raises(LitFTError, match="expected npu"):
        acc.NPUAccelerator().setup_device(torch.device("cpu"))


def test_backend_per_device(fake_npu):
    assert backend_for_device("npu:0") == "hccl"
    assert backend_for_device(torch.device("cuda", 1)) == "nccl"
    assert backend_for_device("cpu") == "gloo"


def test_ddp_model_wrapping_uses_npu_streams_not_cuda(fake_npu):
    with device_stream_context(torch.device("npu", 0)):
        pass
    assert fake_npu.calls == [("stream", "npu-side-stream")]


# --- precision -----------------------------------------------------------------------------------------------


def test_default_precision(fake_npu):
    assert acc.resolve_accelerator("auto") == "npu"  # NPUs present, no CUDA
    assert acc.resolve_accelerator("gpu") == "npu"
    assert acc.default_precision("npu") == "bf16-mixed"
    assert acc.default_precision("auto") == "bf16-mixed"
    assert acc.default_precision("cpu") == "32-true"
    fake_npu.bf16 = False  # e.g. Ascend 910A
    assert acc.default_precision("npu") == "32-true"
    with pytest.raises(LitFTError, match="no bf16"):
        trainer_kwargs(accelerator="npu", devices=1, precision="bf16-mixed")


def test_cpu_precision_auto_is_fp32():
    assert acc.default_precision("cpu") == "32-true"
    assert acc.default_precision("auto") == "32-true"  # this host: no GPU, no NPU
    assert trainer_kwargs()["precision"] == "32-true"


def test_mixed_precision_autocasts_on_npu(fake_npu):
    kw = trainer_kwargs(accelerator="npu", devices=1)  # precision auto -> bf16-mixed
    trainer = Trainer(**kw, logger=False, enable_checkpointing=False)
    assert isinstance(trainer.precision_plugin, MixedPrecision)
    assert (trainer.precision_plugin.device, trainer.precision_plugin.precision) == ("npu", "bf16-mixed")


# --- strategy selection --------------------------------------------------------------------------------------


@pytest.mark.parametrize("devices", [1, "1", [3]])
def test_one_npu_runs_single_device_on_that_npu(fake_npu, devices):
    trainer = Trainer(**trainer_kwargs(accelerator="npu", devices=devices, precision="32-true"), logger=False)
    assert isinstance(trainer.strategy, SingleDeviceStrategy)
    expected = 3 if devices == [3] else 0
    assert trainer.strategy.root_device == torch.device("npu", expected)
    assert isinstance(trainer.accelerator, acc.NPUAccelerator)


def test_one_npu_through_auto_accelerator(fake_npu, monkeypatch):
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "6")
    fake_npu.count = 1
    trainer = Trainer(**trainer_kwargs(precision="32-true"), logger=False)  # accelerator/devices/strategy auto
    assert isinstance(trainer.accelerator, acc.NPUAccelerator)
    assert trainer.strategy.root_device == torch.device("npu", 0)


@pytest.mark.parametrize("devices,num_nodes,world", [(2, 1, 2), ("0,1,2,3", 1, 4), (1, 2, 2), ("auto", 1, 8)])
def test_several_npus_use_litft_ddp_over_hccl(fake_npu, devices, num_nodes, world):
    kw = trainer_kwargs(accelerator="npu", devices=devices, num_nodes=num_nodes, precision="32-true")
    trainer = Trainer(**kw, logger=False)
    strategy = trainer.strategy
    assert type(strategy) is LitFTDDPStrategy
    assert strategy._get_process_group_backend() == "hccl"
    assert strategy.root_device.type == "npu"
    assert len(strategy.parallel_devices) * strategy.num_nodes == world
    # `strategy: ddp` written in the YAML resolves to the same class
    kw = trainer_kwargs(accelerator="npu", devices=2, strategy="ddp", precision="32-true")
    assert type(Trainer(**kw, logger=False).strategy) is LitFTDDPStrategy


def test_ddp_on_npus_makes_an_unbound_hccl_group_and_wraps_the_model_in_an_npu_stream(fake_npu, monkeypatch):
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.strategies import ddp as lightning_ddp

    from litft.shims import lightning as shim

    groups = []
    for module in (shim, lightning_ddp):  # litft's path and Lightning's own (bound to the device): recorded, not run
        monkeypatch.setattr(module, "_init_dist_connection", lambda env, backend, **kw: groups.append((backend, kw)))
    monkeypatch.setattr(shim, "DistributedDataParallel",
                        lambda **kw: fake_npu.calls.append(("ddp", kw["device_ids"], kw["module"])) or "wrapped")
    trainer = Trainer(**trainer_kwargs(accelerator="npu", devices=2, strategy="ddp", precision="32-true"), logger=False)
    strategy = trainer.strategy
    strategy.setup_distributed()
    # hccl binds the device through set_device: the group is not bound to one (device_id=None)
    assert groups == [("hccl", {"timeout": strategy._phase_timeouts[0], "device_id": None})]
    strategy.model = model = BoringModel()
    strategy.configure_ddp()
    assert strategy.model == "wrapped"
    assert fake_npu.calls == [("stream", "npu-side-stream"), ("ddp", [0], model)]


def test_litft_trainer_resolves_npu_flags(fake_npu):
    """The CLI's trainer applies all of the above: `accelerator: npu, devices: 1` really runs on npu:0."""
    from litft.trainer import LitFTTrainer

    trainer = LitFTTrainer(accelerator="npu", devices=1, logger=False, enable_progress_bar=False)
    assert trainer.strategy.root_device == torch.device("npu", 0)
    assert (trainer.precision_plugin.device, trainer.precision) == ("npu", "bf16-mixed")
    trainer = LitFTTrainer(accelerator="npu", devices=2, strategy="ddp", precision="32-true", logger=False)
    assert type(trainer.strategy) is LitFTDDPStrategy and trainer.strategy._get_process_group_backend() == "hccl"
