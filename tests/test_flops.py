"""litft's table of dense peak FLOP/s (litft.accelerators.flops) and how Throughput uses it for MFU.

No GPU or NPU here: the device-name queries answer with the strings real cards print.
"""

from __future__ import annotations

import logging
import re
import types

import pytest
import torch

from litft.accelerators import flops
from litft.callbacks.throughput import Throughput, peak_flops_per_device

T = 1e12

# torch.cuda.get_device_name() / torch.npu.get_device_name() strings -> the table entry they must resolve to
CUDA_NAMES = {
    "Tesla V100-SXM2-32GB": "V100 SXM",
    "Tesla V100-SXM2-16GB": "V100 SXM",
    "Tesla V100-PCIE-32GB": "V100 PCIe",
    "Tesla V100S-PCIE-32GB": "V100S PCIe",
    "Tesla T4": "T4",
    "NVIDIA A10": "A10",
    "NVIDIA A10G": "A10G",
    "NVIDIA A30": "A30",
    "NVIDIA A40": "A40",
    "NVIDIA A100-SXM4-80GB": "A100",
    "NVIDIA A100-SXM4-40GB": "A100",
    "NVIDIA A100-PCIE-40GB": "A100",
    "NVIDIA A100 80GB PCIe": "A100",
    "NVIDIA A800-SXM4-80GB": "A800",
    "NVIDIA A800 80GB PCIe": "A800",
    "NVIDIA RTX A6000": "RTX A6000",
    "NVIDIA L4": "L4",
    "NVIDIA L40": "L40",
    "NVIDIA L40S": "L40S",
    "NVIDIA H100 80GB HBM3": "H100 SXM",
    "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H100 NVL": "H100 NVL",
    "NVIDIA H800": "H800 SXM",
    "NVIDIA H800 PCIe": "H800 PCIe",
    "NVIDIA H20": "H20",
    "NVIDIA H200": "H200 SXM",
    "NVIDIA H200 NVL": "H200 NVL",
    "NVIDIA GH200 480GB": "GH200",
    "NVIDIA B100": "B100",
    "NVIDIA B200": "B200",
    "NVIDIA GB200": "GB200",
}
NPU_NAMES = {
    "Ascend910A": "Ascend 910 ProA/PremiumA/910A",
    "Ascend910ProA": "Ascend 910 ProA/PremiumA/910A",
    "Ascend910PremiumA": "Ascend 910 ProA/PremiumA/910A",
    "Ascend910ProB": "Ascend 910 ProB",
    "Ascend910B1": "Ascend 910B1",
    "Ascend910B2": "Ascend 910B2",
    "Ascend910B2C": "Ascend 910B2",
    "Ascend910B3": "Ascend 910B3",
    "Ascend910B4": "Ascend 910B4",
    "Ascend910B4-1": "Ascend 910B4",
    "Ascend910_9391": "Ascend 910C (one die)",
    "Ascend910_9392": "Ascend 910C (one die)",
}


@pytest.fixture
def cuda_named(monkeypatch):
    """torch.cuda.get_device_name answers ``name``; fp32 matmuls in full precision unless a test says otherwise."""
    precision = torch.get_float32_matmul_precision()

    def install(name: str) -> torch.device:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        return torch.device("cuda", 0)

    torch.set_float32_matmul_precision("highest")
    yield install
    torch.set_float32_matmul_precision(precision)


@pytest.fixture
def npu_named(monkeypatch):
    """A stand-in ``torch.npu`` whose get_device_name answers ``name``, and an npu device stand-in."""

    def install(name: str):
        monkeypatch.setattr(torch, "npu", types.SimpleNamespace(get_device_name=lambda device=None: name), raising=False)
        return types.SimpleNamespace(type="npu", index=0)

    return install


def test_every_entry_resolves_from_a_real_device_name(cuda_named, npu_named):
    for name, chip in CUDA_NAMES.items():
        device = cuda_named(name)
        found = flops.lookup(device, torch.float16)
        assert found.peak is not None and found.peak.chip == chip, name
        assert found.flops == found.peak.flops["fp16"] == peak_flops_per_device(device, torch.float16), name
    for name, chip in NPU_NAMES.items():
        device = npu_named(name)
        found = flops.lookup(device, torch.float16)
        assert found.peak is not None and found.peak.chip == chip, name
        assert found.flops == found.peak.flops["fp16"], name
    assert {p.chip for p in flops.CUDA_PEAKS} == set(CUDA_NAMES.values())
    assert {p.chip for p in flops.NPU_PEAKS} == set(NPU_NAMES.values())


def test_names_that_must_not_match(cuda_named, npu_named):
    """Word bounds: no chip is taken for another whose name contains it."""
    for name in ("NVIDIA GeForce RTX 4090", "NVIDIA RTX 6000 Ada Generation", "NVIDIA A2", "NVIDIA T400",
                 "NVIDIA RTX A4000", "Tesla P100-PCIE-16GB", "NVIDIA L20", "NVIDIA B300 SXM6 AC"):
        assert flops.lookup(cuda_named(name), torch.bfloat16).peak is None, name
    # the first-generation "Ascend910B" SoC name is not the 910B series (Ascend910B1..B4)
    for name in ("Ascend910B", "Ascend310P3"):
        assert flops.lookup(npu_named(name), torch.float16).peak is None, name


