"""Gradient checkpointing: the mode each run gets (litft.model.grad_checkpointing.use_reentrant), and that both
modes train the adapters as checkpointing off does."""

from __future__ import annotations


import pytest
import torch

from litft.model import grad_checkpointing
from litft.model.config import LoraConfig, QuantizationConfig
from litft.model.module import LitFTModule
from litft.strategies import LitFTDDPStrategy, LitFTDeepSpeedStrategy
from tests.helpers import attach_trainer


@pytest.mark.parametrize("strategy,frozen_base,deepspeed,reentrant", [
    (None, True, None, False),  # one process, no trainer
    ("ddp", True, None, False),
    ("ddp", False, None, False),
    ("zero2", True, "0.19.2", False),
    ("zero3", True, "0.19.8", False),  # LoRA / QLoRA: DeepSpeed keeps frozen parameters whole in the recompute
    ("zero3", True, "0.19.3", False),
    ("zero3", True, "0.19.3+cpu", False),
    ("zero3", True, "0.19.2", True),  # before that: CheckpointError with non-reentrant -> reentrant
    ("zero3", False, "0.19.2", False),  # full fine-tuning: no frozen parameter, non-reentrant always worked
])
def test_mode_per_strategy(strategy, frozen_base, deepspeed, reentrant):
    built = {None: None, "ddp": LitFTDDPStrategy(), "zero2": LitFTDeepSpeedStrategy(stage=2),
             "zero3": LitFTDeepSpeedStrategy(stage=3)}[strategy]
    assert grad_checkpointing.use_reentrant(built, frozen_base=frozen_base, deepspeed_version=deepspeed) is reentrant


def test_installed_deepspeed_gets_non_reentrant_under_zero3():
    pytest.importorskip("deepspeed")
    assert grad_checkpointing.use_reentrant(LitFTDeepSpeedStrategy(stage=3), frozen_base=True) is False


def _adapter_grads(module, batch) -> dict[str, torch.Tensor]:
    module.model.zero_grad(set_to_none=True)
    loss_sum, n = module.loss_sum(batch)
    (loss_sum / n).backward()
    return {k: p.grad for k, p in module.model.named_parameters() if p.requires_grad}


def _module(path, **kw):
    torch.manual_seed(0)
    module = LitFTModule(path, lora=LoraConfig(r=4, alpha=8, dropout=0.0), **kw)
    attach_trainer(module).configure_model()
    with torch.no_grad():  # B = 0 would give A no gradient: make both adapter matrices matter
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    return module


@pytest.mark.parametrize("reentrant", [False, True])
def test_both_modes_give_the_adapters_the_gradients_of_no_checkpointing(tiny_llama, monkeypatch, reentrant):
    ids = torch.randint(10, 400, (2, 12), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    reference = _adapter_grads(_module(tiny_llama), batch)
    monkeypatch.setattr(grad_checkpointing, "use_reentrant", lambda *a, **k: reentrant)
    module = _module(tiny_llama, gradient_checkpointing=True)
    grads = _adapter_grads(module, batch)
    assert sorted(grads) == sorted(reference) and all(g is not None for g in grads.values())
    for name, g in grads.items():
        torch.testing.assert_close(g, reference[name], rtol=1e-5, atol=1e-7, msg=name)
    # the mode really used: a reentrant checkpoint is one autograd node around the whole layer
    outputs = []
    layer = module.base_model().get_decoder().layers[0]
    handle = layer.register_forward_hook(lambda m, args, out: outputs.append(out[0] if isinstance(out, tuple) else out))
    module.loss_sum(batch)
    handle.remove()
    assert (outputs[-1].grad_fn.name() == "CheckpointFunctionBackward") is reentrant


@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora"])
def test_lora_and_qlora_paths_ask_the_one_function(tiny_llama, monkeypatch, quantized):
    seen = []
    monkeypatch.setattr(grad_checkpointing, "enable", lambda model, reentrant, **kw: seen.append(reentrant))
    module = LitFTModule(tiny_llama, lora=LoraConfig(r=4, alpha=8), gradient_checkpointing=True,
                         quantization=QuantizationConfig() if quantized else None)
    attach_trainer(module).configure_model()
    assert seen == [False]
    assert not getattr(module.base_model(), "is_gradient_checkpointing", False)  # nothing else turned it on
    # Under ZeRO-3 with a DeepSpeed that needs reentrant checkpointing, the same call says so.
    seen.clear()
    monkeypatch.setattr(grad_checkpointing, "_release", lambda version: (0, 19, 2))
    module = LitFTModule(tiny_llama, lora=LoraConfig(r=4, alpha=8), gradient_checkpointing=True)
    attach_trainer(module, strategy=LitFTDeepSpeedStrategy(stage=3)).configure_model()
    assert seen == [True]
