"""LitFTDataModule end to end: real LLaMA-Factory data, batches, and exact mid-epoch resume under Lightning."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch

from litft.data.datamodule import LitFTDataModule
from litft.errors import LitFTError


def test_alpaca_batches(tiny_qwen2, alpaca_file):
    dm = LitFTDataModule(dataset=alpaca_file, tokenizer=tiny_qwen2, batch_size=4, cutoff_len=64, val_size=4)
    dm.setup("fit")
    assert dm.stats.records == 32 and len(dm.train_rows) == 28 and len(dm.val_rows) == 4
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "labels", "attention_mask", "num_target_tokens"}
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    width = batch["input_ids"].shape[1]
    assert int(batch["attention_mask"].sum(1).max()) == width  # padded to the longest row only
    assert int(batch["num_target_tokens"]) == int((batch["labels"][:, 1:] != -100).sum())
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == -100).all() and (batch["input_ids"][pad] == dm.tokenizer.pad_token_id).all()
    val = next(iter(dm.val_dataloader()))
    assert val["input_ids"].shape[0] == 4


def test_real_llamafactory_registry(tiny_qwen2, lf_data):
    dm = LitFTDataModule(
        dataset="alpaca_en_demo,alpaca_zh_demo,identity,c4_demo,wiki_demo", dataset_dir=str(lf_data),
        tokenizer=tiny_qwen2, cutoff_len=128, max_samples=20,
    )
    dm.setup()
    assert dm.stats.per_dataset == {"alpaca_en_demo": 20, "alpaca_zh_demo": 20, "identity": 20, "c4_demo": 20, "wiki_demo": 20}
    # plain text rows are trained on every token; documents longer than cutoff_len are split into chunks
    text_rows = [r for r in dm.train_rows if r["labels"][0] != -100]
    assert all(r["labels"] == r["input_ids"] for r in text_rows)
    assert dm.stats.chunked == 40 and len(text_rows) > 40
    assert all(len(r["input_ids"]) <= 128 for r in dm.train_rows)


@pytest.mark.parametrize("name,message", [
    ("dpo_en_demo", r"preference data \(ranking: true\) needs model\.method: dpo, orpo or simpo "
                    r"\(this run's model\.method is sft\)$"),
    ("kto_en_demo", r"feedback data \(kto_tag\) needs model\.method: kto \(this run's model\.method is sft\)$"),
], ids=["dpo", "kto"])
def test_sft_refuses_preference_and_kto_entries(tmp_path, tiny_qwen2, name, message):
    # The two entries as LLaMA-Factory's dataset_info.json declares them (preference and KTO data).
    info = {
        "dpo_en_demo": {"file_name": "dpo.json", "ranking": True, "formatting": "sharegpt",
                        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        "kto_en_demo": {"file_name": "kto.json", "formatting": "sharegpt",
                        "columns": {"messages": "messages", "kto_tag": "label"},
                        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                 "assistant_tag": "assistant"}},
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    turn = [{"from": "human", "value": "Hi"}]
    (tmp_path / "dpo.json").write_text(json.dumps([{"conversations": turn, "chosen": {"from": "gpt", "value": "a"},
                                                    "rejected": {"from": "gpt", "value": "b"}}]))
    (tmp_path / "kto.json").write_text(json.dumps([{"messages": [{"role": "user", "content": "Hi"},
                                                                 {"role": "assistant", "content": "a"}], "label": True}]))
    dm = LitFTDataModule(dataset=name, dataset_dir=str(tmp_path), tokenizer=tiny_qwen2)
    with pytest.raises(LitFTError, match=f"^dataset '{name}': {message}$"):
        dm.setup()


class _Recorder(pl.LightningModule):
    """Records the first token of every row it trains on; the loss is a dummy."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []
        self.targets: list[tuple[int, int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"][:, :12].tolist())
        self.targets.append((int(batch["num_target_tokens"]), int((batch["labels"][:, 1:] != -100).sum())))
        return (self.w * 0).sum() + self.w.sum() ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(root, max_steps, callbacks=()):
    return pl.Trainer(
        default_root_dir=root, max_steps=max_steps, accumulate_grad_batches=2, accelerator="cpu", devices=1,
        logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
        enable_checkpointing=bool(callbacks),
    )


def test_lightning_resumes_on_the_exact_next_batch(tmp_path, tiny_qwen2, alpaca_file):
    make_dm = lambda: LitFTDataModule(dataset=alpaca_file, tokenizer=tiny_qwen2, batch_size=3, cutoff_len=64)  # noqa: E731
    full = _Recorder()
    # 11 micro-batches per epoch: steps (0,1) ... (8,9), (10,) then (0,1) of epoch 1 → 7 steps, 13 batches
    _trainer(tmp_path / "full", 7).fit(full, datamodule=make_dm())
    assert len(full.seen) == 13

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=2, save_top_k=-1)
    first = _Recorder()
    _trainer(tmp_path / "a", 4, [ckpt]).fit(first, datamodule=make_dm())
    path = tmp_path / "ck" / "epoch=0-step=2.ckpt"
    assert torch.load(path, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 0, "batches_consumed": 4, "seed": 42, "world_size": 1, "batch_size": 3, "num_rows": 32, "grouped": 0}
    ]
    resumed = _Recorder()
    _trainer(tmp_path / "b", 7).fit(resumed, datamodule=make_dm(), ckpt_path=str(path))
    assert full.seen[:4] == first.seen[:4]
    assert resumed.seen == full.seen[4:]  # batch 5 onwards, across the epoch boundary
    # num_target_tokens = trained positions over the 2 micro-batches of each optimizer step
    for g in range(0, 10, 2):
        pair = full.targets[g : g + 2]
        assert pair[0][0] == pair[1][0] == pair[0][1] + pair[1][1]
    assert full.targets[10][0] == full.targets[10][1]  # the epoch's last step has one micro-batch


def test_interleave_and_concat(tiny_qwen2, tmp_path):
    from litft.data.records import mix

    a, b = list(range(10)), list(range(100, 103))
    assert mix([a, b]) == a + b
    under = mix([a, b], strategy="interleave_under", seed=1)
    assert set(under) <= set(a + b) and len([x for x in under if x >= 100]) <= 3
    over = mix([a, b], strategy="interleave_over", probs=[0.5, 0.5], seed=1)
    assert set(a) <= set(over) and set(b) <= set(over)
    with pytest.raises(LitFTError, match="mix_strategy"):
        mix([a, b], strategy="zip")