def test_dense_figures_of_the_common_chips(cuda_named):
    """Dense figures: half of NVIDIA's starred 'with sparsity' numbers (H100 SXM bf16 is 989.5, not 1,979)."""
    expected = {
        "NVIDIA H100 80GB HBM3": 989.5 * T, "NVIDIA H200": 989.5 * T, "NVIDIA H100 NVL": 835.5 * T,
        "NVIDIA H100 PCIe": 756.5 * T, "NVIDIA A100-SXM4-80GB": 312 * T, "NVIDIA L40S": 362.05 * T,
        "NVIDIA L4": 121 * T, "NVIDIA B200": 2250 * T, "NVIDIA GB200": 2500 * T, "NVIDIA H20": 148 * T,
        "NVIDIA A40": 149.7 * T, "NVIDIA RTX A6000": 154.8 * T,
    }
    for name, value in expected.items():
        assert peak_flops_per_device(cuda_named(name), torch.bfloat16) == value, name


def test_table_shape():
    for peak in flops.CUDA_PEAKS + flops.NPU_PEAKS:
        assert peak.source and re.search(r"\\b|\^", peak.pattern), peak.chip
        assert set(peak.flops) <= {"bf16", "fp16", "tf32", "fp32"}, peak.chip
        ordered = [peak.flops[k] for k in ("fp16", "tf32", "fp32") if k in peak.flops]
        assert ordered == sorted(ordered, reverse=True), peak.chip  # tensor fp16 >= tf32 >= plain fp32
        if "bf16" in peak.flops:
            assert peak.flops["bf16"] == peak.flops["fp16"], peak.chip
    volta_turing = [p for p in flops.CUDA_PEAKS if p.chip in ("V100 SXM", "V100 PCIe", "V100S PCIe", "T4")]
    assert all("bf16" not in p.flops and "tf32" not in p.flops for p in volta_turing)


def test_fp32_counts_at_the_tf32_rate_when_tf32_is_allowed(cuda_named):
    a100 = cuda_named("NVIDIA A100-SXM4-80GB")
    assert peak_flops_per_device(a100, torch.float32) == 19.5 * T  # precision "highest": plain fp32
    torch.set_float32_matmul_precision("high")  # TF32 matmuls (the fixture restores the setting)
    assert peak_flops_per_device(a100, torch.float32) == 156 * T
    assert flops.lookup(a100, torch.float32).dtype_name == "float32 (TF32)"
    # Volta has no TF32: fp32 stays fp32 whatever the setting
    assert peak_flops_per_device(cuda_named("Tesla V100-SXM2-32GB"), torch.float32) == 15.7 * T


def _stubs(device, precision: str):
    trainer = types.SimpleNamespace(precision=precision, is_global_zero=True, global_step=0)
    module = torch.nn.Linear(2, 2)
    module.device = device  # what a LightningModule exposes
    return trainer, module


def test_unknown_peak_gives_no_mfu_and_one_clear_line(cuda_named, caplog):
    device = cuda_named("NVIDIA GeForce GTX 1080")
    trainer, module = _stubs(device, "bf16-mixed")
    tp = Throughput()
    with caplog.at_level(logging.INFO, logger="litft"):
        tp.on_train_start(trainer, module)
        tp.on_train_start(trainer, module)  # a second fit with the same callback: said once
    assert tp.peak is None
    lines = [r.getMessage() for r in caplog.records if "MFU" in r.getMessage()]
    assert lines == ["MFU n/a: unknown peak for NVIDIA GeForce GTX 1080 bfloat16; set Throughput(peak_flops=...)"]


def test_known_chip_without_the_dtype_gives_no_mfu(cuda_named, caplog):
    trainer, module = _stubs(cuda_named("Tesla T4"), "bf16-mixed")  # bf16 on a T4: emulated, no peak
    tp = Throughput()
    with caplog.at_level(logging.INFO, logger="litft"):
        tp.on_train_start(trainer, module)
    assert tp.peak is None
    assert "MFU n/a: unknown peak for Tesla T4 bfloat16; set Throughput(peak_flops=...)" in caplog.messages


def test_estimates_are_said_to_be_estimates(npu_named, caplog):
    trainer, module = _stubs(npu_named("Ascend910B3"), "bf16-mixed")
    tp = Throughput()
    with caplog.at_level(logging.INFO, logger="litft"):
        tp.on_train_start(trainer, module)
    assert tp.peak == 313 * T
    [line] = [m for m in caplog.messages if "MFU" in m]
    assert "313.0 TFLOPS" in line and "Ascend 910B3" in line and "estimate" in line


def test_peak_flops_argument_overrides_the_table(cuda_named, caplog):
    trainer, module = _stubs(cuda_named("NVIDIA GeForce GTX 1080"), "16-mixed")
    tp = Throughput(peak_flops=1e13)
    with caplog.at_level(logging.INFO, logger="litft"):
        tp.on_train_start(trainer, module)
    assert tp.peak == 1e13 and not [m for m in caplog.messages if "MFU" in m]
