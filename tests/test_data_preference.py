"""Preference (DPO / ORPO / SimPO) and feedback (KTO) data: formats, exact rows and masks, truncation, errors,
identical pairs, the collators' batch layouts, the data module, prepare --preview and the cache."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import AutoTokenizer

from litft.data.collate import FeedbackCollator, PairCollator
from litft.data.conversation import Conversation, Feedback, Preference, Turn
from litft.data.datamodule import LitFTDataModule
from litft.data.formats import RecordError, alpaca, sharegpt, trl
from litft.data.preference import budget, encode_feedback, encode_pairs
from litft.data.stats import Stats
from litft.errors import DataError, LitFTError
from litft.labels import IGNORE_INDEX

EOT = {"qwen2": "<|im_end|>", "llama": "<|eot_id|>"}
ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


@pytest.fixture(scope="module")
def toks(tiny_llama, tiny_qwen2):
    return {"llama": AutoTokenizer.from_pretrained(tiny_llama), "qwen2": AutoTokenizer.from_pretrained(tiny_qwen2)}


def _chat_ids(tok, messages, **kw):
    out = tok.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"]) if hasattr(out, "keys") else list(out)


def _expected(tok, prompt_messages, reply, eot):
    """(ids, labels) of prompt + reply built token-wise, independently of litft: the prompt (with the generation
    prompt) untrained, then exactly tokenize(reply + end-of-turn) trained, then what the template adds after it."""
    prompt = _chat_ids(tok, prompt_messages, add_generation_prompt=True)
    full = _chat_ids(tok, prompt_messages + [{"role": "assistant", "content": reply}])
    piece = tok(reply + eot, add_special_tokens=False)["input_ids"]
    assert full[: len(prompt)] == prompt and full[len(prompt) : len(prompt) + len(piece)] == piece
    return full, [IGNORE_INDEX] * len(prompt) + piece + [IGNORE_INDEX] * (len(full) - len(prompt) - len(piece))


def _dm(dataset, tok, **kw):
    return LitFTDataModule(dataset=str(dataset), tokenizer=tok, **{"cutoff_len": 1 << 16, **kw})


def _write(path, records):
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


# ------------------------------------------------------------------ LLaMA-Factory's layouts, exact rows
def test_dpo_en_demo_rows_are_exact(tiny_qwen2, toks, lf_data):
    """sharegpt ranking (LLaMA-Factory's dpo_en_demo): each row = the chat template of prompt + reply, the prompt
    ids shared by chosen and rejected, trained = reply + <|im_end|> (its newline not), identical to the SFT path."""
    dm = _dm("dpo_en_demo", tiny_qwen2, kind="preference", dataset_dir=str(lf_data), max_samples=25)
    dm.setup()
    raw = json.loads((lf_data / "dpo_en_demo.json").read_text(encoding="utf-8"))[:25]
    assert dm.stats.kind == "preference" and dm.stats.samples == len(dm.train_rows) == 25 and dm.stats.identical == 0
    tok = toks["qwen2"]
    for rec, row in zip(raw, dm.train_rows):
        prompt = [{"role": ROLES[m["from"]], "content": m["value"]} for m in rec["conversations"]]
        chosen = _expected(tok, prompt, rec["chosen"]["value"], EOT["qwen2"])
        rejected = _expected(tok, prompt, rec["rejected"]["value"], EOT["qwen2"])
        assert (row["chosen_input_ids"], row["chosen_labels"]) == chosen
        assert (row["rejected_input_ids"], row["rejected_labels"]) == rejected
        p = len(_chat_ids(tok, prompt, add_generation_prompt=True))
        assert row["chosen_input_ids"][:p] == row["rejected_input_ids"][:p]
        assert row["length"] == max(len(chosen[0]), len(rejected[0])) and row["num_targets"] == 1
    assert dm.stats.trained_tokens == sum(
        sum(x != IGNORE_INDEX for x in r[f"{s}_labels"]) for r in dm.train_rows for s in ("chosen", "rejected"))


ALPACA_PAIRS = [
    {"instruction": "What is 2 plus 2?", "input": "Answer with a number.", "chosen": "4", "rejected": "5",
     "system": "You are a calculator.", "history": [["hi", "Hello!"]]},
    {"instruction": "Say hello.", "chosen": "Hello! How can I help you today?", "rejected": "No."},
]


def _alpaca_registry(tmp_path, records=ALPACA_PAIRS):
    _write(tmp_path / "pairs.json", records)
    info = {"pairs": {"file_name": "pairs.json", "ranking": True,
                      "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected",
                                  "system": "system", "history": "history"}}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    return str(tmp_path)


def test_alpaca_ranking_rows_are_exact(tmp_path, tiny_llama, toks):
    """alpaca ranking with system, history and input (Llama-3-style template: BOS, <|eot_id|>): the history reply is
    prompt (untrained), only the chosen / rejected reply + <|eot_id|> is trained."""
    dm = _dm("pairs", tiny_llama, kind="preference", dataset_dir=_alpaca_registry(tmp_path))
    dm.setup()
    tok = toks["llama"]
    prompts = [
        [{"role": "system", "content": "You are a calculator."}, {"role": "user", "content": "hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "What is 2 plus 2?\nAnswer with a number."}],
        [{"role": "user", "content": "Say hello."}],
    ]
    assert len(dm.train_rows) == 2
    for rec, prompt, row in zip(ALPACA_PAIRS, prompts, dm.train_rows):
        for side in ("chosen", "rejected"):
            ids, labels = _expected(tok, prompt, rec[side], EOT["llama"])
            assert row[f"{side}_input_ids"] == ids and row[f"{side}_labels"] == labels
            assert ids[0] == tok.bos_token_id and labels[-1] == tok.convert_tokens_to_ids("<|eot_id|>")


# ------------------------------------------------------------------ TRL's formats
PROMPT = [{"role": "user", "content": "What color is the sky?"}]
BLUE = {"role": "assistant", "content": "It is blue."}
GREEN = {"role": "assistant", "content": "It is green."}


@pytest.mark.parametrize("record", [
    {"prompt": "What color is the sky?", "chosen": "It is blue.", "rejected": "It is green."},
    {"prompt": PROMPT, "chosen": [BLUE], "rejected": [GREEN]},
    {"chosen": PROMPT + [BLUE], "rejected": PROMPT + [GREEN]},
], ids=["standard", "conversational", "implicit-prompt"])
def test_trl_preference_formats_give_the_same_pairs_and_rows(tmp_path, tiny_qwen2, toks, record):
    """TRL's standard, conversational and implicit-prompt preference records are one pair; a bare file of them is
    recognised (format trl, kind preference) and gives the rows of the equivalent alpaca ranking record."""
    want = Preference(Conversation(turns=[Turn("user", "What color is the sky?")]), Turn("assistant", "It is blue."),
                      Turn("assistant", "It is green."))
    assert trl(record, kind="preference") == want
    dm = _dm(_write(tmp_path / "trl.jsonl", [record]), tiny_qwen2, kind="preference")
    dm.setup()
    ids, labels = _expected(toks["qwen2"], PROMPT, "It is blue.", EOT["qwen2"])
    assert dm.train_rows[0]["chosen_input_ids"] == ids and dm.train_rows[0]["chosen_labels"] == labels
    assert dm.train_rows[0]["rejected_labels"] == _expected(toks["qwen2"], PROMPT, "It is green.", EOT["qwen2"])[1]


def test_trl_implicit_prompt_keeps_system_and_history():
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Sky?"}]
    pair = trl({"chosen": chat + [BLUE], "rejected": chat + [GREEN]}, kind="preference")
    assert pair.prompt == Conversation(turns=[Turn("user", "hi"), Turn("assistant", "Hello!"), Turn("user", "Sky?")], system="Be brief.")
    assert (pair.chosen.content, pair.rejected.content) == ("It is blue.", "It is green.")


@pytest.mark.parametrize("record", [
    {"prompt": "What color is the sky?", "completion": "It is blue.", "label": False},
    {"prompt": PROMPT, "completion": [BLUE], "label": False},
], ids=["standard", "conversational"])
def test_trl_unpaired_rows(tmp_path, tiny_qwen2, toks, record):
    assert trl(record, kind="feedback") == Feedback(Conversation(turns=[Turn("user", "What color is the sky?")]),
                                                    Turn("assistant", "It is blue."), False)
    dm = _dm(_write(tmp_path / "kto.jsonl", [record, {**record, "label": True}]), tiny_qwen2, kind="feedback")
    dm.setup()
    ids, labels = _expected(toks["qwen2"], PROMPT, "It is blue.", EOT["qwen2"])
    p = len(_chat_ids(toks["qwen2"], PROMPT, add_generation_prompt=True))
    assert [dict(r) for r in dm.train_rows] == [
        {"input_ids": ids, "labels": labels, "label": label, "prompt_length": p, "length": len(ids), "num_targets": 1}
        for label in (False, True)
    ]
    assert (dm.stats.samples, dm.stats.desirable) == (2, 1)


def test_kto_en_demo(tiny_qwen2, toks, lf_data):
    """kto_tag (LLaMA-Factory's kto_en_demo, sharegpt with role/content tags): the last assistant message is the
    judged reply, the label the kto_tag column."""
    dm = _dm("kto_en_demo", tiny_qwen2, kind="feedback", dataset_dir=str(lf_data), max_samples=20)
    dm.setup()
    raw = json.loads((lf_data / "kto_en_demo.json").read_text(encoding="utf-8"))[:20]
    assert dm.stats.desirable == sum(r["label"] for r in raw) and dm.stats.samples == 20
    for rec, row in zip(raw, dm.train_rows):
        msgs = rec["messages"]
        ids, labels = _expected(toks["qwen2"], msgs[:-1], msgs[-1]["content"], EOT["qwen2"])
        assert (row["input_ids"], row["labels"], row["label"]) == (ids, labels, rec["label"])
        assert row["prompt_length"] == len(_chat_ids(toks["qwen2"], msgs[:-1], add_generation_prompt=True))


# ------------------------------------------------------------------ truncation, identical pairs
def test_budget_is_llamafactory_split():
    assert budget(10, 20, 100) == (10, 20)  # fits
    assert budget(300, 20, 100) == (80, 20)  # short replies stay whole, the prompt is cut
    assert budget(30, 300, 100) == (30, 70)  # short prompt stays whole, the replies are cut
    assert budget(300, 100, 100) == (75, 25)  # both long: in proportion (int(100 * 100 / 400) = 25)


def test_pairs_truncate_the_prompt_start_alike_and_count_identical(toks):
    tok = toks["qwen2"]
    long_prompt = Conversation(turns=[Turn("user", "The quick brown fox jumps over the lazy dog. " * 8)])
    pairs = [
        Preference(long_prompt, Turn("assistant", "Paris."), Turn("assistant", "Lyon.")),
        Preference(Conversation(turns=[Turn("user", "hi")]), Turn("assistant", "Same."), Turn("assistant", "Same.")),
        # replies differing only beyond the cut: identical rows once truncated
        Preference(long_prompt, Turn("assistant", "Paris " * 40 + "A"), Turn("assistant", "Paris " * 40 + "B")),
    ]
    stats = Stats(kind="preference")
    rows = encode_pairs(pairs, tok, template=None, cutoff_len=48, stats=stats)
    assert (stats.samples, stats.identical, stats.truncated, stats.dropped) == (1, 2, 1, 0)
    prompt = pairs[0].prompt.messages()
    full = {side: _expected(tok, prompt, getattr(pairs[0], side).content, EOT["qwen2"]) for side in ("chosen", "rejected")}
    p = len(_chat_ids(tok, prompt, add_generation_prompt=True))
    longest_reply = max(len(ids) for ids, _ in full.values()) - p
    assert p > 48 and 2 * longest_reply < 48  # short replies: kept whole, the prompt keeps its last 48 - R tokens
    keep = 48 - longest_reply
    for side, (ids, labels) in full.items():
        assert rows[0][f"{side}_input_ids"] == ids[p - keep :] and rows[0][f"{side}_labels"] == labels[p - keep :]
    assert rows[0]["chosen_input_ids"][:keep] == rows[0]["rejected_input_ids"][:keep]


def test_identical_pairs_are_counted_dropped_and_warned(tmp_path, tiny_qwen2, caplog):
    records = ALPACA_PAIRS + [{"instruction": "Same?", "chosen": "Yes.", "rejected": "Yes."}]
    dm = _dm("pairs", tiny_qwen2, kind="preference", dataset_dir=_alpaca_registry(tmp_path, records))
    with caplog.at_level("WARNING", logger="litft.data.datamodule"):
        dm.setup()
    assert (dm.stats.records, dm.stats.samples, dm.stats.identical, len(dm.train_rows)) == (3, 2, 1, 2)
    assert "1 preference pair(s) have chosen == rejected" in caplog.text


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("fn,record,kind,field,message", [
    (alpaca, {"instruction": "q", "chosen": "a"}, "preference", "rejected", "missing required column"),
    (alpaca, {"instruction": "q", "chosen": " ", "rejected": "b"}, "preference", "chosen", "empty response"),
    (alpaca, {"instruction": "q", "chosen": ["a"], "rejected": "b"}, "preference", "chosen", "expected a string, got list"),
    (alpaca, {"instruction": "q", "output": "a", "label": "yes"}, "feedback", "label", "expected true or false, got str"),
    (sharegpt, {"conversations": [{"from": "human", "value": "q"}], "chosen": "a", "rejected": {"from": "gpt", "value": "b"}},
     "preference", "chosen", "expected one message {from, value}, got str"),
    (sharegpt, {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": ""},
                "rejected": {"from": "gpt", "value": "b"}}, "preference", "chosen.value", "empty response"),
    (sharegpt, {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "human", "value": "a"},
                "rejected": {"from": "gpt", "value": "b"}}, "preference", "chosen.from", "a reply must be gpt/function_call"),
    (sharegpt, {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "chosen": {"from": "gpt", "value": "a"},
                "rejected": {"from": "gpt", "value": "b"}}, "preference", "conversations", "the prompt must end with a human/observation turn"),
    (sharegpt, {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "feedback", "label", "missing required column"),
    (trl, {"chosen": "It is blue.", "rejected": "It is green."}, "preference", "chosen", "an implicit prompt needs conversational"),
    (trl, {"prompt": PROMPT, "chosen": [BLUE, BLUE], "rejected": [GREEN]}, "preference", "chosen", "expected one assistant message, got 2"),
    (trl, {"prompt": PROMPT, "chosen": [BLUE], "rejected": [{"role": "assistant", "content": ""}]}, "preference", "rejected[0].content",
     "empty response"),
    (trl, {"chosen": PROMPT + [BLUE], "rejected": [{"role": "user", "content": "Other?"}, GREEN]}, "preference", "chosen",
     "implicit prompt: 0 turn"),
    (trl, {"prompt": "p", "completion": "c", "label": 1}, "feedback", "label", "expected true or false, got int"),
])
def test_bad_preference_records_name_the_field(fn, record, kind, field, message):
    with pytest.raises(RecordError, match=message) as exc:
        fn(record, kind=kind)
    assert exc.value.field == field


def test_data_errors_name_file_record_field(tmp_path, tiny_qwen2):
    ddir = _alpaca_registry(tmp_path, ALPACA_PAIRS + [{"instruction": "q", "chosen": "a"}])
    with pytest.raises(DataError, match=rf"^{tmp_path / 'pairs.json'}, record 2, field 'rejected': missing required column$"):
        _dm("pairs", tiny_qwen2, kind="preference", dataset_dir=ddir).setup()


def test_kinds_must_agree(tmp_path, tiny_qwen2):
    sft = _write(tmp_path / "sft.json", [{"instruction": "q", "output": "a"}])
    ddir = _alpaca_registry(tmp_path)
    with pytest.raises(LitFTError, match=r"^data: the datasets mix kinds of data: '.*sft\.json' is SFT data \(conversations\), "
                                         r"'pairs' is preference data \(ranking: true\); "):
        _dm(f"{sft},pairs", tiny_qwen2, kind="preference", dataset_dir=ddir).setup()
    with pytest.raises(LitFTError, match=r"^dataset '.*sft\.json': SFT data \(conversations\) needs model\.method: sft "
                                         r"\(this run's model\.method is dpo, orpo or simpo\)$"):
        _dm(sft, tiny_qwen2, kind="preference").setup()
    with pytest.raises(LitFTError, match=r"^data\.packing is not supported for preference data"):
        _dm(sft, tiny_qwen2, kind="preference", packing=True)
    with pytest.raises(LitFTError, match=r"^data: the datasets mix kinds of data: .*\(data\.dataset and data\.eval_dataset\)"):
        _dm("pairs", tiny_qwen2, kind="preference", dataset_dir=ddir, eval_dataset=str(sft)).setup()


# ------------------------------------------------------------------ batches
def test_pair_collator_layout():
    rows = [
        {"chosen_input_ids": [1, 2, 3], "chosen_labels": [-100, 2, 3], "rejected_input_ids": [1, 2, 4, 5], "rejected_labels": [-100, 2, 4, 5]},
        {"chosen_input_ids": [6, 7], "chosen_labels": [-100, 7], "rejected_input_ids": [6, 8], "rejected_labels": [-100, 8]},
    ]
    batch = PairCollator(0)(rows)
    assert set(batch) == {"input_ids", "labels", "attention_mask", "num_pairs"}
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [6, 7, 0, 0], [1, 2, 4, 5], [6, 8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100], [-100, 7, -100, -100], [-100, 2, 4, 5], [-100, 8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert int(batch["num_pairs"]) == 2
    assert PairCollator(0, pad_to_multiple_of=8)(rows)["input_ids"].shape == (4, 8)


def test_feedback_collator_layout_and_kl_rows():
    rows = [
        {"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4], "label": True, "prompt_length": 2},
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "label": False, "prompt_length": 1},
        {"input_ids": [8, 9], "labels": [-100, 9], "label": True, "prompt_length": 1},
    ]
    batch = FeedbackCollator(0, max_length=4)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 0], [8, 9, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 3, 4], [-100, 6, 7, -100], [-100, 9, -100, -100]]
    assert batch["label"].tolist() == [True, False, True] and batch["label"].dtype == torch.bool
    # KL row i: prompt of i + reply of i - 1 (row 0 takes the last row's reply), cut to max_length
    assert batch["kl_input_ids"].tolist() == [[1, 2, 9], [5, 3, 4], [8, 6, 7]]
    assert batch["kl_labels"].tolist() == [[-100, -100, 9], [-100, 3, 4], [-100, 6, 7]]
    assert batch["kl_attention_mask"].tolist() == [[1, 1, 1]] * 3
    cut = FeedbackCollator(0, max_length=3)(rows[:2])  # row 0: prompt [1, 2] + reply [6, 7], cut to 3 tokens
    assert cut["kl_input_ids"].tolist() == [[1, 2, 6], [5, 3, 4]] and cut["kl_labels"].tolist() == [[-100, -100, 6], [-100, 3, 4]]
    assert "kl_input_ids" not in FeedbackCollator(0, kl=False)(rows)


def test_loader_batches_count_pairs(tmp_path, tiny_qwen2):
    records = [{"instruction": f"What is {i} plus {i}?", "chosen": str(2 * i), "rejected": str(2 * i + 1)} for i in range(10)]
    dm = _dm("pairs", tiny_qwen2, kind="preference", dataset_dir=_alpaca_registry(tmp_path, records), batch_size=3, val_size=2)
    dm.setup("fit")
    assert len(dm.train_rows) == 8 and len(dm.val_rows) == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 6 and int(batch["num_pairs"]) == 3
    assert int(batch["num_target_tokens"]) == 3  # pairs in the optimizer step (accumulation 1, one rank)
    val = next(iter(dm.val_dataloader()))
    assert val["input_ids"].shape[0] == 4 and int(val["num_pairs"]) == 2


# ------------------------------------------------------------------ prepare --preview, cache
def test_prepare_previews_pairs_and_reuses_the_cache(tmp_path, tiny_qwen2, capsys):
    from litft.cli import run

    records = ALPACA_PAIRS + [{"instruction": "Same?", "chosen": "Yes.", "rejected": "Yes."}]
    cfg = {"output_dir": str(tmp_path / "out"), "model": {"name_or_path": tiny_qwen2, "method": "dpo"},
           "data": {"dataset": "pairs", "dataset_dir": _alpaca_registry(tmp_path, records), "cutoff_len": 256}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert run(["prepare", "--config", str(path), "--preview", "1"]) == 0
    out = capsys.readouterr().out
    assert "cache: wrote" in out and "kind: preference" in out and "pairs: 2" in out
    assert "identical (chosen == rejected, dropped): 1" in out
    assert out.count("--- pair ") == 1
    chosen = out[out.index("[chosen]") : out.index("[rejected]")]
    rejected = out[out.index("[rejected]") :]
    # the history reply is not marked, the chosen / rejected reply and its end-of-turn are
    assert "Hello!<|im_end|>" in chosen and "«Hello!" not in chosen and "«4<|im_end|>»" in chosen
    assert "«5<|im_end|>»" in rejected
    assert run(["prepare", "--config", str(path)]) == 0
    assert "cache: reused" in capsys.readouterr().out


def test_cache_key_includes_the_kind(tmp_path, tiny_qwen2):
    data = _write(tmp_path / "x.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "completion": "c", "label": True}])
    keys = {kind: _dm(data, tiny_qwen2, kind=kind).cache_path() for kind in ("sft", "preference", "feedback")}
    assert len(set(keys.values())) == 3


@pytest.mark.parametrize("record,want", [
    ({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}},
     ("sharegpt", {}, "preference")),
    ({"instruction": "q", "chosen": "a", "rejected": "b"}, ("alpaca", {}, "preference")),
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, ("trl", {}, "preference")),
    ({"chosen": PROMPT + [BLUE], "rejected": PROMPT + [GREEN]}, ("trl", {}, "preference")),
    ({"prompt": "q", "completion": "a", "label": True}, ("trl", {}, "feedback")),
    ({"messages": PROMPT + [BLUE], "label": False}, ("openai", {"kto_tag": "label"}, "feedback")),
    ({"prompt": "q", "completion": "a"}, ("trl", {}, "sft")),
    ({"instruction": "q", "output": "a", "label": True}, ("alpaca", {}, "sft")),  # a label beside alpaca fields: not KTO
])
def test_bare_files_guess_format_and_kind(record, want):
    from litft.data.formats import guess_format, guess_kind

    assert (*guess_format(record), guess_kind(record)) == want


def test_feedback_preview_marks_the_reply_and_shows_the_label(toks, capsys):
    from litft.commands.prepare import _preview_row

    tok = toks["qwen2"]
    [row] = encode_feedback([Feedback(Conversation(turns=[Turn("user", "Sky?")]), Turn("assistant", "Blue."), False)], tok,
                            template=None, cutoff_len=64)
    _preview_row(tok, 0, row)
    out = capsys.readouterr().out
    assert out.startswith(f"\n--- example 0 (undesirable; {len(row['input_ids'])} tokens, ")
    assert "<|im_start|>user\nSky?<|im_end|>\n<|im_start|>assistant\n«Blue.<|im_end|>»\n" in out
