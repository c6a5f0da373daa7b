"""The data-file reader: records come one at a time, errors when reading reaches them, memory stays flat; every
malformed or damaged file ends in litft's one-line error (fuzzed), never a traceback."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litft.data import reader
from litft.data.reader import iter_file
from litft.data.records import iter_conversations
from litft.data.registry import DatasetEntry
from litft.data.stats import Stats
from litft.errors import DataError, LitFTError
from tests.damaged_data import write_corpus

RECORDS = [{"instruction": f"q{i} caf\u00e9 \u2603", "input": "" if i % 3 else "ctx\r\nline", "output": f"a{i}" * (i % 7 + 1),
            "n": i * 1.5e3, "big": 10**30 + i} for i in range(300)]


class _Counting:
    """Counts the bytes iter_file has read from disk so far."""

    def __init__(self, monkeypatch):
        self.bytes = 0
        read = reader._Text._read

        def counted(text, size):
            piece = read(text, size)
            self.bytes += len(piece.encode())
            return piece

        monkeypatch.setattr(reader._Text, "_read", counted)


def _write_array(path, records, tail=""):
    path.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + tail + "\n]\n", encoding="utf-8")


@pytest.mark.parametrize("kind", ["json", "jsonl", "csv", "txt"])
def test_records_come_one_at_a_time(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(reader, "_CHUNK", 4096)
    records = RECORDS * 20  # ~0.5 MB
    path = tmp_path / f"big.{kind}"
    if kind == "json":
        _write_array(path, records)
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif kind == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(records[0]))
            w.writeheader()
            w.writerows(records)
    else:
        path.write_text("".join(r["instruction"] * 9 + "\n" for r in records), encoding="utf-8")
    read = _Counting(monkeypatch)
    it = iter_file(path)
    assert isinstance(it, Iterator) and read.bytes == 0  # nothing read before the first record is asked for
    first = next(it)
    assert read.bytes <= 3 * 4096 < path.stat().st_size / 20  # a chunk or so, not the file
    assert sum(1 for _ in it) + 1 == len(records) and read.bytes == path.stat().st_size
    if kind == "json":
        assert first == records[0]


@pytest.mark.parametrize("kind", ["json", "jsonl"])
def test_a_late_malformed_record_raises_only_when_reached(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(reader, "_CHUNK", 4096)
    records = RECORDS * 10
    path = tmp_path / f"x.{kind}"
    if kind == "json":
        _write_array(path, records, tail=',\n{"instruction": "late", "output": }')
        expected = rf"x\.json, record {len(records)}: malformed JSON \(Expecting value at line {len(records) + 2} column 35\)"
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"instruction": "late", \n', encoding="utf-8")
        expected = rf"x\.jsonl, record {len(records)}: malformed JSON on line {len(records) + 1}: "
    convs = iter_conversations(DatasetEntry(name="x", file_name=str(path)))
    got = 0
    with pytest.raises(DataError, match=expected):
        for _ in convs:
            got += 1
    assert got == len(records)  # every good record came out before the error


def test_streamed_records_equal_whole_file_parsing(tmp_path, monkeypatch):
    # Chunk sizes down to one byte cut multi-byte characters, "\r\n", numbers ("1.5" | "e3") and strings apart.
    array = tmp_path / "a.json"
    _write_array(array, RECORDS)
    array.write_bytes(b"\xef\xbb\xbf" + array.read_bytes().replace(b"\n", b"\r\n"))
    lines = tmp_path / "l.jsonl"
    lines.write_text("\n\n".join(json.dumps(r, ensure_ascii=False) for r in RECORDS[:50]) + "\n", encoding="utf-8")
    columns = tmp_path / "c.json"
    columns.write_text(json.dumps({k: [r[k] for r in RECORDS[:50]] for k in RECORDS[0]}, indent=1))
    table = tmp_path / "t.csv"
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=["instruction", "input", "output"], extrasaction="ignore").writerows(RECORDS[:50])
    table.write_text("instruction,input,output\r\n" + buf.getvalue(), encoding="utf-8")
    want_csv = [{k: (str(r[k]) if r[k] != "" else None) for k in ("instruction", "input", "output")} for r in RECORDS[:50]]
    for chunk in (1, 2, 3, 7, 64, 1 << 20):
        monkeypatch.setattr(reader, "_CHUNK", chunk)
        assert list(iter_file(array)) == RECORDS
        assert list(iter_file(lines)) == RECORDS[:50]
        assert list(iter_file(columns)) == RECORDS[:50]
        assert list(iter_file(table)) == want_csv


def test_error_positions_do_not_depend_on_chunks(tmp_path, monkeypatch):
    cases = {
        "a.json": '[{"instruction": "a", "output": "b"},\n {"instruction": "c\u00e9", "output": 1.5e}]',
        "b.json": '[{"a": 1}\n  {"b": 2}]',
        "c.json": '[{"a": 1}]\n\n   x',
        "d.json": b'[{"instruction": "a"},\n {"instruction": "caf\xe9"}]',
        "e.jsonl": '{"a": 1}\r\n\r\n{"b": \n',
        "f.json": '[{"a": "unterminated\n"}]',
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        messages = set()
        for chunk in (1, 2, 5, 64, 1 << 20):
            monkeypatch.setattr(reader, "_CHUNK", chunk)
            with pytest.raises(DataError) as err:
                list(iter_file(path))
            messages.add(str(err.value))
        assert len(messages) == 1, messages
    assert messages == {f"{tmp_path / 'f.json'}, record 0: malformed JSON (Invalid control character at at line 1 column 21)"}


def test_skipped_lines_are_counted_after_the_file(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join([json.dumps({"instruction": "a", "output": "b"}), "{broken", "[1,", json.dumps({"instruction": "c", "output": "d"})]))
    stats = Stats()
    convs = list(iter_conversations(DatasetEntry(name="x", file_name=str(path)), on_bad_record="skip", stats=stats))
    assert len(convs) == 2 and stats.records == 4 and stats.skipped == 2
    bad: list[int] = []
    assert len(list(iter_file(path, bad))) == 2 and bad == [1, 2]


def test_reading_memory_does_not_grow_with_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "_CHUNK", 1 << 16)
    path = tmp_path / "big.json"
    _write_array(path, RECORDS * 40)  # ~1 MB of JSON, ~12k records
    tracemalloc.start()
    try:
        n = sum(1 for _ in iter_file(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == len(RECORDS) * 40
    assert peak < path.stat().st_size / 4  # a few chunks' worth; reading the file whole took several times its size


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzz_file_reader_only_raises_data_errors(tmp_path, data):
    for name in ("f.json", "f.jsonl"):
        path = Path(tmp_path) / name
        path.write_bytes(data)
        try:
            out = list(iter_file(path))
        except DataError as err:
            assert "\n" not in str(err)
            continue
        assert isinstance(out, list)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _named(path: Path, message: str) -> str:
    """A DataError's text: the file, then ", record N..." or ": message"."""
    return f"{path}, {message}" if message.startswith(("record", "field")) else f"{path}: {message}"


