"""Liger's fused linear cross-entropy: only when ``model.loss_kernel: liger`` asks for it, one-line errors where it
cannot run, and hidden states and head weight in one dtype when they reach the kernel.

No GPU here: a CPU stand-in takes the place of ``liger_kernel.transformers.LigerFusedLinearCrossEntropyLoss`` (it
refuses inputs of different dtypes, as Liger's matmuls do outside autocast, and computes the reference loss), and
tensors are made to report ``is_cuda`` where a test needs CUDA.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from litft.errors import LitFTError
from litft.model import loss as lm_loss
from litft.model.config import LoraConfig
from litft.model.module import LitFTModule
from tests.helpers import attach_trainer

H, V = 16, 40


class FusedLinearCE(torch.nn.Module):
    """CPU stand-in for Liger's LigerFusedLinearCrossEntropyLoss (same constructor and call signature)."""

    calls: list[tuple[torch.dtype, torch.dtype]] = []

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", **kwargs):
        super().__init__()
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(self, lin_weight, _input, target, bias=None):
        assert _input.dtype == lin_weight.dtype, f"kernel got hidden {_input.dtype} and head weight {lin_weight.dtype}"
        type(self).calls.append((_input.dtype, lin_weight.dtype))
        logits = F.linear(_input, lin_weight, bias)
        return F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction=self.reduction)


@pytest.fixture
def liger(monkeypatch):
    """liger-kernel 'installed': the stand-in under liger_kernel.transformers."""
    package, transformers = types.ModuleType("liger_kernel"), types.ModuleType("liger_kernel.transformers")
    transformers.LigerFusedLinearCrossEntropyLoss = FusedLinearCE
    package.transformers = transformers
    monkeypatch.setitem(sys.modules, "liger_kernel", package)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", transformers)
    FusedLinearCE.calls = []
    return FusedLinearCE


@pytest.fixture
def cuda(monkeypatch):
    """Every tensor says it is on CUDA (what the loss asks before choosing Liger)."""
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))


def _inputs(hidden_dtype=torch.float32, head_dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(H, V, bias=False).to(head_dtype).requires_grad_(False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g))
    hidden = torch.randn(2, 7, H, generator=g).to(hidden_dtype).requires_grad_(True)
    labels = torch.randint(0, V, (2, 7), generator=g)
    labels[0, :3] = -100
    return hidden, head, labels


def test_default_never_uses_liger_even_when_installed_on_cuda(liger, cuda, tiny_llama):
    hidden, head, labels = _inputs()
    lm_loss.lm_loss_from_hidden(hidden, head, labels)
    assert liger.calls == []
    module = LitFTModule(tiny_llama, lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    attach_trainer(module).configure_model()
    ids = torch.randint(10, 400, (1, 12))
    module.loss_sum({"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)})
    assert liger.calls == []
    assert module.loss_kernel == "chunked"


@pytest.mark.parametrize("hidden_dtype,head_dtype,autocast", [
    (torch.float32, torch.float32, False),
    (torch.bfloat16, torch.float32, True),  # QLoRA: head upcast to fp32, bf16 hidden states, bf16 autocast
    (torch.bfloat16, torch.bfloat16, False),
], ids=["fp32", "bf16-hidden-fp32-head-autocast", "bf16"])
def test_liger_key_selects_the_kernel_with_one_dtype_and_the_chunked_loss(liger, cuda, hidden_dtype, head_dtype,
                                                                          autocast):
    hidden, head, labels = _inputs(hidden_dtype, head_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        fused, n_fused = lm_loss.lm_loss_from_hidden(hidden, head, labels, kernel="liger")
        (g_fused,) = torch.autograd.grad(fused, hidden)
        chunked, n_chunked = lm_loss.lm_loss_from_hidden(hidden, head, labels, chunk_size=3, kernel="chunked")
        (g_chunked,) = torch.autograd.grad(chunked, hidden)
    assert liger.calls == [(head_dtype, head_dtype)]  # the kernel ran once, on the head's dtype
    assert n_fused.item() == n_chunked.item() == 10
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, chunked, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_fused, g_chunked, rtol=1e-2 if hidden_dtype == torch.bfloat16 else 1e-5, atol=1e-5)


def test_liger_key_selects_the_kernel_through_the_module(liger, cuda, tiny_llama):
    batch_ids = torch.randint(10, 400, (1, 12))
    batch = {"input_ids": batch_ids, "labels": batch_ids.clone(), "attention_mask": torch.ones_like(batch_ids)}
    losses = {}
    for kernel in ("chunked", "liger"):
        torch.manual_seed(0)
        module = LitFTModule(tiny_llama, lora=LoraConfig(r=4, alpha=8, dropout=0.0), loss_kernel=kernel)
        attach_trainer(module, device="cuda").configure_model()
        losses[kernel] = module.loss_sum(batch)[0]
    assert len(liger.calls) == 1
    torch.testing.assert_close(losses["liger"], losses["chunked"], rtol=1e-5, atol=1e-5)


def test_liger_where_it_cannot_run_is_one_line_naming_the_key(liger, monkeypatch):
    hidden, head, labels = _inputs()

    def refused(match, **kw):
        pattern = r"^model\.loss_kernel=liger: " + match + r".*; use model\.loss_kernel: chunked$"
        with pytest.raises(LitFTError, match=pattern):
            lm_loss.lm_loss_from_hidden(hidden, kw.pop("head", head), labels, kernel="liger", **kw)

    refused("Liger's kernel runs on CUDA devices only")  # these tensors are on the CPU
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    refused("the output head is sharded", symmetric=True)  # ZeRO-3
    wrapped = torch.nn.Sequential(head)  # e.g. a head PEFT adapted or wraps for modules_to_save
    wrapped.weight = head.weight
    refused("the output head is a Sequential, not a plain nn.Linear", head=wrapped)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)  # not installed
    refused(r"liger-kernel is not installed \(pip install 'litft\[liger\]'\)")
    assert liger.calls == []
    with pytest.raises(LitFTError, match=r"^model\.loss_kernel='fused': choose one of chunked, liger$"):
        LitFTModule("unused", loss_kernel="fused")


def test_liger_is_refused_before_training_on_a_cpu_run(liger, tiny_llama):
    module = LitFTModule(tiny_llama, lora=LoraConfig(r=4, alpha=8, dropout=0.0), loss_kernel="liger")
    attach_trainer(module)
    with pytest.raises(LitFTError, match=r"^model\.loss_kernel=liger: Liger's kernel runs on CUDA devices only"):
        module.configure_model()
