"""Packing with a varlen (flash) attention: samples of a micro-batch never attend to each other.

The GPU path is exercised on CPU by a stand-in flash kernel (tests/cpu_flash_attn): a local kernel of the
``kernels`` library that transformers loads as ``attn_implementation="litft-tests/cpu-flash-attn"`` exactly as
it loads a hub flash kernel, so transformers' own flash-attention control flow decides what the kernel sees.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from litft.data.packing import PackedCollator, is_varlen, pack
from litft.labels import IGNORE_INDEX, count_targets
from litft.model.loss import lm_loss_from_logits

STANDIN = "litft-tests/cpu-flash-attn"
KERNEL_DIR = Path(__file__).parent / "cpu_flash_attn"


@pytest.fixture(scope="module")
def flash_standin():
    """The stand-in's name, with ``LOCAL_KERNELS`` pointing it at tests/cpu_flash_attn (read on every load)."""
    pytest.importorskip("kernels")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCAL_KERNELS", f"{STANDIN}={KERNEL_DIR}")
        yield STANDIN


def _calls() -> dict[str, int]:
    """The stand-in kernel's call counts (varlen / dense), copied."""
    from kernels import get_loaded_kernels

    (kernel,) = [k.module for k in get_loaded_kernels() if str(k.metadata.name) == "cpu-flash-attn"]
    return dict(kernel.calls)


@pytest.fixture(scope="module")
def standin_llama(flash_standin, tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation=flash_standin)
    return model.eval()


def _samples(vocab: int, n: int = 14, seed: int = 0) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randrange(3, 15)
        ids = [rng.randrange(10, vocab) for _ in range(length)]
        cut = rng.randrange(1, length)
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * cut + ids[cut:]})
    return out


def _boundaries(rows) -> list[int]:
    """Cumulative sample lengths over the rows laid end to end (from each row's restarts at position 0)."""
    cu, offset = [0], 0
    for r in rows:
        pos = r["position_ids"]
        cu += [offset + i for i, p in enumerate(pos) if p == 0 and i > 0] + [offset + len(pos)]
        offset += len(pos)
    return cu


def test_transformers_routes_the_standin_through_its_flash_path(standin_llama, flash_standin):
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    assert standin_llama.config._attn_implementation == flash_standin
    assert ALL_MASK_ATTENTION_FUNCTIONS[flash_standin] is flash_attention_mask  # what flash_attention_2 gets
    for name in (flash_standin, "flash_attention_2", "flash_attention_3", "kernels-community/flash-attn2",
                 "kernels-community/vllm-flash-attn3"):
        assert is_varlen(name), name
    for name in ("sdpa", "eager", "flex_attention", None):
        assert not is_varlen(name), name


