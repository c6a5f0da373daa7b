"""Long-context memory measures (litft.model.long_context): the tiled MLP and checkpoint offload train exactly like
the plain model (same loss, same gradients), through the model builder training uses."""

from __future__ import annotations

import pytest
import torch

from litft.errors import LitFTError
from litft.model import build, long_context
from litft.model.build import ModelSpec
from litft.model.config import LoraConfig
from litft.model.module import LitFTModule


def _loss_and_grads(path: str, *, lora: bool, **keys):
    """Loss of one fixed batch (2 rows x 23 tokens: 46 rows of hidden states, not a multiple of the 4 slices) and
    the gradient of every trainable parameter, from a model :func:`litft.model.build.training_model` builds."""
    torch.manual_seed(0)
    model = build.training_model(
        ModelSpec(name_or_path=path), lora=LoraConfig(r=4, dropout=0.0) if lora else None, strategy=None,
        accelerator="cpu", precision="32-true", **keys)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, model.config.vocab_size, (2, 23), generator=generator)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    return model, loss.detach(), grads


def _assert_same(a, b):
    (_, loss_a, grads_a), (_, loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_tiled_mlp_gives_the_untiled_loss_and_gradients(tiny_llama, lora):
    plain = _loss_and_grads(tiny_llama, lora=lora, gradient_checkpointing=False)
    tiled = _loss_and_grads(tiny_llama, lora=lora, gradient_checkpointing=False, tiled_mlp=4)
    model = tiled[0]
    rows = []  # the MLP really runs in 4 sequence slices (23 tokens: 6, 6, 6, 5), in every decoder layer
    layers = long_context.decoder_mlps(model)
    hooks = [mlp.down_proj.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[-2]))
             for mlp in layers]
    model(input_ids=torch.randint(3, 100, (2, 23)))
    for hook in hooks:
        hook.remove()
    assert len(layers) == 2 and rows == [6, 6, 6, 5] * 2
    _assert_same(plain, tiled)


def _host_offload(monkeypatch, packed: list) -> None:
    """Run transformers' offload on this CPU host as on an accelerator host: litft told an accelerator is present,
    torch told it cannot pin (so save_on_cpu makes plain host copies), and every tensor it packs recorded."""
    monkeypatch.setattr(long_context, "offload_applies", lambda offload: offload)
    monkeypatch.setattr(torch.cpu, "is_available", lambda: False)  # save_on_cpu pins only where this is True
    original = torch.autograd.graph.save_on_cpu.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        pack = self.pack_hook
        self.pack_hook = lambda t: packed.append(t.shape) or pack(t)

    monkeypatch.setattr(torch.autograd.graph.save_on_cpu, "__init__", spy)


def test_checkpoint_offload_saves_layer_inputs_through_save_on_cpu(tiny_llama, monkeypatch):
    """The offload is wired: each checkpointed layer's input goes through torch's save_on_cpu (transformers'
    offload), and the loss and gradients are the plain ones. Memory is not testable here: on CPU it is a host copy."""
    packed: list = []
    _host_offload(monkeypatch, packed)
    plain = _loss_and_grads(tiny_llama, lora=True, gradient_checkpointing=True)
    assert not packed
    offloaded = _loss_and_grads(tiny_llama, lora=True, gradient_checkpointing=True, gradient_checkpointing_offload=True)
    assert packed.count(torch.Size([2, 23, 64])) >= 2  # each decoder layer's input hidden states
    _assert_same(plain, offloaded)


def test_tiled_mlp_with_checkpointing_and_offload_gives_the_plain_loss_and_gradients(tiny_llama, monkeypatch):
    plain = _loss_and_grads(tiny_llama, lora=True, gradient_checkpointing=False)
    _host_offload(monkeypatch, [])
    both = _loss_and_grads(tiny_llama, lora=True, gradient_checkpointing=True, gradient_checkpointing_offload=True,
                           tiled_mlp=3)
    _assert_same(plain, both)


def test_offload_without_an_accelerator_is_ignored_with_a_warning(tiny_llama, caplog):
    plain = _loss_and_grads(tiny_llama, lora=True, gradient_checkpointing=True)
    with caplog.at_level("WARNING", logger="litft.model.long_context"):
        ignored = _loss_and_grads(tiny_llama, lora=True, gradient_checkpointing=True,
                                  gradient_checkpointing_offload=True)
    assert "no accelerator on this host" in caplog.text
    _assert_same(plain, ignored)


def test_even_shards_is_the_number_of_slices_torch_chunk_makes():
    for rows in range(1, 40):
        for requested in range(1, 12):
            n = long_context.even_shards(rows, requested)
            assert len(torch.arange(rows).chunk(n)) == n <= requested


@pytest.mark.parametrize("keys, message", [
    (dict(tiled_mlp=0), "model.tiled_mlp: expected a number of sequence slices >= 1"),
    (dict(tiled_mlp=True), "model.tiled_mlp: expected"),
    (dict(gradient_checkpointing_offload=True), "model.gradient_checkpointing_offload needs model.gradient_checkpointing"),
])
def test_bad_long_context_keys_are_one_line(keys, message):
    with pytest.raises(LitFTError, match=message):
        LitFTModule("unused", **keys)
