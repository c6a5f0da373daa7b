"""Peak dense FLOP/s of one accelerator per compute dtype: the denominator of MFU.

Dense figures only: NVIDIA's datasheets print tensor-core throughput "with sparsity" (2:4 structured), twice
the dense rate a training run can reach; every such figure here is the datasheet's starred value halved.
Keys: ``bf16``, ``fp16``, ``tf32`` (fp32 matmuls on tensor cores, Ampere and later), ``fp32`` (no tensor
cores). A chip lacks a key when the vendor publishes no figure (e.g. bf16 on V100/T4: emulated, no peak).

Devices are matched by their ``torch.cuda.get_device_name()`` / ``torch.npu.get_device_name()`` string,
lower-cased, with word-bounded patterns tried in order, most specific first ("gh200" before "h200",
"a100" never matches "a10", "l40s" before "l40" before "l4"). Entries marked ``estimate`` have no vendor
figure for that exact SKU; litft says so when it uses one. Anything unlisted: no MFU (set
``Throughput(peak_flops=...)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

T = 1e12
P = 1e15


@dataclass(frozen=True)
class Peak:
    chip: str
    pattern: str  # regular expression searched in the lower-cased device name
    flops: Mapping[str, float]  # dense FLOP/s per dtype key
    source: str
    estimate: bool = False

    def matches(self, name: str) -> bool:
        return re.search(self.pattern, name) is not None


def _same(bf16_fp16: float, tf32: Optional[float] = None, fp32: Optional[float] = None) -> dict[str, float]:
    out = {"bf16": bf16_fp16, "fp16": bf16_fp16}
    if tf32 is not None:
        out["tf32"] = tf32
    if fp32 is not None:
        out["fp32"] = fp32
    return out


_V100_DS = "NVIDIA Tesla V100 datasheet (volta-v100-datasheet-update-us-1165301-r5): tensor 'deep learning', FP32"
_A100_DS = "NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4): TF32 156 | 312*, BF16/FP16 312 | 624*"
_H100_DS = "NVIDIA H100 datasheet / nvidia.com/h100 specifications (starred sparse values halved)"
_H200_DS = "NVIDIA H200 datasheet / nvidia.com/h200 specifications (starred sparse values halved)"
_BW_DS = "NVIDIA Blackwell datasheet, 'Individual Blackwell GPU Specifications' (starred sparse values halved)"

CUDA_PEAKS: tuple[Peak, ...] = (
    # --- Blackwell
    Peak("GB200", r"\bgb200\b", _same(2.5 * P, 1.25 * P, 80 * T),
         _BW_DS + ": GB200 FP16/BF16 5 PF*, TF32 2.5 PF*, FP32 80 TF"),
    Peak("B200", r"\bb200\b", _same(2.25 * P, 1.1 * P, 75 * T),
         _BW_DS + ": HGX B200 FP16/BF16 4.5 PF*, TF32 2.2 PF*, FP32 75 TF"),
    Peak("B100", r"\bb100\b", _same(1.75 * P, 0.9 * P),
         "NVIDIA Blackwell datasheet of March 2024 (B100 column: FP16/BF16 3.5 PF*, TF32 1.8 PF*); B100 is no "
         "longer in NVIDIA's current datasheet", estimate=True),
    # --- Hopper
    Peak("GH200", r"\bgh200\b", _same(989.5 * T, 494.5 * T, 67 * T),
         "NVIDIA GH200 datasheet: the Hopper GPU of GH200 = H100/H200 SXM figures (BF16 1,979*, TF32 989*, FP32 67)"),
    Peak("H200 NVL", r"\bh200\b.*\bnvl", _same(835.5 * T, 417.5 * T, 60 * T),
         _H200_DS + ": H200 NVL BF16 1,671*, TF32 835*, FP32 60"),
    Peak("H200 SXM", r"\bh200\b", _same(989.5 * T, 494.5 * T, 67 * T),
         _H200_DS + ": H200 SXM BF16 1,979*, TF32 989*, FP32 67"),
    Peak("H100 NVL", r"\bh100\b.*\bnvl", _same(835.5 * T, 417.5 * T, 60 * T),
         _H100_DS + ": H100 NVL BF16 1,671*, TF32 835*, FP32 60"),
    Peak("H100 PCIe", r"\bh100\b.*(\bpcie\b|\bhbm2e\b)", _same(756.5 * T, 378 * T, 51 * T),
         _H100_DS + ": H100 PCIe BF16 1,513*, TF32 756*, FP32 51"),
    Peak("H100 SXM", r"\bh100\b", _same(989.5 * T, 494.5 * T, 67 * T),
         _H100_DS + ": H100 SXM BF16 1,979*, TF32 989*, FP32 67 (any H100 name without PCIe/NVL, e.g. '80GB HBM3')"),
    Peak("H800 PCIe", r"\bh800\b.*\bpcie\b", _same(756.5 * T, 378 * T, 51 * T),
         "NVIDIA H800 PCIe datasheet: BF16 1,513*, TF32 756*, FP32 51 (H100 PCIe compute)"),
    Peak("H800 SXM", r"\bh800\b", _same(989.5 * T, 494.5 * T, 67 * T),
         "NVIDIA H800 SXM5 datasheet: BF16 1,979*, TF32 989*, FP32 67 (H100 SXM compute, reduced FP64/NVLink)"),
    Peak("H20", r"\bh20\b", _same(148 * T, 74 * T, 44 * T),
         "NVIDIA H20 specifications as reported by the press (BF16/FP16 148, TF32 74, FP32 44 dense); NVIDIA "
         "publishes no public H20 datasheet", estimate=True),
    # --- Ada
    Peak("L40S", r"\bl40s\b", _same(362.05 * T, 183 * T, 91.6 * T),
         "NVIDIA L40S datasheet: BF16/FP16 362.05 | 733*, TF32 183 | 366*, FP32 91.6"),
    Peak("L40", r"\bl40\b", _same(181.05 * T, 90.5 * T, 90.5 * T),
         "NVIDIA L40 datasheet: BF16/FP16 181.05 | 362.1*, TF32 90.5 | 181*, FP32 90.5"),
    Peak("L4", r"\bl4\b", _same(121 * T, 60 * T, 30.3 * T),
         "NVIDIA L4 datasheet: BF16/FP16 242*, TF32 120*, FP32 30.3"),
    # --- Ampere (A100/A800 before A10/A10G; word bounds keep "a10" from matching "a100")
    Peak("A100", r"\ba100\b", _same(312 * T, 156 * T, 19.5 * T), _A100_DS + "; SXM and PCIe, 40 and 80 GB alike"),
    Peak("A800", r"\ba800\b", _same(312 * T, 156 * T, 19.5 * T),
         "NVIDIA A800 datasheet: A100 compute (TF32 156 | 312*, BF16/FP16 312 | 624*, FP32 19.5), NVLink 400 GB/s"),
    Peak("A30", r"\ba30\b", _same(165 * T, 82 * T, 10.3 * T),
         "NVIDIA A30 datasheet: BF16/FP16 165 | 330*, TF32 82 | 165*, FP32 10.3"),
    Peak("A40", r"\ba40\b", _same(149.7 * T, 74.8 * T, 37.4 * T),
         "NVIDIA A40 datasheet: BF16/FP16 149.7 | 299.4*, TF32 74.8 | 149.6*, FP32 37.4"),
    Peak("RTX A6000", r"\ba6000\b", _same(154.8 * T, 77.4 * T, 38.7 * T),
         "NVIDIA RTX A6000 datasheet: tensor BF16/FP16 (FP32 accumulate) 154.8 | 309.7*, TF32 77.4 | 154.8*, "
         "FP32 38.7"),
    Peak("A10G", r"\ba10g\b", _same(70 * T, 35 * T, 31.52 * T),
         "no NVIDIA datasheet for the AWS-only A10G; third-party figures (Baseten, 'NVIDIA A10 vs A10G'): "
         "BF16/FP16 70, TF32 35, FP32 31.52", estimate=True),
    Peak("A10", r"\ba10\b", _same(125 * T, 62.5 * T, 31.2 * T),
         "NVIDIA A10 datasheet: BF16/FP16 125 | 250*, TF32 62.5 | 125*, FP32 31.2"),
    # --- Turing, Volta: fp16 tensor cores, no bf16, no tf32
    Peak("T4", r"\bt4g?\b", {"fp16": 65 * T, "fp32": 8.1 * T},
         "NVIDIA T4 datasheet: mixed-precision FP16/FP32 65, FP32 8.1"),
    Peak("V100S PCIe", r"\bv100s\b", {"fp16": 130 * T, "fp32": 16.4 * T}, _V100_DS + ": V100S PCIe 130, 16.4"),
    Peak("V100 SXM", r"\bv100\b.*\bsxm", {"fp16": 125 * T, "fp32": 15.7 * T}, _V100_DS + ": V100 SXM2 125, 15.7"),
    Peak("V100 PCIe", r"\bv100\b.*\bpcie\b", {"fp16": 112 * T, "fp32": 14 * T}, _V100_DS + ": V100 PCIe 112, 14"),
)

# Ascend: torch.npu.get_device_name() gives the SoC name ("Ascend910B3", "Ascend910_9391", ...). Huawei publishes
# one figure for the first Ascend 910 (256 TFLOPS FP16, 2019) and system totals for the A3 SuperPoD; it publishes
# no per-SKU figure for 910B1..B4, so those are estimates (override with Throughput(peak_flops=...)).
_ASCEND_910 = "Huawei, Ascend 910 launch (Aug 2019) and Atlas 900 announcement: 256 TFLOPS FP16 per Ascend 910"
NPU_PEAKS: tuple[Peak, ...] = (
    Peak("Ascend 910C (one die)", r"^ascend910_93\d\d", _same(390.5 * T),
         "Huawei: an Atlas 900 A3 SuperPoD of 384 Ascend 910C reaches 300 PFLOPS (16-bit); a 910C is two dies that "
         "torch_npu shows as two devices (300e15 / 768); bins other than the top one may be slower", estimate=True),
    Peak("Ascend 910B1", r"^ascend910b1\b", _same(354 * T),
         "no Huawei per-SKU figure; verl's single 910B figure (354 TFLOPS) is used", estimate=True),
    Peak("Ascend 910B2", r"^ascend910b2c?\b", _same(354 * T),
         "no Huawei per-SKU figure; verl's single 910B figure (354 TFLOPS) is used", estimate=True),
    Peak("Ascend 910B3", r"^ascend910b3\b", _same(313 * T),
         "no Huawei per-SKU figure; 313 TFLOPS is the figure commonly quoted for the 910B3 (no primary source found)",
         estimate=True),
    Peak("Ascend 910B4", r"^ascend910b4", _same(280 * T),
         "no Huawei per-SKU figure; 280 TFLOPS FP16 is what Gitee AI's Ascend 910B documentation quotes (SKU "
         "unnamed), taken for the lowest bin", estimate=True),
    Peak("Ascend 910 ProA/PremiumA/910A", r"^ascend910(a|proa|premiuma)$", {"fp16": 256 * T},
         _ASCEND_910 + " (no bf16)"),
    Peak("Ascend 910 ProB", r"^ascend910prob$", {"fp16": 256 * T},
         _ASCEND_910 + " (no bf16); Huawei gives no separate ProB figure", estimate=True),
)

_DTYPE_KEYS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def find_peak(device_name: str, device_type: str = "cuda") -> Optional[Peak]:
    """The table entry for a device name (None when unlisted)."""
    table = NPU_PEAKS if device_type == "npu" else CUDA_PEAKS if device_type == "cuda" else ()
    name = device_name.strip().lower()
    if device_type == "npu":
        name = name.replace(" ", "")
    return next((peak for peak in table if peak.matches(name)), None)


def dtype_key(dtype: torch.dtype, peak: Peak, *, tf32: bool) -> Optional[str]:
    """The table key for a compute dtype on this chip: fp32 matmuls count at the TF32 rate where TF32 is allowed
    and the chip has it."""
    key = _DTYPE_KEYS.get(dtype)
    if key == "fp32" and tf32 and "tf32" in peak.flops:
        return "tf32"
    return key


def tf32_allowed() -> bool:
    """Whether fp32 matmuls may run as TF32 (``torch.set_float32_matmul_precision('high'|'medium')``)."""
    return torch.get_float32_matmul_precision() != "highest"


def device_name(device: torch.device) -> Optional[str]:
    """The driver's name of ``device`` (None for a CPU or when it cannot be read)."""
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_name(device)
        if device.type == "npu":
            return torch.npu.get_device_name(device)  # type: ignore[attr-defined]
    except Exception:
        return None
    return None


@dataclass(frozen=True)
class PeakLookup:
    """What :func:`lookup` found: the FLOP/s (None when unknown) and what it was looked up by."""

    flops: Optional[float]
    device_name: str
    dtype_name: str
    peak: Optional[Peak] = None


def lookup(device: torch.device, dtype: torch.dtype, *, name: Optional[str] = None) -> PeakLookup:
    """Peak dense FLOP/s of one ``device`` computing in ``dtype`` (the trainer's compute dtype)."""
    name = name if name is not None else (device_name(device) or device.type)
    peak = find_peak(name, device.type)
    dtype_name = str(dtype).replace("torch.", "")
    if peak is None:
        return PeakLookup(None, name, dtype_name)
    key = dtype_key(dtype, peak, tf32=device.type == "cuda" and tf32_allowed())
    if key == "tf32":
        dtype_name = "float32 (TF32)"
    return PeakLookup(peak.flops.get(key) if key else None, name, dtype_name, peak)


__all__ = ["Peak", "CUDA_PEAKS", "NPU_PEAKS", "find_peak", "dtype_key", "tf32_allowed", "device_name", "lookup",
           "PeakLookup"]