def test_standin_follows_flash_contract(standin_llama):
    """Boundaries only from position_ids of ONE row: a (2, L) batch with restarting position_ids is attended
    as two plain causal rows (as flash attention on a GPU does), a (1, L) batch as separate samples."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ids = torch.randint(10, standin_llama.config.vocab_size, (2, 12))
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]] * 2)
    eager = AutoModelForCausalLM.from_pretrained(standin_llama.name_or_path, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        rows = standin_llama(input_ids=ids, position_ids=pos).logits
        causal = eager(input_ids=ids, position_ids=pos, attention_mask=torch.ones_like(ids)).logits
        torch.testing.assert_close(rows, causal, rtol=1e-5, atol=1e-5)  # the samples leak into each other
        one = standin_llama(input_ids=ids[:1], position_ids=pos[:1]).logits[0]
        for a, b in ((0, 5), (5, 9), (9, 12)):
            alone = standin_llama(input_ids=ids[:1, a:b]).logits[0]
            torch.testing.assert_close(one[a:b], alone, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(one[5:], rows[0, 5:], atol=1e-3)


@pytest.mark.parametrize("n_rows", [1, 2, 4])
def test_packed_equals_unpacked_under_flash(standin_llama, flash_standin, n_rows):
    """PackedCollator's batch of n packed rows: every sample's logits on its trained positions and the summed
    loss equal the samples run one by one; the trained-token count equals the rows' own."""
    from transformers.modeling_flash_attention_utils import _is_packed_sequence, prepare_fa_kwargs_from_position_ids

    samples = _samples(standin_llama.config.vocab_size)
    packed, _ = pack(samples, 24)
    assert len(packed) >= 4
    rows = packed[:n_rows]
    batch = PackedCollator(pad_token_id=0, attn_implementation=flash_standin)(rows)
    assert "attention_mask" not in batch
    # transformers' own reading of the batch: separate sequences with exactly the packed samples' boundaries
    assert _is_packed_sequence(batch["position_ids"], batch_size=batch["input_ids"].shape[0])
    (cu_q, cu_k), _ = prepare_fa_kwargs_from_position_ids(batch["position_ids"])
    assert cu_q.tolist() == cu_k.tolist() == _boundaries(rows)
    with torch.no_grad():
        before = _calls()
        logits = standin_llama(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        layers = standin_llama.config.num_hidden_layers
        assert _calls() == {"varlen": before["varlen"] + layers, "dense": before["dense"]}
        loss_sum, n_targets = lm_loss_from_logits(logits, batch["labels"])
        assert int(n_targets) == sum(count_targets(r["labels"]) for r in rows)
        flat_ids, flat_labels = batch["input_ids"][0].tolist(), batch["labels"][0]
        cu = _boundaries(rows)
        alone_total, checked = torch.zeros(()), 0
        for a, b in zip(cu, cu[1:]):
            sample = next(s for s in samples if s["input_ids"] == flat_ids[a:b])
            alone = standin_llama(input_ids=torch.tensor([sample["input_ids"]])).logits[0]
            alone_sum, _ = lm_loss_from_logits(alone[None], torch.tensor([sample["labels"]]))
            alone_total += alone_sum
            trained = flat_labels[a + 1 : b] != IGNORE_INDEX  # positions whose next token is trained
            torch.testing.assert_close(logits[0, a : b - 1][trained], alone[:-1][trained], rtol=1e-5, atol=1e-5)
            checked += 1
        assert checked == len(cu) - 1 > n_rows  # several samples per row
        torch.testing.assert_close(loss_sum, alone_total, rtol=1e-5, atol=1e-4)


def test_flat_batch_keeps_the_step_token_count(tmp_path, tiny_llama, flash_standin):
    """The batches fit gets from LitFTDataModule (packing, batch_size 3, the stand-in): one flat row each, read by
    transformers as the samples of the batch's rows; num_target_tokens (accumulation 2) exact."""
    from transformers.modeling_flash_attention_utils import _is_packed_sequence, prepare_fa_kwargs_from_position_ids

    from litft.data.datamodule import LitFTDataModule
    from litft.data.loader import ResumableLoader
    from tests.helpers import write_alpaca

    data = write_alpaca(tmp_path / "a.json", 40)
    dm = LitFTDataModule(dataset=str(data), tokenizer=tiny_llama, cutoff_len=140, packing=True, batch_size=3,
                         attn_implementation=flash_standin)
    dm.setup("fit")
    fit_loader = dm.train_dataloader()
    sampler = fit_loader.batch_sampler
    loader = ResumableLoader(dm.train_rows, fit_loader.targets, dm.collator(), sampler, accumulate_grad_batches=2)
    index_batches = sampler.batches(0)
    batches = list(loader)
    assert len(batches) == len(index_batches) >= 3
    per_batch = []
    for batch, idx in zip(batches, index_batches):
        rows = [dm.train_rows[i] for i in idx]
        assert set(batch) == {"input_ids", "labels", "position_ids", "num_target_tokens"}
        assert batch["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows))
        assert _is_packed_sequence(batch["position_ids"], batch_size=1)
        (cu, _), _ = prepare_fa_kwargs_from_position_ids(batch["position_ids"])
        assert cu.tolist() == _boundaries(rows) and len(cu) - 1 > len(rows)
        per_batch.append(count_targets(batch["labels"]))
        assert per_batch[-1] == sum(count_targets(r["labels"]) for r in rows)
    steps = [sum(per_batch[g : g + 2]) for g in range(0, len(per_batch), 2)]
    assert [int(b["num_target_tokens"]) for b in batches] == [steps[k // 2] for k in range(len(batches))]


def test_fit_with_flash_equals_fit_with_block_mask(tmp_path, tiny_llama, flash_standin):
    """Two optimizer steps of LoRA training on packed batches of 2 rows: the stand-in flash kernel (flat batch)
    and SDPA (block-diagonal mask) log the same losses."""
    import lightning.pytorch as L

    from litft.data.datamodule import LitFTDataModule
    from litft.model.config import LoraConfig, OptimizerConfig, SchedulerConfig
    from litft.model.module import LitFTModule
    from tests.helpers import write_alpaca

    data = write_alpaca(tmp_path / "a.json", 24)

    def losses(attn: str) -> list[float]:
        seen: list[float] = []

        class Record(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                seen.append(float(trainer.callback_metrics["train/loss"]))

        torch.manual_seed(0)
        module = LitFTModule(tiny_llama, attn_implementation=attn, lora=LoraConfig(r=4, alpha=8, dropout=0.0),
                             optimizer=OptimizerConfig(lr=1e-2), scheduler=SchedulerConfig(name="constant"))
        dm = LitFTDataModule(dataset=str(data), tokenizer=tiny_llama, cutoff_len=140, packing=True, batch_size=2,
                             attn_implementation=attn)
        trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
                            default_root_dir=tmp_path / attn.replace("/", "_"), limit_val_batches=0)
        trainer.fit(module, dm)
        return seen

    before = _calls()
    flash = losses(flash_standin)
    assert _calls()["varlen"] > before["varlen"]
    sdpa = losses("sdpa")
    assert len(flash) == len(sdpa) == 2
    torch.testing.assert_close(torch.tensor(flash), torch.tensor(sdpa), rtol=1e-5, atol=1e-5)
