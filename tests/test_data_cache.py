"""Dataset cache: second run reuses it, fingerprint follows data/template/lengths, waiting ranks poll the filesystem."""

from __future__ import annotations

import json
import threading
import time

import pytest

from litft.data import cache
from litft.data.datamodule import LitFTDataModule
from litft.errors import LitFTError
from tests.helpers import write_alpaca


def _dm(path, tok, **kw):
    return LitFTDataModule(dataset=str(path), tokenizer=tok, cutoff_len=64, **kw)


def test_second_run_hits_the_cache(tmp_path, tiny_qwen2, caplog):
    data = write_alpaca(tmp_path / "a.json", 16)
    first = _dm(data, tiny_qwen2)
    first.setup()
    assert first.cache_hit is False and cache.is_ready(first.cache_dir)
    second = _dm(data, tiny_qwen2)
    with caplog.at_level("INFO", logger="litft.data.datamodule"):
        second.setup()
    assert second.cache_hit is True and second.cache_dir == first.cache_dir
    assert "reusing the cached dataset" in caplog.text
    assert [r["input_ids"] for r in second.train_rows] == [r["input_ids"] for r in first.train_rows]
    assert json.loads((first.cache_dir / "stats.json").read_text())["records"] == 16


def test_fingerprint_follows_inputs(tmp_path, tiny_qwen2, tiny_llama):
    data = write_alpaca(tmp_path / "a.json", 8)
    base = _dm(data, tiny_qwen2).cache_path()
    assert _dm(data, tiny_qwen2).cache_path() == base
    assert _dm(data, tiny_qwen2, packing=True).cache_path() != base
    assert LitFTDataModule(dataset=str(data), tokenizer=tiny_qwen2, cutoff_len=65).cache_path() != base
    assert _dm(data, tiny_qwen2, template="alpaca").cache_path() != base
    assert _dm(data, tiny_llama).cache_path() != base
    write_alpaca(data, 9)  # new contents, same path
    assert _dm(data, tiny_qwen2).cache_path() != base


def test_packed_datamodule(tmp_path, tiny_qwen2):
    data = write_alpaca(tmp_path / "a.json", 32)
    dm = _dm(data, tiny_qwen2, packing=True, batch_size=2)
    dm.setup()
    s = dm.stats
    assert s.rows < s.samples == 32 and 0.5 < s.packing_efficiency <= 1
    assert sum(len(r["input_ids"]) for r in dm.train_rows) == s.tokens
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "labels", "position_ids", "attention_mask", "num_target_tokens"}
    assert batch["attention_mask"].shape == (2, 1, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    starts = batch["position_ids"] == 0
    assert (batch["labels"][starts] == -100).all()
    assert int(batch["num_target_tokens"]) == int((batch["labels"][:, 1:] != -100).sum())
    varlen = _dm(data, tiny_qwen2, packing=True, batch_size=2, attn_implementation="flash_attention_2")
    varlen.setup()
    assert "attention_mask" not in next(iter(varlen.train_dataloader()))


def test_wait_for_polls_until_ready_and_reports_failure(tmp_path):
    target = tmp_path / "fp"
    threading.Timer(1.5, lambda: cache.write(target, {"train": [{"input_ids": [1, 2], "labels": [1, 2]}]}, {"records": 1})).start()
    t0 = time.monotonic()
    cache.wait_for(target, poll_s=0.1)
    assert time.monotonic() - t0 >= 1.0 and cache.is_ready(target)
    other = tmp_path / "fp2"
    threading.Timer(0.5, lambda: cache.mark_failed(other, "bad.json, record 3: boom")).start()
    with pytest.raises(LitFTError, match="record 3: boom"):
        cache.wait_for(other, poll_s=0.1)


def test_only_the_preparing_rank_tokenizes(tmp_path, tiny_qwen2, monkeypatch):
    """Rank 1 of 2 never builds the dataset: it waits (polling the filesystem) for rank 0's cache."""
    from types import SimpleNamespace

    data = write_alpaca(tmp_path / "a.json", 8)
    rank0, rank1 = _dm(data, tiny_qwen2), _dm(data, tiny_qwen2)
    rank0.trainer = SimpleNamespace(global_rank=0, local_rank=0, world_size=2)
    rank1.trainer = SimpleNamespace(global_rank=1, local_rank=1, world_size=2)
    assert rank0.prepare_data_per_node is False  # shared filesystem: Lightning prepares on global rank 0 only
    built = []
    original = LitFTDataModule.build

    def build(self, workdir):
        built.append(self.trainer.global_rank)
        time.sleep(1.0)
        return original(self, workdir)

    monkeypatch.setattr(LitFTDataModule, "build", build)
    waiter = threading.Thread(target=rank1.setup)
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()  # rank 1 is waiting for the cache
    rank0.setup()
    waiter.join(timeout=60)
    assert built == [0]
    assert [r["input_ids"] for r in rank1.train_rows] == [r["input_ids"] for r in rank0.train_rows]
    # each rank's loader gets a disjoint half of the rows
    firsts = [{tuple(b["input_ids"][i].tolist()) for b in dm.train_dataloader() for i in range(len(b["input_ids"]))} for dm in (rank0, rank1)]
    assert not firsts[0] & firsts[1] and len(firsts[0]) == len(firsts[1]) == 4


def test_per_node_preparation(tmp_path, tiny_qwen2):
    from types import SimpleNamespace

    dm = _dm(write_alpaca(tmp_path / "a.json", 4), tiny_qwen2, shared_filesystem=False)
    assert dm.prepare_data_per_node is True
    dm.trainer = SimpleNamespace(global_rank=2, local_rank=0, world_size=4)
    assert dm._is_preparer()  # local rank 0 of the second node


def test_overwrite_cache_rebuilds(tmp_path, tiny_qwen2):
    data = write_alpaca(tmp_path / "a.json", 6)
    first = _dm(data, tiny_qwen2)
    first.setup()
    (first.cache_dir / "stats.json").write_text(json.dumps({**json.loads((first.cache_dir / "stats.json").read_text()), "records": 999}))
    again = _dm(data, tiny_qwen2, overwrite_cache=True)
    again.setup()
    assert again.cache_hit is False and again.stats.records == 6
