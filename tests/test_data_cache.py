"""Dataset cache: second run reuses it, fingerprint follows data/template/lengths, waiting ranks never time out."""

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
