"""``precision: auto`` and the inference ``dtype: auto`` pick bf16 only where the GPU has it in hardware.

No GPU here: torch.cuda's device queries are replaced by a stand-in answering like each card. Its
``is_bf16_supported()`` answers as torch's does on a real card: True on V100/T4 by default (it counts emulation),
False there only with ``including_emulation=False``.
"""

from __future__ import annotations

import pytest
import torch

import litft.accelerators as acc
from litft.model import build
from litft.model.module import LitFTModule
from litft.strategies import trainer_kwargs

CARDS = {
    # name as torch.cuda.get_device_name() prints it, compute capability, expected precision: auto
    "V100": ("Tesla V100-SXM2-32GB", (7, 0), "16-mixed"),
    "T4": ("Tesla T4", (7, 5), "16-mixed"),
    "A100": ("NVIDIA A100-SXM4-80GB", (8, 0), "bf16-mixed"),
    "H100": ("NVIDIA H100 80GB HBM3", (9, 0), "bf16-mixed"),
}


@pytest.fixture
def fake_cuda(monkeypatch):
    def install(name: str, capability: tuple[int, int], count: int = 1) -> None:
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: including_emulation or capability >= (8, 0))

    return install


@pytest.mark.parametrize("card", CARDS)
def test_precision_auto_follows_native_bf16(fake_cuda, card):
    name, capability, expected = CARDS[card]
    fake_cuda(name, capability)
    assert acc.default_precision("auto") == expected
    assert acc.default_precision("cuda") == expected
    assert acc.default_precision("gpu") == expected
    assert trainer_kwargs(accelerator="cuda", devices=1)["precision"] == expected
    assert acc.default_precision("cpu") == "32-true"  # an explicit CPU run on a GPU machine stays fp32


@pytest.mark.parametrize("card", CARDS)
def test_inference_dtype_auto_follows_the_same_rule(fake_cuda, monkeypatch, card):
    """inference_model(dtype auto, precision auto) loads the base in what training would compute in."""
    name, capability, expected = CARDS[card]
    fake_cuda(name, capability)

    class Built(Exception):
        pass

    def fake_load(spec, **kw):  # stop before any weight is read: only the chosen dtype matters
        raise Built(spec.dtype, str(kw.get("device")))

    monkeypatch.setattr(build, "load_base", fake_load)
    with pytest.raises(Built) as built:
        build.inference_model(LitFTModule("unused-model-path").spec)
    assert built.value.args == ({"16-mixed": "float16", "bf16-mixed": "bfloat16"}[expected], "cuda")
    with pytest.raises(Built) as built:
        build.inference_model(LitFTModule("unused-model-path").spec, device="cpu")
    assert built.value.args == ("float32", "cpu")


def test_one_card_without_bf16_makes_the_machine_fp16(fake_cuda, monkeypatch):
    """Every visible GPU must have bf16: an A100 next to a V100 gives 16-mixed on every rank alike."""
    fake_cuda("NVIDIA A100-SXM4-80GB", (8, 0), count=2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: [(8, 0), (7, 0)][device or 0])
    assert acc.native_bf16("cuda") is False
    assert acc.default_precision("cuda") == "16-mixed"


def test_cpu_precision_auto_is_fp32():
    assert not torch.cuda.is_available()  # this host
    assert acc.native_bf16("auto") is False
    assert acc.default_precision("auto") == "32-true"
    assert trainer_kwargs()["precision"] == "32-true"


def test_precision_dtype():
    assert acc.precision_dtype("bf16-mixed") is torch.bfloat16
    assert acc.precision_dtype("bf16-true") is torch.bfloat16
    assert acc.precision_dtype("16-mixed") is torch.float16
    assert acc.precision_dtype("32-true") is torch.float32


def test_bf16_decided_in_one_place():
    """No module but litft.accelerators asks torch whether bf16 is supported."""
    from pathlib import Path

    import litft

    root = Path(litft.__file__).parent
    callers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "is_bf16_supported" in p.read_text())
    assert callers == ["accelerators/__init__.py", "accelerators/npu.py"]


def test_fp16_mixed_keeps_trained_weights_fp32(monkeypatch):
    """16-mixed (what V100/T4 now get): LoRA's frozen base loads in fp16, a full fine-tune keeps fp32 weights (the
    grad scaler raises "Attempting to unscale FP16 gradients" on fp16 ones)."""
    from litft.model.config import LoraConfig
    from tests.helpers import attach_trainer

    class Built(Exception):
        pass

    def fake_load(spec, **kw):  # the dtype the builder would load the base in, from what training passes it
        raise Built(build.weights_dtype(spec.dtype, precision=kw["precision"], trains_base=kw["trains_base"]))

    monkeypatch.setattr(build, "load_base", fake_load)

    def weights_dtype(module, precision):
        with pytest.raises(Built) as built:
            attach_trainer(module, precision=precision).configure_model()
        return built.value.args[0]

    for lora, expected in ((LoraConfig(), torch.float16), (None, torch.float32)):
        module = LitFTModule("unused-model-path", lora=lora)
        assert weights_dtype(module, "16-mixed") is expected
        assert weights_dtype(module, "bf16-mixed") is torch.bfloat16
