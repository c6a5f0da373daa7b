"""The memory-bounded loss: equal to the full-logits loss (values and gradients), bounded saved memory, a safe
hidden-state shortcut, and equality with each shipped architecture family's own loss."""

from __future__ import annotations

import logging
import weakref

import pytest
import torch
import torch.nn.functional as F

from litft.model import loss as lm_loss
from litft.model.config import LoraConfig
from litft.model.module import LitFTModule
from tests.helpers import attach_trainer, build_tiny_model

V, H = 97, 12


def _old_loss(hidden, head, labels):
    """The loss before the chunked one: every trained position's fp32 logits kept for backward."""
    targets = labels[..., 1:]
    mask = targets != -100
    logits = head(hidden[..., :-1, :][mask]).float()
    return F.cross_entropy(logits, targets[mask], reduction="sum"), mask.sum()


def _labels() -> torch.Tensor:
    """3 rows x 9: ignored prompt positions, a fully ignored row, and trained tokens at row ends."""
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, V, (3, 9), generator=g)
    labels[0, :4] = -100
    labels[1, :] = -100  # a row with no trained token
    labels[2, 2:5] = -100
    return labels


def _grads_of(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("chunk_size", [1, 4, None])
@pytest.mark.parametrize("trainable_head", [False, True])
def test_chunked_loss_equals_full_logits_loss(chunk_size, trainable_head):
    torch.manual_seed(0)
    head = torch.nn.Linear(H, V, bias=True).requires_grad_(trainable_head)
    hidden = torch.randn(3, 9, H, requires_grad=True)
    labels = _labels()
    old, n_old = _old_loss(hidden, head, labels)
    new, n_new = lm_loss.lm_loss_from_hidden(hidden, head, labels, chunk_size=chunk_size, kernel="chunked")
    assert n_new.item() == n_old.item() == 5 + 0 + 5
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
    wrt = [hidden] + ([head.weight, head.bias] if trainable_head else [])
    scale = 0.37  # a non-unit upstream gradient (Lightning and DeepSpeed scale the loss)
    new_grads, old_grads = _grads_of(new * scale, wrt), _grads_of(old * scale, wrt)
    for g_new, g_old in zip(new_grads, old_grads):
        torch.testing.assert_close(g_new, g_old, rtol=1e-5, atol=1e-7)
    assert new_grads[0][1].abs().sum() == 0 and new_grads[0][0].abs().sum() > 0  # no trained token, no gradient


def test_no_trained_token_still_runs_backward_through_the_hidden_states():
    head = torch.nn.Linear(H, V, bias=False).requires_grad_(False)
    hidden = torch.randn(2, 5, H, requires_grad=True)
    total, n = lm_loss.lm_loss_from_hidden(hidden, head, torch.full((2, 5), -100), chunk_size=4)
    assert n.item() == 0 and total.item() == 0.0 and total.requires_grad
    total.backward()
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))


def test_no_grad_loss_equals_training_loss():
    head = torch.nn.Linear(H, V)
    hidden = torch.randn(3, 9, H)
    with torch.no_grad():
        total, _ = lm_loss.lm_loss_from_hidden(hidden, head, _labels(), chunk_size=2)
    torch.testing.assert_close(total, _old_loss(hidden, head, _labels())[0], rtol=1e-6, atol=1e-6)


def _saved_bytes(fn) -> int:
    """Bytes autograd still keeps for backward once ``fn``'s forward pass has returned (transient saves of a
    chunk that were freed before the next one do not count)."""
    saved = []

    def pack(t):
        saved.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    alive = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
             for t in (r() for r in saved) if t is not None}
    del result
    return sum(alive.values())


@pytest.mark.parametrize("trainable_head", [False, True])
def test_memory_kept_for_backward_does_not_grow_with_vocabulary(trainable_head):
    vocab, tokens = 4096, 256
    head = torch.nn.Linear(H, vocab, bias=False).requires_grad_(trainable_head)
    hidden = torch.randn(1, tokens + 1, H, requires_grad=True)
    labels = torch.randint(0, vocab, (1, tokens + 1))
    old = _saved_bytes(lambda: _old_loss(hidden, head, labels))
    new = _saved_bytes(lambda: lm_loss.lm_loss_from_hidden(hidden, head, labels, chunk_size=32, kernel="chunked"))
    assert old >= tokens * vocab * 4  # the fp32 logits (or their log-softmax) of every trained token
    assert new <= 4 * (tokens + 1) * H * 4  # hidden-sized tensors only, no logits


def test_chunked_kernel_is_the_default_and_logs_once(caplog):
    """(Liger, only when asked: tests/test_liger.py.)"""
    head = torch.nn.Linear(H, V).requires_grad_(False)
    hidden = torch.randn(1, 5, H)
    labels = torch.randint(0, V, (1, 5))
    with pytest.raises(ValueError, match="loss kernel"):
        lm_loss.lm_loss_from_hidden(hidden, head, labels, kernel="fused")
    lm_loss._logged.clear()
    with caplog.at_level(logging.INFO, logger="litft.model.loss"):
        lm_loss.lm_loss_from_hidden(hidden, head, labels, chunk_size=2)
        lm_loss.lm_loss_from_hidden(hidden, head, labels, chunk_size=2)
    assert [r.getMessage() for r in caplog.records] == [
        "loss: chunked head + cross-entropy, 2 trained tokens per chunk, frozen head, local chunk count"
    ]