def test_nesting_deeper_than_the_limit_is_one_line_at_its_position(tmp_path, monkeypatch):
    limit = reader.MAX_DEPTH
    ok = {"instruction": "q", "output": "a", "meta": json.loads(_deep(limit - 1)), "s": "[" * 500}  # brackets in a string do not count
    (tmp_path / "ok.json").write_text("[" + json.dumps(ok) + "]")
    (tmp_path / "ok.jsonl").write_text(json.dumps(ok) + "\n")
    assert list(iter_file(tmp_path / "ok.json")) == [ok] and list(iter_file(tmp_path / "ok.jsonl")) == [ok]
    line = '{"instruction": "q", "meta": '  # the record's object is a level: its limit-th "[" is one too deep
    cases = {  # one level too deep, 5,000 deep (Python's parser: RecursionError), as an array, lines, one object
        "a.json": ('[{"a": 1},\n' + line + _deep(limit) + "}]",
                   f"record 1: malformed JSON (nested deeper than {limit} levels at line 2 column {len(line) + limit})"),
        "b.json": (_deep(5000), f"record 0: malformed JSON (nested deeper than {limit} levels at line 1 column {limit + 2})"),
        "c.jsonl": ('{"a": 1}\n' + _deep(5000) + "\n",
                    f"record 1: malformed JSON on line 2: nested deeper than {limit} levels: line 1 column {limit + 1} (char {limit})"),
        "d.json": ('{"a": ' * 5000 + "1" + "}" * 5000,
                   f"malformed JSON (nested deeper than {limit} levels at line 1 column {6 * limit + 1})"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        for chunk in (7, 1 << 20):  # the same message whatever the reads cut
            monkeypatch.setattr(reader, "_CHUNK", chunk)
            with pytest.raises(DataError) as err:
                list(iter_file(tmp_path / name))
            assert str(err.value) == _named(tmp_path / name, message)
    bad: list[int] = []  # data.on_bad_record: skip skips a too deep JSON line like a malformed one
    assert list(iter_file(tmp_path / "c.jsonl", bad)) == [{"a": 1}] and bad == [1]


def test_lone_surrogates_and_huge_integers_are_one_line(tmp_path):
    pair = {"instruction": "\U0001F600 \\ud800 as text", "output": "a"}
    (tmp_path / "pair.json").write_text(json.dumps([pair]))  # ensure_ascii: "\ud83d\ude00" and "\\ud800"
    assert list(iter_file(tmp_path / "pair.json")) == [pair]
    cases = {
        "a.json": ('[{"a": 1}, {"messages": [{"content": "ok"}, {"content": "x\\udc00"}]}]',
                   "record 1, field 'messages[1].content': not Unicode text: a lone surrogate escape"),
        "b.jsonl": ('{"a": 1}\n{"output": "\\ud83d x"}\n', "record 1, field 'output': not Unicode text"),
        "c.json": ('{"\\ud800": 1}', "field '<key>': not Unicode text"),
        "d.json": ('[{"n": ' + "9" * 5000 + "}]", "record 0: malformed JSON (an integer of more than 4300 digits at line 1 column 2)"),
        "e.jsonl": ('{"n": -' + "9" * 5000 + "}", "record 0: malformed JSON on line 1: an integer of more than 4300 digits"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError) as err:
            list(iter_file(tmp_path / name))
        assert str(err.value).startswith(_named(tmp_path / name, message)), str(err.value)
        str(err.value).encode("utf-8")  # printable: the message itself holds no surrogate
    bad: list[int] = []
    assert list(iter_file(tmp_path / "b.jsonl", bad)) == [{"a": 1}] and bad == [1]


def test_csv_and_arrow_damage_is_one_line(tmp_path):
    big = tmp_path / "big.csv"
    big.write_text('instruction,output\na,b\nc,"' + "x" * (csv.field_size_limit() + 1) + '"\n')
    with pytest.raises(DataError, match=rf"big\.csv, record 1: malformed CSV on line 3: field larger than field limit"):
        list(iter_file(big))
    arrow = tmp_path / "bad.arrow"
    arrow.write_bytes(b"not an arrow stream" * 4)
    with pytest.raises(DataError, match=r"bad\.arrow: cannot read arrow file: "):
        list(iter_file(arrow))


def test_fuzz_damaged_files_end_in_one_line_errors(tmp_path):
    """300 seeded files (tests/damaged_data.py): malformed alpaca / ShareGPT / OpenAI records, half also damaged as
    bytes. Read, format and write to Arrow as ``prepare`` does, with ``on_bad_record`` error and skip: each file
    gives conversations or litft's one-line error naming it; any other exception (a traceback) fails the test."""
    from litft.data.pipeline import write_conversations

    tracebacks, messages, accepted = [], [], 0
    for path in write_corpus(tmp_path / "corpus", 300, seed=21):
        for mode in ("error", "skip"):
            try:
                convs = list(iter_conversations(DatasetEntry(name=path.name, file_name=str(path), formatting="auto"), on_bad_record=mode))
                write_conversations(convs, tmp_path / "c.arrow")
                accepted += 1
            except LitFTError as err:
                assert "\n" not in str(err) and str(err).startswith(str(path)), str(err)
                str(err).encode("utf-8")
                messages.append(str(err))
            except Exception as err:  # noqa: BLE001 - the point: anything not litft's own error is a failure
                tracebacks.append(f"{path.name} ({mode}): {type(err).__name__}: {str(err)[:100]}")
    assert not tracebacks, f"{len(tracebacks)} of 600 reads ended in a traceback:\n" + "\n".join(tracebacks[:20])
    # the corpus reaches what it is meant to: good files, deep nesting, lone surrogates, long numbers, bad UTF-8
    text = "\n".join(messages)
    assert accepted >= 50 and all(key in text for key in ("nested deeper than", "lone surrogate", "integer of more than",
                                                          "not UTF-8", "malformed JSON", "empty file", "record"))
