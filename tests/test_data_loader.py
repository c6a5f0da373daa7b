"""Resumable, sharded training loader: exact next batch after resume, disjoint shards, num_target_tokens."""

from __future__ import annotations

import torch

from litft.data.collate import PadCollator
from litft.labels import count_targets
from litft.data.loader import ResumableBatchSampler, ResumableLoader

IGN = -100


def _rows(n=23):
    rows = []
    for i in range(n):
        length = 3 + i % 5
        ids = [100 + i] * length
        labels = [IGN] * (length - 1 - i % 3) + [100 + i] * (1 + i % 3)
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def _loader(rows, batch_size=3, seed=7, rank=0, world=1, acc=1):
    sampler = ResumableBatchSampler(len(rows), batch_size, seed=seed, rank=rank, world_size=world)
    return ResumableLoader(rows, [count_targets(r["labels"]) for r in rows], PadCollator(0), sampler, accumulate_grad_batches=acc)


def _first_col(batch):
    return batch["input_ids"][:, 0].tolist()


def test_resume_mid_epoch_gives_exact_next_batch():
    rows = _rows()
    full = [_first_col(b) for b in _loader(rows)]
    assert len(full) == 8 and sorted(x for b in full for x in b) == [100 + i for i in range(23)]
    a = _loader(rows)
    it = iter(a)
    seen = [_first_col(next(it)) for _ in range(3)]
    state = a.state_dict()
    assert state == {"epoch": 0, "batches_consumed": 3, "seed": 7, "world_size": 1, "batch_size": 3, "num_rows": 23,
                     "grouped": 0}
    b = _loader(rows)
    b.load_state_dict(state)
    rest = [_first_col(x) for x in b]
    assert seen + rest == full
    # the next epoch follows with a different order, seeded by seed + 1
    assert b.state_dict()["epoch"] == 1
    second = [_first_col(x) for x in b]
    assert second != full
    gen = torch.Generator().manual_seed(7 + 1)
    assert [x - 100 for x in second[0]] == torch.randperm(23, generator=gen).tolist()[:3]


def test_set_epoch_and_end_of_epoch_state():
    rows = _rows()
    a = _loader(rows)
    list(a)
    assert a.state_dict()["epoch"] == 1 and a.state_dict()["batches_consumed"] == 0
    a.set_epoch(1)  # Lightning's call at the start of the next epoch is a no-op here
    assert a.state_dict()["batches_consumed"] == 0
    a.sampler.set_epoch(5)  # Lightning calls loader.sampler.set_epoch
    assert a.state_dict()["epoch"] == 5


def test_ranks_get_disjoint_shards():
    rows = _rows(23)
    shards = [{x for b in _loader(rows, rank=r, world=2) for x in _first_col(b)} for r in range(2)]
    assert not shards[0] & shards[1]
    assert len(shards[0]) == len(shards[1]) == 11
    assert len(_loader(rows, rank=0, world=2)) == len(_loader(rows, rank=1, world=2)) == 4


def test_num_target_tokens_sums_the_accumulation_group():
    rows = _rows(23)
    batches = list(_loader(rows, acc=3))
    counts = [int((b["labels"][:, 1:] != IGN).sum()) for b in batches]
    for g in range(0, len(batches), 3):
        group = batches[g : g + 3]
        assert all(int(b["num_target_tokens"]) == sum(counts[g : g + 3]) for b in group)
    single = list(_loader(rows, acc=1))
    assert [int(b["num_target_tokens"]) for b in single] == counts


def test_num_target_tokens_when_the_epoch_is_cut_short():
    rows = _rows(23)
    sampler = ResumableBatchSampler(len(rows), 3, seed=7)
    loader = ResumableLoader(rows, [count_targets(r["labels"]) for r in rows], PadCollator(0), sampler,
                             accumulate_grad_batches=2, epoch_batches=lambda: 5)
    batches = list(loader)[:5]  # the trainer runs 5 batches: steps (0,1), (2,3), (4,)
    counts = [int((b["labels"][:, 1:] != IGN).sum()) for b in batches]
    assert int(batches[4]["num_target_tokens"]) == counts[4]
    assert int(batches[2]["num_target_tokens"]) == counts[2] + counts[3]
