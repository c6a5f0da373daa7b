"""Reading data files: records streamed one at a time from JSON (an array, an object of column lists, or JSON
lines), CSV, plain text and Arrow / Parquet files, never holding a file whole.

:func:`data_files` lists the files at a path, :func:`iter_file` yields the raw records of one file. Every problem
with a file's bytes (not UTF-8, empty, malformed JSON) is a one-line :class:`~litft.errors.DataError` naming
the file and, where there is one, the record and the line and column, raised when reading reaches it.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from litft.errors import DataError

FILE_TYPES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text", ".arrow": "arrow"}
"""File suffix → how it is read."""


def data_files(path: Path) -> list[Path]:
    """The data files at ``path``: the file itself, or a folder's files of known types (sorted)."""
    if not path.exists():
        raise DataError("no such file or folder", file=str(path))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_TYPES)
        if not files:
            raise DataError(f"folder holds no data files ({', '.join(FILE_TYPES)})", file=str(path))
        return files
    if path.suffix.lower() not in FILE_TYPES:
        raise DataError(f"unsupported file type '{path.suffix}' (expected one of {', '.join(FILE_TYPES)})", file=str(path))
    return [path]


_CHUNK = 1 << 20
"""Bytes read from a data file at a time: files are streamed, never held whole."""
_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # the line boundaries of str.splitlines
_JSON_WS = re.compile(r"[ \t\n\r]*")  # JSON's whitespace (json.decoder's own)
_SPACE = re.compile(r"\s*")  # str.isspace's whitespace (str.strip's)
_CSV_BREAK = re.compile(r"(?<=\n)|(?<=\r)(?!\n)")  # the line ends of io.StringIO(newline=""): \n, \r\n, \r
_NUMBER_TAIL = re.compile(r"[0-9.eE+-]*\Z")
_DECODER = json.JSONDecoder()


class _Text:
    """A UTF-8 file as pieces of text (a leading BOM dropped), read :data:`_CHUNK` bytes at a time.

    A decoding error or a blank file raises the :class:`DataError` reading it whole did ("not UTF-8 (byte N,
    line L)" counted from after the BOM; "empty file") — when reading reaches it."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "rb")
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._fed = 0  # bytes given to the decoder (the BOM not counted)
        self._first = True
        self._back: list[str] = []  # pieces read ahead by first_char

    def __enter__(self) -> "_Text":
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()

    def read(self, size: int = 0) -> str:
        """The next piece of text, of about ``max(size, _CHUNK)`` characters ('' at the end of the file)."""
        if self._back:
            return self._back.pop(0)
        return self._read(size)

    def _read(self, size: int) -> str:
        while True:
            raw = self._f.read(max(size, _CHUNK, len(codecs.BOM_UTF8)))
            end = not raw
            if self._first:
                self._first = False
                if raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
            held = len(self._decoder.getstate()[0])  # the bytes of a character cut by the previous read
            try:
                text = self._decoder.decode(raw, final=end)
            except UnicodeDecodeError as err:
                start = self._fed - held + err.start
                raise DataError(f"not UTF-8 (byte {start}, line {_newlines_before(self.path, start) + 1})", file=str(self.path)) from None
            self._fed += len(raw)
            if text or end:
                return text

    def first_char(self) -> str:
        """The first character that is not whitespace ("empty file" when there is none); nothing is consumed."""
        while True:
            piece = self._read(0)
            if not piece:
                raise DataError("empty file", file=str(self.path))
            self._back.append(piece)
            m = _SPACE.match(piece)
            if m.end() < len(piece):
                return piece[m.end()]


def _newlines_before(path: Path, n: int) -> int:
    count = 0
    with open(path, "rb") as f:
        while n > 0:
            raw = f.read(min(n, _CHUNK))
            if not raw:
                break
            count += raw.count(b"\n")
            n -= len(raw)
    return count


def _lines(text: _Text, csv_ends: bool = False) -> Iterator[str]:
    """The lines of a file as ``str.splitlines`` splits the whole text; ``csv_ends``: split only at "\n", "\r\n"
    and "\r", the line ends kept (as iterating ``io.StringIO(text, newline="")`` gives them to the CSV reader)."""
    breaks = "\r\n" if csv_ends else _BREAKS
    carry = ""
    while True:
        piece = text.read(len(carry))
        whole = carry + piece
        lines = [s for s in _CSV_BREAK.split(whole) if s] if csv_ends else whole.splitlines(True)
        carry = ""
        if piece and lines and (lines[-1][-1] not in breaks or lines[-1][-1] == "\r"):
            carry = lines.pop()  # unfinished, or a "\r" whose "\n" may come next
        for line in lines:
            if csv_ends:
                yield line
            elif line.endswith("\r\n"):
                yield line[:-2]
            else:
                yield line[:-1] if line[-1] in breaks else line
        if not piece:
            return


class _Scanner:
    """A window on a file's text for the JSON array reader: ``buf[pos:]`` is what is left to parse; text before
    ``pos`` is dropped as more is read, its lines and columns counted so positions read as in the whole text."""

    def __init__(self, text: _Text):
        self.text, self.buf, self.pos = text, "", 0
        self.line = 0  # line breaks before buf
        self.col = 0  # characters since the last line break before buf

    def more(self) -> bool:
        piece = self.text.read(len(self.buf) - self.pos)
        if not piece:
            return False
        b, p = self.buf, self.pos
        nl = b.count("\n", 0, p)
        if nl:
            self.line += nl
            self.col = p - b.rfind("\n", 0, p) - 1
        else:
            self.col += p
        self.buf, self.pos = b[p:] + piece, 0
        return True

    def where(self, p: int) -> str:
        """``line L column C`` of position ``p`` of buf in the whole text."""
        line = self.line + self.buf.count("\n", 0, p) + 1
        nl = self.buf.rfind("\n", 0, p)
        return f"line {line} column {p - nl if nl >= 0 else self.col + p + 1}"

    def skip(self, pattern=_JSON_WS) -> str:
        """Skip whitespace; the next character ('' at the end)."""
        while True:
            self.pos = pattern.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def value(self) -> Any:
        """The JSON value at pos (reading more while it may be cut off by the end of what is read so far)."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except ValueError as err:
                at = getattr(err, "pos", None)
                cut = at is None or at >= len(self.buf) - 64 or getattr(err, "msg", "").startswith("Unterminated string")
                if cut and self.more():
                    continue
                raise
            if not isinstance(value, (dict, list, str)) and _NUMBER_TAIL.match(self.buf, end) and self.more():
                continue  # a number ("1.5" of "1.5e3") may go on in the text not read yet
            self.pos = end
            return value


