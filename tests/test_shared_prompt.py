"""Preference pairs as one row each, the prompt computed once (``data.share_prompt``, litft/data/shared_prompt.py):
exact rows, positions, segments and mask; per-reply log-probabilities equal to the two-row layout's; a DPO fit equal to
the two-row fit, with the live and with the precomputed reference."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from transformers import AutoModelForCausalLM

from litft.data.collate import PairCollator
from litft.data.datamodule import LitFTDataModule
from litft.data.shared_prompt import SEGMENTS, SharedPromptCollator, branch_mask, pair_row, shared_length
from litft.errors import LitFTError
from litft.methods import DPOConfig
from litft.methods.logps import layout, scorer
from litft.model.config import LoraConfig, OptimizerConfig, SchedulerConfig
from tests.test_reference_cache import STEPS, _adapter, _pairs, _Recording

X = -100


def _row(prompt, chosen, rejected, rejected_prompt=None):
    """A pair row as litft.data.preference makes it: the prompt untrained, each reply trained."""
    rp = prompt if rejected_prompt is None else rejected_prompt
    return {"chosen_input_ids": prompt + chosen, "chosen_labels": [X] * len(prompt) + chosen,
            "rejected_input_ids": rp + rejected, "rejected_labels": [X] * len(rp) + rejected}


def test_one_row_per_pair_exactly():
    row = pair_row(_row([5, 6, 7], [20, 21], [30, 31, 32]))
    # the prefix is the prompt less its last token; each branch restarts from that token (7) at position 2
    assert row["input_ids"] == [5, 6, 7, 20, 21, 7, 30, 31, 32]
    assert row["labels"] == [X, X, X, 20, 21, X, 30, 31, 32]
    assert row["position_ids"] == [0, 1, 2, 3, 4, 2, 3, 4, 5]
    assert row[SEGMENTS] == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    # prompts that tokenized differently share only their common beginning (here nothing: two whole rows)
    assert shared_length([5, 6, 7, 20], [X, X, X, 20], [5, 6, 8, 30], [X, X, X, 30]) == 1
    assert shared_length([4, 6], [X, 6], [5, 6], [X, 6]) == 0
    whole = pair_row(_row([4, 6], [20], [30], rejected_prompt=[5, 6]))
    assert whole["input_ids"] == [4, 6, 20, 5, 6, 30] and whole["position_ids"] == [0, 1, 2, 0, 1, 2]


def test_branch_mask():
    segments = torch.tensor([[0, 0, 1, 1, 2, 2, 0]])
    valid = torch.tensor([[True] * 6 + [False]])
    got = branch_mask(segments, valid)[0, 0].int().tolist()
    assert got == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],  # the rejected branch: the prefix and itself, never the chosen reply
        [1, 1, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 1],  # padding attends itself only
    ]
    additive = branch_mask(segments, valid, torch.float32)
    assert (additive == 0).equal(branch_mask(segments, valid))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_reply_logps_equal_the_two_row_layout(tiny_llama, attn):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation=attn).eval()
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(3, 200, (n,), generator=g).tolist()

    rows = [_row(ids(7), ids(4), ids(9)), _row(ids(3), ids(11), ids(2)), _row(ids(12), ids(1), ids(1)),
            _row(ids(5), ids(3), ids(6), rejected_prompt=ids(6))]  # last: prompts differ, nothing shared
    two = PairCollator(0)(rows)
    one = SharedPromptCollator(0, attn_implementation=attn)(rows)
    assert one["input_ids"].shape[0] == 4 and two["input_ids"].shape[0] == 8
    assert one["input_ids"].shape[1] < two["input_ids"].shape[1] * 2  # the prompts' tokens once
    score = scorer(model)
    with torch.no_grad():
        want, want_n = score(two["input_ids"], two["attention_mask"], two["labels"])
        got, got_n = score(one["input_ids"], one["attention_mask"], one["labels"], **layout(one))
    assert got_n.tolist() == want_n.tolist() == [4, 11, 1, 3, 9, 2, 1, 6]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _fit(model: str, data: str, *, share_prompt: bool, precompute_reference: bool = False):
    torch.manual_seed(0)
    module = _Recording(model, method="dpo", dpo=DPOConfig(beta=0.5, precompute_reference=precompute_reference),
                        lora=LoraConfig(r=4, alpha=8, dropout=0.0), optimizer=OptimizerConfig(name="sgd", lr=0.3),
                        scheduler=SchedulerConfig(name="constant"))
    dm = LitFTDataModule(dataset=data, kind="preference", tokenizer=model, cutoff_len=48, batch_size=4,
                         share_prompt=share_prompt, attn_implementation="sdpa")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1,
                         num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return module


def test_dpo_fit_with_the_prompt_once_equals_two_rows(tmp_path, tiny_llama, monkeypatch):
    monkeypatch.setenv("LITFT_CACHE", str(tmp_path / "cache"))
    data = _pairs(tmp_path / "pairs.json")
    runs = {"two rows": _fit(tiny_llama, data, share_prompt=False),
            "one row": _fit(tiny_llama, data, share_prompt=True),
            "one row, precomputed reference": _fit(tiny_llama, data, share_prompt=True, precompute_reference=True)}
    ref = runs.pop("two rows")
    assert len(ref.logged["train/loss"]) == STEPS and ref.logged["train/loss"][0] != ref.logged["train/loss"][-1]
    for name, run in runs.items():
        for key in ("train/loss", "train/rewards/chosen", "train/rewards/rejected", "train/logps/chosen"):
            torch.testing.assert_close(torch.tensor(run.logged[key]), torch.tensor(ref.logged[key]), rtol=1e-5,
                                       atol=1e-5, msg=f"{name}: {key}")
        for (n, p), (_, q) in zip(_adapter(run).items(), _adapter(ref).items()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"{name}: {n}")


def test_share_prompt_refusals(tiny_llama):
    with pytest.raises(LitFTError, match="data.share_prompt applies to preference pairs, not sft data"):
        LitFTDataModule(dataset="x", tokenizer=tiny_llama, share_prompt=True)
    with pytest.raises(LitFTError, match="needs a 4-D attention mask, which flash_attention_2 does not take"):
        LitFTDataModule(dataset="x", kind="preference", tokenizer=tiny_llama, share_prompt=True,
                        attn_implementation="flash_attention_2")
