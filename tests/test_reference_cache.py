"""DPO with reference log-probabilities precomputed once per dataset (``model.dpo.precompute_reference``,
litft/methods/precompute.py): the same training as the live reference (the base with adapters off in every step),
one forward per step, a cache file beside the tokenized data that a second run reuses and another base model does
not; KTO refuses it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from litft.data.datamodule import LitFTDataModule
from litft.errors import LitFTError
from litft.methods import DPOConfig, KTOConfig, precompute
from litft.model.config import LoraConfig, OptimizerConfig, SchedulerConfig
from litft.model import module as module_py
from litft.model.module import LitFTModule

STEPS = 3
PAIRS = 16
PAD = 48


class _Recording(LitFTModule):
    """Records every logged training value per step, and counts the scorer's calls with and without gradients."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.logged: dict[str, list[float]] = {}
        self.calls = {"policy": 0, "no_grad": 0}

    def log(self, name, value, *args, **kwargs):
        if name.startswith("train/"):
            self.logged.setdefault(name, []).append(float(value))
        return super().log(name, value, *args, **kwargs)

    def configure_model(self):
        """Start from a trained-looking adapter (LoRA B != 0): the adapters change the outputs from the first step,
        so a reference scored with them on differs from the base."""
        super().configure_model()
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)

    def score(self, *args, **kwargs):
        self.calls["policy" if torch.is_grad_enabled() else "no_grad"] += 1
        return super().score(*args, **kwargs)


def _pairs(path: Path) -> str:
    records = [{"prompt": f"What is {i} plus {i}?", "chosen": " ".join([str(2 * i)] * (1 + (7 * i) % 11)),
                "rejected": " ".join([str(2 * i + 1)] * (1 + (5 * i + 3) % 11))} for i in range(PAIRS)]
    path.write_text(json.dumps(records))
    return str(path)


def _fit(model: str, data: str, *, precompute_reference: bool) -> tuple[_Recording, LitFTDataModule]:
    torch.manual_seed(0)
    module = _Recording(model, method="dpo", dpo=DPOConfig(beta=0.5, precompute_reference=precompute_reference),
                        lora=LoraConfig(r=4, alpha=8, dropout=0.0), optimizer=OptimizerConfig(name="sgd", lr=0.3),
                        scheduler=SchedulerConfig(name="constant"))
    dm = LitFTDataModule(dataset=data, kind="preference", tokenizer=model, cutoff_len=48, batch_size=4,
                         pad_to_multiple_of=PAD)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1,
                         num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return module, dm


def _adapter(module: LitFTModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def _reference_files(dm: LitFTDataModule) -> list[Path]:
    return sorted(dm.cache_dir.glob("reference-*.npy"))


@pytest.fixture(scope="module")
def live_run(tmp_path_factory, tiny_llama):
    data = _pairs(tmp_path_factory.mktemp("refcache") / "pairs.json")
    module, _ = _fit(tiny_llama, data, precompute_reference=False)
    return data, module


def _assert_same_training(cached: _Recording, live: _Recording) -> None:
    for key in ("train/loss", "train/rewards/chosen", "train/rewards/rejected", "train/logps/chosen"):
        assert len(cached.logged[key]) == STEPS, key
        torch.testing.assert_close(torch.tensor(cached.logged[key]), torch.tensor(live.logged[key]), rtol=0,
                                   atol=1e-6, msg=key)
    assert cached.logged["train/loss"][0] != cached.logged["train/loss"][-1]  # it trains
    mine, theirs = _adapter(cached), _adapter(live)
    assert mine.keys() == theirs.keys() and mine
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], rtol=0, atol=1e-6, msg=name)


