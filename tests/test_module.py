"""LitFTModule: loading, adapters, the token-weighted loss, adapter-only state, QLoRA on CPU."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader

from litft.errors import LitFTError
from litft.model.config import LoraConfig, OptimizerConfig, QuantizationConfig, SchedulerConfig
from litft.model.module import LitFTModule
from tests.helpers import attach_trainer


def _batch(tokenizer, n_prompt: int, n_answer: int, seed: int, length: int | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, len(tokenizer) - 10, (n_prompt + n_answer,), generator=g)
    labels = ids.clone()
    labels[:n_prompt] = -100
    length = length or ids.numel()
    pad = length - ids.numel()
    input_ids = torch.cat([ids, torch.full((pad,), tokenizer.pad_token_id)])
    labels = torch.cat([labels, torch.full((pad,), -100)])
    mask = torch.cat([torch.ones(ids.numel(), dtype=torch.long), torch.zeros(pad, dtype=torch.long)])
    return {"input_ids": input_ids[None], "labels": labels[None], "attention_mask": mask[None]}


def _module(path, **kw) -> LitFTModule:
    kw.setdefault("lora", LoraConfig(r=4, alpha=8, dropout=0.0))
    kw.setdefault("optimizer", OptimizerConfig(lr=5e-3))
    kw.setdefault("scheduler", SchedulerConfig(name="constant"))
    module = LitFTModule(path, **kw)
    attach_trainer(module).configure_model()
    return module


def test_loss_matches_transformers(tiny_model):
    module = _module(tiny_model)
    batch = _batch(module.tokenizer, 5, 7, seed=0)
    loss_sum, n = module.loss_sum(batch)
    reference = module.model(**batch).loss  # transformers' mean over trained positions
    assert n.item() == 7  # every answer token is a target after the shift
    torch.testing.assert_close(loss_sum / n, reference, rtol=1e-5, atol=1e-6)


def test_all_linear_targets_exclude_head(tiny_llama):
    module = _module(tiny_llama)
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in module.model.named_parameters() if "lora_A" in name}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert all(p.requires_grad == ("lora_" in n) for n, p in module.model.named_parameters())


def test_state_dict_is_adapter_only_and_reloads(tiny_llama):
    module = _module(tiny_llama)
    state = module.state_dict()
    assert state and all("lora_" in k for k in state)
    total = sum(p.numel() for p in module.parameters())
    assert sum(v.numel() for v in state.values()) < total / 10
    other = _module(tiny_llama)
    other.load_state_dict({k: v + 1 for k, v in state.items()})
    for k, v in other.state_dict().items():
        torch.testing.assert_close(v, state[k] + 1)
    with pytest.raises(LitFTError, match="lacks"):
        other.load_state_dict({})


def _grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.model.named_parameters() if p.requires_grad}


class _FakeTrainer:
    """Just what training_step reads, for a one-process gradient check."""

    def __init__(self, accumulate: int):
        self.accumulate_grad_batches = accumulate
        self.world_size = 1

        class _Strategy:
            @staticmethod
            def reduce(x, reduce_op="sum"):
                return x

        self.strategy = _Strategy()


def test_accumulated_loss_is_token_weighted(tiny_qwen2):
    """Two micro-batches with 4 and 13 trained tokens give the gradient of one batch holding both
    (a mean of per-micro-batch means would overweight the short one about 3x)."""
    module = _module(tiny_qwen2)
    short = _batch(module.tokenizer, 4, 4, seed=1, length=20)
    long = _batch(module.tokenizer, 4, 13, seed=2, length=20)
    joint = {k: torch.cat([short[k], long[k]]) for k in short}

    module.trainer = _FakeTrainer(accumulate=2)
    n_step = sum(int((b["labels"][:, 1:] != -100).sum()) for b in (short, long))
    for b in (short, long):
        # Lightning divides the returned loss by accumulate_grad_batches before backward.
        (module.training_step({**b, "num_target_tokens": torch.tensor(n_step)}, 0) / 2).backward()
    accumulated = _grads(module)
    module.model.zero_grad()
    module.trainer = _FakeTrainer(accumulate=1)
    module.training_step({**joint, "num_target_tokens": torch.tensor(n_step)}, 0).backward()
    for name, grad in _grads(module).items():
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-5, atol=1e-7)


class _Repeat(torch.utils.data.Dataset):
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


def _fit(module, batches, steps: int, tmp_path) -> list[float]:
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics["train/loss"]))

    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, callbacks=[Record()], default_root_dir=tmp_path,
    )
    loader = DataLoader(_Repeat(batches), batch_size=None, shuffle=False)
    trainer.fit(module, loader)
    return losses


def test_loss_falls(tiny_model, tmp_path):
    module = LitFTModule(tiny_model, lora=LoraConfig(r=8, alpha=16, dropout=0.0), optimizer=OptimizerConfig(lr=1e-2),
                         scheduler=SchedulerConfig(name="constant"))
    batch = _batch(module.tokenizer, 4, 12, seed=3)
    losses = _fit(module, [batch] * 20, steps=20, tmp_path=tmp_path)
    assert len(losses) == 20
    assert losses[-1] < losses[0] - 1.0, losses  # more than 1 nat


def test_qlora_4bit_trains_on_cpu(tiny_llama, tmp_path):
    import bitsandbytes as bnb

    module = LitFTModule(
        tiny_llama, quantization=QuantizationConfig(bits=4, quant_type="nf4", double_quant=True),
        lora=LoraConfig(r=8, alpha=16, dropout=0.0), optimizer=OptimizerConfig(lr=1e-2),
        scheduler=SchedulerConfig(name="constant"),
    )
    batch = _batch(module.tokenizer, 4, 12, seed=4)
    losses = _fit(module, [batch] * 20, steps=20, tmp_path=tmp_path)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in module.model.modules())
    assert losses[-1] < losses[0] - 0.5, losses


def test_qlora_gradients_unchanged_by_validation(tiny_llama):
    """bitsandbytes repacks 4-bit weights for inference in an eval forward on AVX512-BF16 CPUs and its
    packed path has no autograd: a training step after validation must still reach every adapter."""
    module = LitFTModule(
        tiny_llama, quantization=QuantizationConfig(bits=4, quant_type="nf4", double_quant=True),
        lora=LoraConfig(r=8, alpha=16, dropout=0.0, target_modules="all"),
    )
    attach_trainer(module).configure_model()
    batch = _batch(module.tokenizer, 2, 12, seed=5)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def grads():
        module.model.zero_grad(set_to_none=True)
        module.model(**inputs, labels=batch["labels"]).loss.backward()
        return {n: p.grad.clone() for n, p in module.model.named_parameters() if p.requires_grad and p.grad is not None}

    before = grads()
    module.model.eval()
    with torch.no_grad():
        module.model(**inputs)
    module.model.train()
    after = grads()
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert sorted(before) == sorted(after) == sorted(trainable)
    for name in trainable:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=name)


def test_quantization_without_lora_is_refused(tiny_llama):
    with pytest.raises(LitFTError, match="needs model.lora"):
        LitFTModule(tiny_llama, quantization=QuantizationConfig(), lora=None)
