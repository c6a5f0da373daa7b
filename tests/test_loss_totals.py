"""Validation loss totals: exact, and no float64 tensor handed to a collective (NPUs' HCCL handles float64 poorly).

The strategies below stand in for a device backend: they record the dtype of every tensor given to
reduce / all_gather, and one of them plays a second, identical rank.
"""

from __future__ import annotations

import math

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch.utils.data import DataLoader

from litft.model.config import LoraConfig
from litft.model.loss_totals import LossTotals, split_float32
from litft.model.module import LitFTModule
from tests.helpers import attach_trainer


class RecordingStrategy(SingleDeviceStrategy):
    """One process that reports ``ranks`` ranks: all_gather returns this rank's tensor once per rank."""

    def __init__(self, ranks: int = 1):
        super().__init__(device=torch.device("cpu"))
        self.ranks, self.seen = ranks, []
        self.world_size = ranks  # SingleDeviceStrategy keeps it as a plain attribute

    def reduce(self, tensor, *args, **kwargs):
        if isinstance(tensor, torch.Tensor):
            self.seen.append(("reduce", tensor.dtype, tensor.device.type))
            return tensor * self.ranks if kwargs.get("reduce_op") == "sum" else tensor
        return tensor

    def all_gather(self, tensor, group=None, sync_grads=False):
        self.seen.append(("all_gather", tensor.dtype, tensor.device.type))
        return torch.stack([tensor] * self.ranks)


def _batches(tokenizer, n: int = 5) -> list[dict]:
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        length, prompt = 9 + i, 3
        ids = torch.randint(10, len(tokenizer) - 10, (1, length), generator=g)
        labels = ids.clone()
        labels[0, :prompt] = -100
        out.append({"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)})
    return out


@pytest.mark.parametrize("ranks", [1, 2])
def test_validation_loss_is_exact_and_sends_no_float64(tiny_llama, ranks):
    module = LitFTModule(tiny_llama, lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    attach_trainer(module).configure_model()
    batches = _batches(module.tokenizer)
    module.model.eval()
    with torch.no_grad():
        parts = [module.loss_sum(b) for b in batches]
    reference_loss = math.fsum(float(loss) for loss, _ in parts)  # float64, exactly rounded
    reference_tokens = sum(int(n) for _, n in parts)

    strategy = RecordingStrategy(ranks)
    trainer = L.Trainer(accelerator="cpu", strategy=strategy, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, DataLoader(batches, batch_size=None))

    assert [dtype for _, dtype, _ in strategy.seen if dtype == torch.float64] == []
    # Lightning's own int64 length check may pass through reduce; litft's totals travel as float32
    assert [dtype for op, dtype, _ in strategy.seen if op == "all_gather"] == [torch.float32] * (ranks > 1)
    loss_total, token_total = module._val_sums.total(strategy, module.device)
    assert token_total == ranks * reference_tokens
    assert loss_total == pytest.approx(ranks * reference_loss, rel=1e-13)
    # val/loss is logged as float32: within float32 rounding of the float64 reference
    assert trainer.callback_metrics["val/loss"].dtype == torch.float32
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(reference_loss / reference_tokens, rel=1e-7)


class TwoRanks:
    """all_gather over this rank and a fixed other rank (its LossTotals); records dtypes."""

    world_size = 2

    def __init__(self, other: LossTotals):
        self.other, self.seen = other, []

    def all_gather(self, tensor, group=None, sync_grads=False):
        self.seen.append(tensor.dtype)
        hi, lo = split_float32(self.other.loss)
        tok_hi = float(torch.tensor(float(self.other.tokens), dtype=torch.float32))
        other = torch.tensor([hi, lo, tok_hi, float(self.other.tokens - int(tok_hi))], dtype=torch.float32)
        return torch.stack([tensor, other])


def test_totals_over_ranks_keep_float64_and_integer_exactness():
    """Values float32 alone cannot hold: 2**40 + 12345 tokens, a loss sum with 1e-9 parts on top of 1e7."""
    mine, other = LossTotals(flush_every=3), LossTotals()
    losses = [1e7 + 1e-3 * k for k in range(10)]
    counts = [2**37 + 1234 + k for k in range(8)] + [4111, 5]
    for loss, count in zip(losses, counts):
        mine.add(torch.tensor(loss, dtype=torch.float64).float(), torch.tensor(count))
    other.loss, other.tokens = 123456.789012345, 2**40 + 12345
    strategy = TwoRanks(other)
    loss, tokens = mine.total(strategy, torch.device("cpu"))
    assert strategy.seen == [torch.float32]
    assert tokens == sum(counts) + 2**40 + 12345  # exact integers
    expected = math.fsum([float(torch.tensor(v).float()) for v in losses] + [other.loss])
    assert loss == pytest.approx(expected, rel=1e-14)
    # the same totals summed in a float32 tensor would be visibly wrong
    assert float(torch.tensor(float(tokens), dtype=torch.float32)) != tokens


def test_one_rank_needs_no_collective():
    totals = LossTotals()
    totals.add(torch.tensor(2.5), torch.tensor(4))

    class NoCollective:
        world_size = 1

        def all_gather(self, *args, **kwargs):
            raise AssertionError("no collective on one rank")

    assert totals.total(NoCollective(), torch.device("cpu")) == (2.5, 4)