def test_default_chunk_bounds_the_logits():
    assert lm_loss.default_chunk_size(151_936) == 441  # 441 x 151,936 x 4 bytes <= 256 MiB
    assert lm_loss.default_chunk_size(32_000) * 32_000 * 4 <= lm_loss.CHUNK_LOGITS_BYTES


# ---------------------------------------------------------------------------------------------- with models
def _batch(vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab - 10, (2, 12), generator=g)
    labels = ids.clone()
    labels[0, :5] = -100
    labels[1, 9:] = -100
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _module(path, **kw) -> LitFTModule:
    module = LitFTModule(path, lora=LoraConfig(r=4, alpha=8, dropout=0.0), **kw)
    attach_trainer(module).configure_model()
    return module


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from tests.test_examples_tiny import ARCH

    root = tmp_path_factory.mktemp("loss-models")
    return {arch: str(build_tiny_model(arch, root / arch)) for arch in sorted(set(ARCH.values()))}


def test_every_shipped_architecture_family_is_covered(tiny_models):
    assert set(tiny_models) >= {"llama", "phi", "qwen2"}


@pytest.mark.parametrize("arch", ["llama", "phi", "qwen2"])
def test_hidden_state_loss_equals_the_models_own_loss(arch, tiny_models):
    module = _module(tiny_models[arch])
    module.loss_chunk_size = 3
    batch = _batch(len(module.tokenizer))
    total, n = module.loss_sum(batch)
    assert module._hidden_path_verdict[1] is True  # the shortcut was verified and taken
    own = module.model(**batch).loss  # transformers' mean over trained positions
    torch.testing.assert_close(total / n, own, rtol=1e-5, atol=1e-6)

    lora = [p for name, p in module.model.named_parameters() if p.requires_grad]
    new_grads = torch.autograd.grad(total / n, lora)
    old_grads = torch.autograd.grad(own, lora)
    for a, b in zip(new_grads, old_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_trainable_head_gets_the_same_gradient(tiny_models):
    module = _module(tiny_models["llama"])
    module.loss_chunk_size = 4
    head = module.base_model().get_output_embeddings()
    head.weight.requires_grad_(True)
    batch = _batch(len(module.tokenizer), seed=3)
    total, n = module.loss_sum(batch)
    (g_new,) = torch.autograd.grad(total / n, [head.weight])
    (g_old,) = torch.autograd.grad(module.model(**batch).loss, [head.weight])
    torch.testing.assert_close(g_new, g_old, rtol=1e-4, atol=1e-7)


def test_logits_multiplier_falls_back_to_the_models_logits(tiny_models, caplog):
    """A model that post-processes logits under a config name litft does not know (like Falcon-H1's
    lm_head_multiplier) must not be trained on head(hidden): the check sees it and the loss uses its logits."""
    from transformers import LlamaForCausalLM

    class ScaledLogits(LlamaForCausalLM):
        def forward(self, *args, labels=None, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * self.config.lm_head_multiplier
            if labels is not None:
                out.loss = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
            return out

    module = _module(tiny_models["llama"])
    base = ScaledLogits.from_pretrained(tiny_models["llama"], dtype=torch.float32)
    base.config.lm_head_multiplier = 3.0
    from litft.model.adapters import apply_lora

    module.model = apply_lora(base, module.lora, autocast_adapter_dtype=True).train()
    batch = _batch(len(module.tokenizer))
    with caplog.at_level(logging.WARNING, logger="litft.model.module"):
        total, n = module.loss_sum(batch)
    assert module._hidden_path_verdict[1] is False
    assert "head(hidden) differs from the model's logits (ScaledLogits)" in caplog.text
    torch.testing.assert_close(total / n, module.model(**batch).loss, rtol=1e-5, atol=1e-6)
    base.config.lm_head_multiplier = 1.0  # the same model without the multiplier passes the check
    del module._hidden_path_verdict
    module.loss_sum(batch)
    assert module._hidden_path_verdict[1] is True


def test_deepspeed_internals_the_zero3_shim_reads():
    """litft/model/zero3_head.py reads ds_id / ds_shape / ds_status (ZeroParamStatus.NOT_AVAILABLE) of ZeRO-3
    parameters: fail here, not in a training run, when a DeepSpeed release renames them."""
    pytest.importorskip("deepspeed")
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    assert ZeroParamStatus.NOT_AVAILABLE.name == "NOT_AVAILABLE" and hasattr(deepspeed.zero, "GatheredParameters")
    import inspect

    source = inspect.getsource(deepspeed.runtime.zero.partition_parameters)
    assert all(f".{name} = " in source for name in ("ds_id", "ds_shape", "ds_status"))
