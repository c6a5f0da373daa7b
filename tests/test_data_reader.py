"""Files are read as a stream: records come one at a time, errors when reading reaches them, memory stays flat."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from collections.abc import Iterator

import pytest

from litft.data import reader
from litft.data.reader import iter_file
from litft.data.records import iter_conversations
from litft.data.registry import DatasetEntry
from litft.data.stats import Stats
from litft.errors import DataError

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
