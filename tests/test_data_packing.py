"""Packing: best-fit decreasing, restarting positions, the batch layouts, and the proof that a packed sample's logits
and loss equal those of the sample run alone (tiny Llama and Qwen2, fp32, sdpa and eager; flash attention in
tests/test_packing_varlen.py)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from litft.data.packing import PackedCollator, best_fit_decreasing, block_causal_mask, pack

IGN = -100


def test_best_fit_decreasing():
    lengths = [7, 5, 4, 3, 3, 2, 1]
    bins = best_fit_decreasing(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(7))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 3  # 25 tokens in rows of 10: the optimum
    assert bins[0][0] == 0  # longest first
    with pytest.raises(ValueError):
        best_fit_decreasing([11], 10)


def test_pack_rows_positions_and_first_labels():
    rows = [
        {"input_ids": [1, 2, 3], "labels": [1, 2, 3]},
        {"input_ids": [4, 5], "labels": [IGN, 5]},
        {"input_ids": [6, 7, 8, 9], "labels": [6, IGN, 8, 9]},
    ]
    packed, eff = pack(rows, 8)
    assert len(packed) == 2 and eff == pytest.approx(9 / 16)
    row = next(r for r in packed if len(r["input_ids"]) == 7)
    assert row == {"input_ids": [6, 7, 8, 9, 1, 2, 3], "labels": [IGN, IGN, 8, 9, IGN, 2, 3], "position_ids": [0, 1, 2, 3, 0, 1, 2]}
    mask = block_causal_mask(torch.tensor([row["position_ids"]]))[0, 0] == 0
    assert torch.equal(block_causal_mask(torch.tensor([row["position_ids"]]), torch.bool)[0, 0], mask)
    expected = torch.zeros(7, 7, dtype=torch.bool)
    expected[:4, :4] = torch.ones(4, 4).tril().bool()
    expected[4:, 4:] = torch.ones(3, 3).tril().bool()
    assert torch.equal(mask, expected)


def _samples(vocab, seed=0):
    rng = random.Random(seed)
    out = []
    for n in (9, 5, 12, 7, 3, 10):
        ids = [rng.randrange(10, vocab) for _ in range(n)]
        cut = rng.randrange(1, n)
        out.append({"input_ids": ids, "labels": [IGN] * cut + ids[cut:]})
    return out


def _alone_loss_sum(logits, labels):
    return F.cross_entropy(logits[:-1], torch.tensor(labels[1:]), ignore_index=IGN, reduction="sum")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_alone(tiny_model, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attn)
    model.train()  # as in training (a KV cache is still created: use_cache defaults to True)
    samples = _samples(model.config.vocab_size)
    packed, _ = pack(samples, 24)
    assert len(packed) >= 2 and any(len(r["position_ids"]) < 24 for r in packed)  # the batch is padded
    batch = PackedCollator(pad_token_id=0, attn_implementation=attn)(packed)
    assert batch["attention_mask"].dtype == (torch.bool if attn == "sdpa" else torch.float32)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits
        # the model's own loss over the packed batch equals the sum of the samples' losses
        packed_loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=IGN, reduction="sum"
        )
        alone_total = 0.0
        checked = 0
        for s in samples:
            alone = model(input_ids=torch.tensor([s["input_ids"]])).logits[0]
            alone_total = alone_total + _alone_loss_sum(alone, s["labels"])
            # find the sample in the packed rows
            for r, row in enumerate(packed):
                ids = row["input_ids"]
                for start in (i for i, p in enumerate(row["position_ids"]) if p == 0):
                    if ids[start : start + len(s["input_ids"])] == s["input_ids"]:
                        got = logits[r, start : start + len(s["input_ids"])]
                        torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)
                        checked += 1
                        break
                else:
                    continue
                break
    assert checked == len(samples)
    torch.testing.assert_close(packed_loss, alone_total, rtol=1e-5, atol=1e-4)


def test_varlen_batch_is_one_flat_row():
    """flash attention: the micro-batch's packed rows laid end to end in ONE row, no padding, no mask (transformers
    reads packed sequences from position_ids for a batch of one row only; tests/test_packing_varlen.py runs it)."""
    rows = [
        {"input_ids": [6, 7, 8, 9, 1, 2, 3], "labels": [IGN, IGN, 8, 9, IGN, 2, 3], "position_ids": [0, 1, 2, 3, 0, 1, 2]},
        {"input_ids": [4, 5], "labels": [IGN, 5], "position_ids": [0, 1]},
    ]
    for attn in ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn2"):
        batch = PackedCollator(pad_token_id=0, attn_implementation=attn)(rows)
        assert set(batch) == {"input_ids", "labels", "position_ids"}
        assert batch["input_ids"].tolist() == [[6, 7, 8, 9, 1, 2, 3, 4, 5]]
        assert batch["labels"].tolist() == [[IGN, IGN, 8, 9, IGN, 2, 3, IGN, 5]]
        assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1]]
        assert int((batch["labels"][:, 1:] != IGN).sum()) == 4 + 1  # the rows' own counts
    stacked = PackedCollator(pad_token_id=0, attn_implementation="sdpa")(rows)
    assert stacked["input_ids"].tolist() == [[6, 7, 8, 9, 1, 2, 3], [4, 5, 0, 0, 0, 0, 0]]
    assert stacked["attention_mask"].shape == (2, 1, 7, 7)
    with pytest.raises(ValueError, match="must start a sample"):
        PackedCollator(pad_token_id=0, attn_implementation="flash_attention_2")([{**rows[1], "position_ids": [1, 2]}])


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(2, 32), min_size=1, max_size=60), capacity=st.integers(32, 64))
def test_fuzz_packing_invariants(lengths, capacity):
    rows = [{"input_ids": [k + 1] * n, "labels": [k + 1] * n} for k, n in enumerate(lengths)]
    packed, eff = pack(rows, capacity)
    assert all(len(r["input_ids"]) <= capacity for r in packed)
    assert sum(len(r["input_ids"]) for r in packed) == sum(lengths)
    assert eff == pytest.approx(sum(lengths) / (len(packed) * capacity))
    # best fit never needs more rows than twice the lower bound
    assert len(packed) <= 2 * -(-sum(lengths) // capacity)
    seen = []
    for r in packed:
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        for a, b in zip(starts, starts[1:] + [len(r["input_ids"])]):
            sample = r["input_ids"][a:b]
            assert len(set(sample)) == 1 and r["position_ids"][a:b] == list(range(b - a))
            assert r["labels"][a] == IGN and r["labels"][a + 1 : b] == sample[1:]
            seen.append(sample[0])
    assert sorted(seen) == list(range(1, len(lengths) + 1))
