"""Preparation at scale: parallel workers give the same rows, one rank fingerprints, cache waits end."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

from litft.data import cache
from litft.data.datamodule import LitFTDataModule
from litft.errors import LitFTError
from tests.helpers import write_alpaca


def _rows(ds):
    return [dict(r) for r in ds] if ds is not None else []


@pytest.mark.parametrize("packing,cutoff", [(False, 46), (True, 96)])
def test_one_and_two_workers_give_equal_rows(tmp_path, tiny_qwen2, packing, cutoff):
    data = write_alpaca(tmp_path / "a.json", 300)
    built = {}
    for workers in (None, 2):
        dm = LitFTDataModule(dataset=str(data), tokenizer=tiny_qwen2, cutoff_len=cutoff, val_size=0.1, packing=packing,
                             preprocessing_num_workers=workers)
        splits, stats = dm.build(tmp_path / f"work-{workers}")
        built[workers] = (_rows(splits["train"]), _rows(splits["val"]), stats)
    (train1, val1, stats1), (train2, val2, stats2) = built[None], built[2]
    assert train1 == train2 and val1 == val2 and stats1 == stats2
    assert len(train1) == stats1.rows and len(val1) > 0
    assert stats1.truncated == (0 if packing else 90)  # cutoff 46 cuts a third of the records (in the workers too)
    assert all(r["length"] == len(r["input_ids"]) == len(r["labels"]) for r in train1 + val1)
    assert sum(r["num_targets"] for r in train1) == sum(sum(x != -100 for x in r["labels"][1:]) for r in train1)
    if packing:
        assert stats1.rows < stats1.samples and all(len(r["position_ids"]) == r["length"] <= 96 for r in train1)


def test_group_by_length_reads_the_length_column(tmp_path, tiny_qwen2, monkeypatch):
    dm = LitFTDataModule(dataset=str(write_alpaca(tmp_path / "a.json", 16)), tokenizer=tiny_qwen2, cutoff_len=64,
                         batch_size=2, group_by_length=True)
    dm.setup()
    expected = [len(r["input_ids"]) for r in dm.train_rows]
    read = []
    original = type(dm.train_rows).select_columns
    monkeypatch.setattr(type(dm.train_rows), "select_columns", lambda self, cols, *a, **k: read.append(cols) or original(self, cols, *a, **k))
    loader = dm.train_dataloader()
    assert loader.batch_sampler.lengths == expected
    assert read and all("input_ids" not in cols for cols in read)


class _Broadcast:
    """A stand-in strategy for 2 ranks in threads: broadcast(obj, src=0) returns rank 0's object on both."""

    def __init__(self):
        self.value, self.ready = None, threading.Event()

    def broadcast(self, obj, src=0):
        if obj is not None:
            self.value = obj
            self.ready.set()
        self.ready.wait(30)
        return self.value


def test_only_rank_zero_fingerprints_and_others_receive_the_key(tmp_path, tiny_qwen2, monkeypatch):
    data = write_alpaca(tmp_path / "a.json", 8)
    calls = []
    original = LitFTDataModule.cache_key
    monkeypatch.setattr(LitFTDataModule, "cache_key", lambda self: calls.append(self.trainer.global_rank) or original(self))
    strategy = _Broadcast()
    ranks = [LitFTDataModule(dataset=str(data), tokenizer=tiny_qwen2, cutoff_len=64, shared_filesystem=False) for _ in range(2)]
    for r, dm in enumerate(ranks):
        dm.trainer = SimpleNamespace(global_rank=r, local_rank=0, world_size=2, strategy=strategy)  # 2 nodes x 1
    ranks[1].prepare_data()  # node 2's local rank 0: Lightning calls it, but it has no key yet: nothing happens
    ranks[0].prepare_data()
    other = threading.Thread(target=ranks[1].setup)
    other.start()
    ranks[0].setup()
    other.join(60)
    assert not other.is_alive() and calls == [0]
    assert ranks[1].cache_dir == ranks[0].cache_dir and ranks[1]._run_token == ranks[0]._run_token
    assert [r["input_ids"] for r in ranks[1].train_rows] == [r["input_ids"] for r in ranks[0].train_rows]


def test_wait_times_out_with_one_line_naming_shared_filesystem(tmp_path):
    with pytest.raises(LitFTError) as err:
        cache.wait_for(tmp_path / "key", timeout_s=0.3, poll_s=0.05)
    assert "data.shared_filesystem" in str(err.value) and "\n" not in str(err.value)


def test_heartbeat_keeps_a_waiter_past_the_timeout(tmp_path):
    target = tmp_path / "key"

    def prepare():
        with cache.heartbeat(target, every_s=0.1):
            time.sleep(1.2)
            cache.write(target, {"train": [{"input_ids": [1, 2], "labels": [1, 2]}]}, {"records": 1})

    thread = threading.Thread(target=prepare)
    thread.start()
    t0 = time.monotonic()
    cache.wait_for(target, timeout_s=0.5, poll_s=0.05)  # 1.2 s of preparation > 0.5 s timeout: the heartbeat counts
    thread.join()
    assert time.monotonic() - t0 >= 1.0 and cache.is_ready(target)
    assert not target.with_name("key.alive").exists()


def test_failure_markers_belong_to_their_run(tmp_path):
    target = tmp_path / "key"
    cache.mark_failed(target, "old.json, record 1: from an earlier run", token="earlier")
    with pytest.raises(LitFTError, match="data.shared_filesystem"):  # the stale marker is ignored, whatever its time
        cache.wait_for(target, token="now", timeout_s=0.3, poll_s=0.05)
    cache.mark_failed(target, "bad.json, record 3: boom", token="now")
    assert json.loads(target.with_name("key.failed").read_text())["token"] == "now"
    with pytest.raises(LitFTError, match="record 3: boom"):
        cache.wait_for(target, token="now", timeout_s=5, poll_s=0.05)


def test_conversations_round_trip_through_arrow(tmp_path):
    import dataclasses

    import datasets

    from litft.data.conversation import Conversation, Turn
    from litft.data.pipeline import _to_conversations, write_conversations

    convs = [
        Conversation(turns=[Turn("user", "Add\n2", input="2", instruction="Add"), Turn("assistant", "4")], system="S"),
        Conversation(turns=[Turn("user", "q"), Turn("tool", "t"), Turn("assistant", "a")], tools='[{"name": "f"}]'),
        Conversation(text="a plain document"),
    ]
    assert write_conversations(iter(convs), tmp_path / "c.arrow") == 3
    back = _to_conversations(datasets.Dataset.from_file(str(tmp_path / "c.arrow"))[:])
    assert [dataclasses.asdict(c) for c in back] == [dataclasses.asdict(c) for c in convs]  # input/instruction too