def _iter_json_array(scan: _Scanner, path: Path) -> Iterator[Any]:
    """The records of a JSON array, parsed one at a time, so a syntax error names the record it is in."""
    scan.skip(_SPACE)
    scan.pos += 1  # the "["
    n = 0
    if scan.skip() == "]":
        scan.pos += 1
    else:
        while True:
            try:
                value = scan.value()
            except ValueError as err:
                msg = getattr(err, "msg", str(err))
                raise DataError(f"malformed JSON ({msg} at {scan.where(getattr(err, 'pos', scan.pos))})", file=str(path), record=n) from None
            yield value
            n += 1
            c = scan.skip()
            if c == ",":
                scan.pos += 1
                scan.skip()
                continue
            if c == "]":
                scan.pos += 1
                break
            raise DataError(f"malformed JSON (expected ',' or ']' after the record at {scan.where(scan.pos)})", file=str(path), record=n - 1)
    if scan.skip():
        where = scan.where(scan.pos)  # JSON's whitespace skipped; any other (str.strip's) whitespace is allowed too
        if scan.skip(_SPACE):
            raise DataError(f"malformed JSON (extra data after the list at {where})", file=str(path))


def _one_document(path: Path) -> Any:
    """The file's only JSON value, or None when it is not exactly one (e.g. JSON lines)."""
    with _Text(path) as text:
        scan = _Scanner(text)
        scan.skip()
        try:
            value = scan.value()
        except ValueError:
            return None
        return value if scan.skip() == "" else None


def _read_json(path: Path, bad: list[int] | None = None) -> Iterator[Any]:
    """Records of a JSON list (or an object of column lists) or of JSON lines, one at a time. ``bad``: when
    given, malformed JSON lines are skipped and their record indices appended to it instead of raising."""
    with _Text(path) as text:
        first = text.first_char()
        if first == "[":
            yield from _iter_json_array(_Scanner(text), path)
            return
        if first != "{" or path.suffix.lower() != ".json":
            yield from _iter_json_lines(text, path, bad)
            return
    data = _one_document(path)  # else JSON lines in a .json file
    if isinstance(data, dict):
        if data and all(isinstance(v, list) for v in data.values()):
            yield from _columns_to_rows(data, path)
        else:
            yield data
        return
    with _Text(path) as text:
        yield from _iter_json_lines(text, path, bad)


def _iter_json_lines(text: _Text, path: Path, bad: list[int] | None) -> Iterator[Any]:
    n = 0
    for lineno, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            if bad is not None:
                bad.append(n + len(bad))
                continue
            raise DataError(f"malformed JSON on line {lineno}: {err}", file=str(path), record=n) from None
        n += 1
        yield record


def _columns_to_rows(data: dict[str, list], path: Path) -> list[dict]:
    lengths = {len(v) for v in data.values()}
    if len(lengths) != 1:
        raise DataError("column lists of different lengths", file=str(path))
    keys = list(data)
    return [dict(zip(keys, vals)) for vals in zip(*data.values())]


def iter_dataset(ds, batch_size: int = 1000) -> Iterator[dict]:
    """The rows of a ``datasets.Dataset`` (memory-mapped Arrow) as dicts, read a batch at a time."""
    for batch in ds.iter(batch_size=batch_size):
        keys = list(batch)
        yield from (dict(zip(keys, vals)) for vals in zip(*batch.values()))


def _read_with_datasets(path: Path, kind: str) -> Iterator[dict]:
    import datasets  # heavy (pyarrow, pandas): imported only when an Arrow or Parquet file is read

    if kind == "arrow":
        ds = datasets.Dataset.from_file(str(path))
    else:
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as err:  # noqa: BLE001 - library errors vary; report them in one line
            raise DataError(f"cannot read {kind} file: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=str(path)) from None
    yield from iter_dataset(ds)


def iter_file(path: Path, bad: list[int] | None = None) -> Iterator[Any]:
    """Raw records of one local file, one at a time: the file is read as they are consumed, never whole (``bad``:
    see :func:`_read_json`; errors are raised when reading reaches them)."""
    kind = FILE_TYPES[path.suffix.lower()]
    if kind == "json":
        yield from _read_json(path, bad)
        return
    if kind in ("text", "csv"):
        with _Text(path) as text:
            text.first_char()
            if kind == "text":
                yield from ({"text": line} for line in _lines(text) if line.strip())
                return
            # every cell is text (a numeric answer stays "42"); an empty cell is no value
            rows = csv.DictReader(_lines(text, csv_ends=True))
            yield from ({k: (v if v != "" else None) for k, v in row.items() if k is not None} for row in rows)
            return
    if path.stat().st_size == 0:
        raise DataError("empty file", file=str(path))
    yield from _read_with_datasets(path, kind)