def test_precomputed_reference_trains_like_the_live_one_and_is_cached(live_run, tiny_llama, tmp_path, monkeypatch):
    data, live = live_run
    # live: per step one policy forward and one reference forward (no gradients)
    assert live.calls == {"policy": STEPS, "no_grad": STEPS}

    scored = []
    real = precompute.score_pairs
    monkeypatch.setattr(precompute, "score_pairs", lambda *a, **k: scored.append(1) or real(*a, **k))
    first, dm = _fit(tiny_llama, data, precompute_reference=True)
    _assert_same_training(first, live)
    # precomputed: 16 pairs in micro-batches of 4 scored once before training, then the policy forward alone
    assert scored == [1] and first.calls == {"policy": STEPS, "no_grad": PAIRS // 4}
    (cached_file,) = _reference_files(dm)
    assert cached_file.parent == dm.cache_dir  # beside the tokenized data, keyed by its fingerprint

    second, _ = _fit(tiny_llama, data, precompute_reference=True)  # reuses the file: no scoring at all
    assert scored == [1] and second.calls == {"policy": STEPS, "no_grad": 0}
    _assert_same_training(second, live)

    other = tmp_path / "other-base"  # the same tokenizer and data (same data cache), other weights
    shutil.copytree(tiny_llama, other)
    with torch.no_grad():
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(other)
        base.model.norm.weight.mul_(1.5)
        base.save_pretrained(other)
    _, dm_other = _fit(str(other), data, precompute_reference=True)
    assert scored == [1, 1] and dm_other.cache_dir == dm.cache_dir
    assert len(_reference_files(dm)) == 2


@pytest.mark.parametrize("damage", ["adapters_on", "shuffled"])
def test_wrong_reference_values_change_the_training(live_run, tiny_llama, monkeypatch, damage):
    """The equality above sees the cached values: scored with the adapters on, or handed to the wrong rows (shifted
    by one), the training differs."""
    data, live = live_run
    if damage == "adapters_on":
        monkeypatch.setattr(module_py, "reference_scorer", lambda model, score: score)
    else:
        real = precompute.score_pairs
        monkeypatch.setattr(precompute, "score_pairs", lambda *a, **k: real(*a, **k).roll(1, dims=0))
    monkeypatch.setattr(precompute, "cache_file", lambda folder, key: Path(folder) / f"reference-{damage}-{key}.npy")
    damaged, _ = _fit(tiny_llama, data, precompute_reference=True)
    assert len(damaged.logged["train/loss"]) == STEPS
    assert max(abs(a - b) for a, b in zip(damaged.logged["train/loss"], live.logged["train/loss"])) > 1e-3
    with pytest.raises(AssertionError):
        _assert_same_training(damaged, live)


@pytest.mark.parametrize("pairs,world,batch", [(7, 2, 2), (9, 3, 4), (2, 4, 1)])
def test_rank_shares_reassemble_the_table(pairs, world, batch):
    """Each rank scores pairs rank, rank + world, ... (padded to the same number of micro-batches on every rank); the
    gathered shares give pair i's values at row i, as one process computes them."""
    from litft.data.collate import PairCollator

    rows = [{"chosen_input_ids": [i, 1], "chosen_labels": [-100, 1], "rejected_input_ids": [i, 2, 2],
             "rejected_labels": [-100, 2, 2]} for i in range(pairs)]

    def fake(ids, mask, labels):  # a row's "log-probability": its first id and its length, distinct per row
        return (ids[:, 0] * 10 + mask.sum(-1)).double(), mask.sum(-1)

    collate = PairCollator(0)
    one = precompute.score_pairs(rows, collate, fake, batch_size=batch)
    assert one.tolist() == [[10 * i + 2, 10 * i + 3] for i in range(pairs)]
    shares = [precompute.score_pairs(rows, collate, fake, batch_size=batch, rank=r, world=world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # the same number of rows (and micro-batches) on every rank
    torch.testing.assert_close(precompute.interleave(torch.stack(shares), pairs), one, rtol=0, atol=0)


def test_kto_refuses_a_precomputed_reference():
    with pytest.raises(LitFTError, match=r"^model.kto.precompute_reference: KTO's KL rows pair each example"):
        KTOConfig(precompute_reference=True)
