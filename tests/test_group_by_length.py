"""Length-grouped batching (data.group_by_length): less padding, same rows, deterministic and resumable."""

import random

import pytest

from litft.data.loader import ResumableBatchSampler


def _lengths(n=203, seed=0):
    rng = random.Random(seed)
    return [rng.randint(5, 500) for _ in range(n)]


def _padded(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) for b in batches)


def test_grouped_batches_cover_every_row_once_with_the_same_count():
    lengths = _lengths()
    plain = ResumableBatchSampler(len(lengths), 4, seed=1)
    grouped = ResumableBatchSampler(len(lengths), 4, seed=1, lengths=lengths, group_batches=10)
    batches = grouped.batches(0)
    assert len(batches) == len(plain) == len(grouped) == 51
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [len(b) for b in batches[:-1]] == [4] * 50 and len(batches[-1]) == 3  # the partial batch stays last


def test_grouping_cuts_padding():
    lengths = _lengths()
    real = sum(lengths)
    plain = ResumableBatchSampler(len(lengths), 4, seed=1).batches(0)
    grouped = ResumableBatchSampler(len(lengths), 4, seed=1, lengths=lengths, group_batches=50).batches(0)
    assert real / _padded(grouped, lengths) > 0.95
    assert real / _padded(plain, lengths) < 0.8


def test_grouping_is_deterministic_per_epoch_and_resumes_exactly():
    lengths = _lengths()
    a = ResumableBatchSampler(len(lengths), 4, seed=3, lengths=lengths)
    b = ResumableBatchSampler(len(lengths), 4, seed=3, lengths=lengths)
    assert a.batches(0) == b.batches(0)
    assert a.batches(0) != a.batches(1)
    b.start_batch = 7
    assert list(b) == a.batches(0)[7:]


def test_grouping_shares_rows_disjointly_over_ranks():
    lengths = _lengths(200)
    ranks = [ResumableBatchSampler(200, 4, lengths=lengths, rank=r, world_size=2).batches(0) for r in range(2)]
    rows = [sorted(i for b in batches for i in b) for batches in ranks]
    assert len(rows[0]) == len(rows[1]) == 100 and not set(rows[0]) & set(rows[1])


def test_lengths_must_match_rows():
    with pytest.raises(ValueError, match="lengths has 3 entries for 4 rows"):
        ResumableBatchSampler(4, 2, lengths=[1, 2, 3])


def test_datamodule_groups_by_length_unless_packing(tiny_llama, alpaca_file):
    from litft.data.datamodule import LitFTDataModule

    dm = LitFTDataModule(dataset=alpaca_file, tokenizer=tiny_llama, cutoff_len=64, batch_size=4, group_by_length=True)
    loader = dm.train_dataloader()
    assert loader.batch_sampler.lengths == [len(r["input_ids"]) for r in dm.train_rows]
    widths = [b["input_ids"].shape[1] for b in loader]
    real = sum(len(r["input_ids"]) for r in dm.train_rows)
    padded = sum(b["attention_mask"].numel() for b in loader)
    assert len(widths) == 8 and real / padded > 0.95
    dm_plain = LitFTDataModule(dataset=alpaca_file, tokenizer=tiny_llama, cutoff_len=64, batch_size=4)
    assert dm_plain.train_dataloader().batch_sampler.lengths is None
