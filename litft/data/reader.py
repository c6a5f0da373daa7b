"""Reading data files: records streamed one at a time from JSON (an array, an object of column lists, or JSON
lines), CSV, plain text and Arrow / Parquet files, never holding a file whole.

:func:`data_files` lists the files at a path, :func:`iter_file` yields the raw records of one file. Every problem
with a file's bytes is a one-line :class:`~litft.errors.DataError` naming the file and, where there is one, the
record and the line and column, raised when reading reaches it: not UTF-8, empty, malformed JSON or CSV, JSON
nested deeper than :data:`MAX_DEPTH`, a lone surrogate escape ("\\ud800": no Unicode text), an integer Python
will not convert (over ``sys.get_int_max_str_digits()`` digits), an unreadable Arrow or Parquet file.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow

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

MAX_DEPTH = 128
"""Deepest nesting of JSON arrays and objects in one record (a record's own object or array counts as a level).
Python's parser stops near 1,000 with a RecursionError, at a depth that depends on where it is called from;
litft stops here, at a fixed depth, with a DataError."""
_NESTING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')  # a JSON string (skipped whole) or a bracket
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # the only way a (lone) surrogate gets into JSON text
_SURROGATE = re.compile("[\ud800-\udfff]")


class _TooDeep(json.JSONDecodeError):
    """JSON nested deeper than :data:`MAX_DEPTH` (``pos``: the bracket one level too deep)."""

    def __init__(self, doc: str, pos: int):
        super().__init__(f"nested deeper than {MAX_DEPTH} levels", doc, pos)


def _too_deep(s: str, start: int = 0, end: int | None = None) -> int | None:
    """Where in ``s[start:end]`` arrays and objects nest deeper than :data:`MAX_DEPTH` (brackets in strings do not
    count), or None. Text with no more brackets than that is not scanned."""
    end = len(s) if end is None else end
    if s.count("[", start, end) + s.count("{", start, end) <= MAX_DEPTH:
        return None
    depth = 0
    for m in _NESTING.finditer(s, start, end):
        c = s[m.start()]
        if c == "[" or c == "{":
            depth += 1
            if depth > MAX_DEPTH:
                return m.start()
        elif c != '"':
            depth -= 1
    return None


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__


def _decode_message(err: ValueError) -> str:
    """What a JSON parser's error says, in litft's words where Python's are about Python."""
    if isinstance(err, json.JSONDecodeError):
        return err.msg
    if "integer string conversion" in str(err):  # int() refuses more than sys.get_int_max_str_digits() digits
        return f"an integer of more than {sys.get_int_max_str_digits()} digits"
    return _first_line(err)


def _surrogate_field(value: Any, where: str = "") -> str | None:
    """The path (``messages[2].content``) of the first string holding a lone surrogate ("\\ud800" decodes to one,
    but is no Unicode text: UTF-8 cannot encode it), ``<key>`` when it is in a key, or None. Call it only on
    values no deeper than :data:`MAX_DEPTH`."""
    if isinstance(value, str):
        return (where or "<value>") if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            if _SURROGATE.search(k):
                return f"{where}.<key>" if where else "<key>"
            found = _surrogate_field(v, f"{where}.{k}" if where else k)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _surrogate_field(v, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def _check_unicode(value: Any, path: Path, record: int | None) -> None:
    field = _surrogate_field(value)
    if field is not None:
        raise DataError("not Unicode text: a lone surrogate escape (\\ud800-\\udfff without its pair) in a string",
                        file=str(path), record=record, field=field)  # the path's keys hold no surrogate


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
        self.escapes = False  # the last value's text holds a surrogate escape (see _check_unicode)
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
        """The JSON value at pos (reading more while it may be cut off by the end of what is read so far).

        A :class:`json.JSONDecodeError` for malformed JSON (:class:`_TooDeep` for nesting deeper than
        :data:`MAX_DEPTH`), a ValueError for an integer Python will not convert."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except RecursionError:  # the C parser went past Python's recursion limit: far deeper than MAX_DEPTH
                at = _too_deep(self.buf, self.pos)
                raise _TooDeep(self.buf, self.pos if at is None else at) from None
            except json.JSONDecodeError as err:
                cut = err.pos >= len(self.buf) - 64 or err.msg.startswith("Unterminated string")
                if cut and self.more():
                    continue
                raise
            if not isinstance(value, (dict, list, str)) and _NUMBER_TAIL.match(self.buf, end) and self.more():
                continue  # a number ("1.5" of "1.5e3") may go on in the text not read yet
            at = _too_deep(self.buf, self.pos, end)
            if at is not None:
                raise _TooDeep(self.buf, at)
            self.escapes = _SURROGATE_ESCAPE.search(self.buf, self.pos, end) is not None
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
                at = scan.where(getattr(err, "pos", scan.pos))
                raise DataError(f"malformed JSON ({_decode_message(err)} at {at})", file=str(path), record=n) from None
            if scan.escapes:
                _check_unicode(value, path, n)
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
        except _TooDeep as err:
            raise DataError(f"malformed JSON ({err.msg} at {scan.where(err.pos)})", file=str(path)) from None
        except ValueError:
            return None
        if scan.skip() != "":
            return None
        if scan.escapes:
            _check_unicode(value, path, None)
        return value


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
            try:
                record, recursed = json.loads(line), False
            except RecursionError:  # Python's parser went past its recursion limit: far deeper than MAX_DEPTH
                record, recursed = None, True
            at = _too_deep(line)  # scans valid JSON only: all of it, or up to the depth where the parser stopped
            if at is not None or recursed:
                raise _TooDeep(line, at or 0)
            if _SURROGATE_ESCAPE.search(line):
                _check_unicode(record, path, n)
        except (ValueError, DataError) as err:
            if bad is not None:
                bad.append(n + len(bad))
                continue
            if isinstance(err, DataError):
                raise
            detail = err if isinstance(err, json.JSONDecodeError) else _decode_message(err)
            raise DataError(f"malformed JSON on line {lineno}: {detail}", file=str(path), record=n) from None
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
    import datasets  # heavy (pandas and more: ~1 s): imported only when an Arrow or Parquet file is read

    if kind == "arrow":
        try:
            ds = datasets.Dataset.from_file(str(path))
        except (pyarrow.ArrowException, OSError) as err:  # not an Arrow stream, or a cut one
            raise DataError(f"cannot read arrow file: {_first_line(err)}", file=str(path)) from None
    else:
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as err:  # noqa: BLE001 - library errors vary; report them in one line
            raise DataError(f"cannot read {kind} file: {_first_line(err)}", file=str(path)) from None
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
            n = 0
            try:
                for row in rows:
                    yield {k: (v if v != "" else None) for k, v in row.items() if k is not None}
                    n += 1
            except csv.Error as err:  # e.g. a cell longer than csv.field_size_limit() (a quote never closed?)
                raise DataError(f"malformed CSV on line {rows.reader.line_num}: {err}", file=str(path), record=n) from None
            return
    if path.stat().st_size == 0:
        raise DataError("empty file", file=str(path))
    yield from _read_with_datasets(path, kind)
