"""Formats into one Conversation record, the registry (dataset_info.json semantics), and bad input."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litft.data.conversation import KINDS, Conversation, Feedback, Preference, Turn
from litft.data.formats import FORMATS, RecordError, alpaca, dolly, lima, openai, sharegpt, text
from litft.data.registry import resolve
from litft.data.records import conversations
from litft.data.stats import Stats
from litft.errors import DataError, LitFTError


def T(role, content):
    return Turn(role, content)


def test_alpaca_with_input_system_history():
    rec = {"instruction": "Add", "input": "2 and 3", "output": "5", "system": "Be exact.", "history": [["hi", "hello"]]}
    assert alpaca(rec) == Conversation(
        turns=[T("user", "hi"), T("assistant", "hello"), T("user", "Add\n2 and 3"), T("assistant", "5")], system="Be exact."
    )
    renamed = alpaca({"q": "Say hi", "a": "hi"}, columns={"prompt": "q", "response": "a"})
    assert renamed.turns == [T("user", "Say hi"), T("assistant", "hi")]


def test_sharegpt_roles_tools_and_system_turn():
    rec = {
        "conversations": [
            {"from": "system", "value": "sys"},
            {"from": "human", "value": "weather?"},
            {"from": "function_call", "value": '{"name": "w"}'},
            {"from": "observation", "value": "sunny"},
            {"from": "gpt", "value": "It is sunny."},
        ],
        "tools": '[{"name": "w"}]',
    }
    conv = sharegpt(rec)
    assert conv.system == "sys" and conv.tools == '[{"name": "w"}]'
    assert [t.role for t in conv.turns] == ["user", "assistant", "tool", "assistant"]


def test_openai_lima_dolly_text():
    msgs = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
    assert openai(msgs) == Conversation(turns=[T("user", "u"), T("assistant", "a")], system="s")
    assert lima({"conversations": ["q1", "a1", "q2", "a2"]}).turns == [T("user", "q1"), T("assistant", "a1"), T("user", "q2"), T("assistant", "a2")]
    assert dolly({"instruction": "i", "context": "c", "response": "r", "category": "qa"}).turns == [T("user", "i\nc"), T("assistant", "r")]
    assert text({"text": "doc"}) == Conversation(text="doc")


@pytest.mark.parametrize(
    "fn,record,field,message",
    [
        (alpaca, {"instruction": "q"}, "output", "missing required column"),
        (alpaca, {"instruction": ["a"], "output": "x"}, "instruction", "expected a string, got list"),
        (alpaca, {"instruction": "q", "output": "a", "history": [["only one"]]}, "history[0]", "pair"),
        (sharegpt, {"conversations": []}, "conversations", "empty conversation"),
        (sharegpt, {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}, "conversations[0].from", "out of order"),
        (sharegpt, {"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q"}]}, "conversations[1].from", "out of order"),
        (sharegpt, {"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "a"}]}, "conversations[0].value", "got int"),
        (sharegpt, {"conversations": [{"from": "robot", "value": "q"}]}, "conversations[0].from", "unknown role"),
        (sharegpt, {"conversations": "text"}, "conversations", "expected a list"),
        (text, {"text": "  "}, "text", "empty text"),
    ],
)
def test_bad_records_name_the_field(fn, record, field, message):
    with pytest.raises(RecordError, match=message) as exc:
        fn(record)
    assert exc.value.field == field


def _registry(tmp_path, entries, files):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    (tmp_path / "dataset_info.json").write_text(json.dumps(entries))
    return str(tmp_path)


def _convs(dataset, ddir, **kw):
    stats = Stats()
    out = [c for e in resolve(dataset, ddir) for c in conversations(e, stats=stats, **kw)]
    return out, stats


def test_registry_csv_renamed_columns_parquet_folder_and_num_samples(tmp_path):
    import pandas as pd

    (tmp_path / "folder").mkdir()
    pd.DataFrame({"instruction": ["p1", "p2"], "output": ["r1", "r2"]}).to_parquet(tmp_path / "folder" / "part.parquet")
    ddir = _registry(
        tmp_path,
        {
            "c": {"file_name": "d.csv", "columns": {"prompt": "question", "query": "ctx", "response": "answer"}},
            "p": {"file_name": "folder"},
            "s": {"file_name": "s.jsonl", "formatting": "sharegpt", "columns": {"messages": "msgs"},
                  "tags": {"role_tag": "role", "content_tag": "text", "user_tag": "u", "assistant_tag": "a"}},
            "n": {"file_name": "d.csv", "columns": {"prompt": "question", "response": "answer"}, "num_samples": 5},
            "num": {"file_name": "num.csv", "columns": {"prompt": "question", "response": "answer"}},
        },
        {
            "d.csv": "question,ctx,answer\nWhat?,,Yes\nWhy?,Because,No\n",
            "num.csv": "question,answer\n6 x 7?,42\n0.5 + 0.5?,1.0\n",
            "s.jsonl": json.dumps({"msgs": [{"role": "u", "text": "q"}, {"role": "a", "text": "r"}]}) + "\n",
        },
    )
    convs, _ = _convs("c", ddir)
    assert [c.turns for c in convs] == [[T("user", "What?"), T("assistant", "Yes")], [T("user", "Why?\nBecause"), T("assistant", "No")]]
    assert [c.turns[1].content for c in _convs("p", ddir)[0]] == ["r1", "r2"]
    assert _convs("s", ddir)[0][0].turns == [T("user", "q"), T("assistant", "r")]
    assert len(_convs("n", ddir)[0]) == 5  # num_samples larger than the data repeats records
    # CSV cells are text: numeric answers are trained as written
    assert [c.turns[1].content for c in _convs("num", ddir)[0]] == ["42", "1.0"]


def test_bare_file_paths_guess_their_format(tmp_path):
    (tmp_path / "o.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}) + "\n")
    (tmp_path / "l.json").write_text(json.dumps([{"conversations": ["q", "a"]}]))
    (tmp_path / "t.txt").write_text("first doc\n\nsecond doc\n")
    convs, _ = _convs(f"{tmp_path}/o.jsonl,{tmp_path}/l.json,{tmp_path}/t.txt", str(tmp_path / "nowhere"))
    assert [c.turns for c in convs[:2]] == [[T("user", "u"), T("assistant", "a")], [T("user", "q"), T("assistant", "a")]]
    assert [c.text for c in convs[2:]] == ["first doc", "second doc"]


@pytest.mark.parametrize(
    "content,expected",
    [
        ('[{"instruction": "a", "output": "b"},\n {"instruction": "c", "output": }]', r"x\.json, record 1: malformed JSON"),
        ('{"instruction": "a", "output": "b"}\n{"instruction": \n', r"x\.jsonl?, record 1: malformed JSON on line 2"),
        (b'[{"instruction": "caf\xe9", "output": "b"}]', r"x\.json: not UTF-8 \(byte 21, line 1\)"),
        ("", r"x\.json: empty file"),
        ("[]", r"x\.json: no records"),
        ('[{"instruction": "a"}]', r"x\.json, record 0, field 'output': missing required column"),
        ('[{"instruction": "a", "output": "b"}, 7]', r"x\.json, record 1: expected an object, got int"),
    ],
)
def test_bad_files_one_line_naming_file_record_field(tmp_path, content, expected):
    name = "x.jsonl" if "line 2" in expected else "x.json"
    ddir = _registry(tmp_path, {"d": {"file_name": name}}, {name: content})
    with pytest.raises(DataError, match=expected) as exc:
        _convs("d", ddir)
    assert "\n" not in str(exc.value)


def test_skip_bad_records_counts_them(tmp_path):
    lines = [json.dumps({"instruction": "a", "output": "b"}), "{broken", json.dumps({"instruction": 1, "output": "b"}), json.dumps({"instruction": "c", "output": "d"})]
    ddir = _registry(tmp_path, {"d": {"file_name": "x.jsonl"}}, {"x.jsonl": "\n".join(lines)})
    convs, stats = _convs("d", ddir, on_bad_record="skip")
    assert len(convs) == 2 and stats.records == 4 and stats.skipped == 2


def test_a_new_format_is_one_entry_in_FORMATS(tmp_path, monkeypatch):
    def qa(record, **_):
        return Conversation(turns=[T("user", record["q"]), T("assistant", record["a"])])

    ddir = _registry(tmp_path, {"d": {"file_name": "x.json", "formatting": "qa"}}, {"x.json": '[{"q": "1+1", "a": "2"}]'})
    with pytest.raises(DataError, match=r"dataset_info\.json, field 'd\.formatting': unknown formatting 'qa' \(expected one of alpaca, "):
        resolve("d", ddir)
    monkeypatch.setitem(FORMATS, "qa", qa)  # the one edit: the registry and the reader take the format from FORMATS
    assert [c.turns for c in _convs("d", ddir)[0]] == [[T("user", "1+1"), T("assistant", "2")]]


def test_unknown_name_unsupported_entries_and_kinds(tmp_path):
    ddir = _registry(tmp_path, {"r": {"file_name": "x.json", "ranking": True}, "k": {"file_name": "x.json", "columns": {"kto_tag": "label"}},
                                "m": {"file_name": "x.json", "columns": {"images": "images"}},
                                "both": {"file_name": "x.json", "ranking": True, "columns": {"kto_tag": "label"}},
                                "c": {"file_name": "x.json", "columns": {"chosen": "chosen", "rejected": "rejected"}}}, {"x.json": "[]"})
    with pytest.raises(LitFTError, match="unknown dataset 'nope'"):
        resolve("nope", ddir)
    assert [e.kind for e in resolve("r,k", ddir)] == ["preference", "feedback"]
    with pytest.raises(LitFTError, match=r"^dataset 'm' is a multimodal \(images\) dataset: not supported"):
        resolve("m", ddir)
    with pytest.raises(DataError, match=r"field 'both': ranking: true and a kto_tag column"):
        resolve("both", ddir)
    with pytest.raises(DataError, match=r"field 'c': chosen/rejected columns need \"ranking\": true"):
        resolve("c", ddir)


# ---------------------------------------------------------------- fuzzing the parsers
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(["instruction", "input", "output", "system", "history", "conversations", "messages", "from", "value", "role", "content", "text", "context", "response",
                        "chosen", "rejected", "prompt", "completion", "label"])
records = st.dictionaries(keys, json_values | st.lists(st.dictionaries(keys, json_values, max_size=3), max_size=4), max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=records, fmt=st.sampled_from(sorted(FORMATS)), kind=st.sampled_from(KINDS))
def test_fuzz_formats_only_raise_record_errors(record, fmt, kind):
    try:
        out = FORMATS[fmt](record, kind=kind)
    except RecordError as err:
        assert str(err) and "\n" not in str(err)
        return
    if isinstance(out, (Preference, Feedback)):
        replies = [out.chosen, out.rejected] if isinstance(out, Preference) else [out.completion]
        assert all(r.role == "assistant" and isinstance(r.content, str) and r.content.strip() for r in replies)
        assert out.prompt.turns and out.prompt.turns[-1].role != "assistant"
        assert isinstance(out, Preference) or isinstance(out.label, bool)
        return
    assert isinstance(out, Conversation)
    assert all(isinstance(t.content, str) and t.role in ("user", "assistant", "tool") for t in out.turns)
    assert out.text is not None or any(t.role == "assistant" for t in out.turns)
