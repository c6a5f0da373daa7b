"""Dataset registry: LLaMA-Factory's ``dataset_info.json`` as is, plus plain file paths.

``data.dataset`` is a comma-separated list of names. A name is looked up in
``<data.dataset_dir>/dataset_info.json``; a name that is not there but is an existing file or folder (absolute,
or relative to the working directory or to ``dataset_dir``) is loaded directly, its format guessed from its
first record. Entries SFT cannot train on (ranking, KTO, images, videos, audios) stop with a clear error.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litft.errors import DataError, LitFTError

FILE_TYPES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text", ".arrow": "arrow"}
_UNSUPPORTED_COLUMNS = ("chosen", "rejected", "kto_tag", "images", "videos", "audios")


@dataclass
class DatasetEntry:
    """One dataset: where it lives and how its records map onto a conversation."""

    name: str
    """The name given in data.dataset."""
    file_name: str | None = None
    """A file or folder (relative to dataset_dir), for local data."""
    hf_hub_url: str | None = None
    """A Hugging Face hub dataset id."""
    ms_hub_url: str | None = None
    """A ModelScope dataset id (used when USE_MODELSCOPE_HUB=1)."""
    formatting: str = "alpaca"
    """alpaca | sharegpt | openai | lima | dolly | text."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column names: prompt, query, response, system, history, messages, tools, ..."""
    tags: dict[str, str] = field(default_factory=dict)
    """ShareGPT tags: role_tag, content_tag, user_tag, assistant_tag, observation_tag, function_tag, system_tag."""
    subset: str | None = None
    """Hub subset (configuration) name."""
    split: str = "train"
    """Split to read."""
    folder: str | None = None
    """Folder inside a hub repository."""
    num_samples: int | None = None
    """Use this many records (sampled deterministically; repeats when larger than the dataset)."""
    ranking: bool = False
    """A preference dataset (not trainable by SFT)."""
    dataset_dir: str = "."
    """Folder that file_name is relative to."""

    @property
    def path(self) -> Path | None:
        if self.file_name is None:
            return None
        p = Path(self.file_name).expanduser()
        return p if p.is_absolute() else Path(self.dataset_dir) / p

    def describe(self) -> dict[str, Any]:
        """A JSON-able description, part of the cache fingerprint."""
        d = dict(self.__dict__)
        d.pop("dataset_dir")
        d["path"] = str(self.path.resolve()) if self.path else None
        return d


def _guess_format(record: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """Format of a bare file, from the keys of its first record."""
    keys = set(record)
    if "messages" in keys:
        first = record["messages"][0] if isinstance(record["messages"], list) and record["messages"] else {}
        if isinstance(first, Mapping) and "role" in first:
            return "openai", {}
        return "sharegpt", {"messages": "messages"}
    if "conversations" in keys:
        conv = record["conversations"]
        if isinstance(conv, list) and conv and isinstance(conv[0], str):
            return "lima", {}
        if isinstance(conv, list) and conv and isinstance(conv[0], Mapping) and "role" in conv[0]:
            return "openai", {"messages": "conversations"}
        return "sharegpt", {}
    if "context" in keys and "response" in keys:
        return "dolly", {}
    if "instruction" in keys:
        return "alpaca", {}
    if keys == {"text"} or ("text" in keys and "output" not in keys):
        return "text", {"prompt": "text"}
    return "alpaca", {}


def load_registry(dataset_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The entries of ``<dataset_dir>/dataset_info.json`` ({} when the file does not exist)."""
    info = Path(dataset_dir) / "dataset_info.json"
    if not info.is_file():
        return {}
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"not valid JSON: {err}", file=str(info)) from None
    if not isinstance(data, dict):
        raise DataError("expected an object mapping dataset names to entries", file=str(info))
    return data


def _entry(name: str, raw: Mapping[str, Any], dataset_dir: str, info_file: str) -> DatasetEntry:
    if not isinstance(raw, Mapping):
        raise DataError("expected an object", file=info_file, field=name)
    unknown_ok = {"script_url", "cloud_file_name", "om_hub_url"}
    for key in ("script_url", "cloud_file_name", "om_hub_url"):
        if raw.get(key) and not raw.get("file_name") and not raw.get("hf_hub_url") and not raw.get("ms_hub_url"):
            raise LitFTError(f"{info_file}: dataset '{name}': '{key}' sources are not supported; use file_name or hf_hub_url")
    fields = {k: raw[k] for k in raw if k in DatasetEntry.__dataclass_fields__ and k not in ("name", "dataset_dir")}
    extra = set(raw) - set(fields) - unknown_ok
    if extra:
        raise DataError(f"unknown key(s) {sorted(extra)}", file=info_file, field=name)
    entry = DatasetEntry(name=name, dataset_dir=dataset_dir, **fields)
    if entry.split is None:
        entry.split = "train"
    return entry


def check_sft(entry: DatasetEntry) -> None:
    """Stop on entries SFT cannot train on instead of mis-reading them."""
    why = None
    if entry.ranking:
        why = "a preference (ranking) dataset"
    else:
        for col in _UNSUPPORTED_COLUMNS:
            if entry.columns.get(col):
                why = {"kto_tag": "a KTO dataset", "images": "a multimodal (images) dataset",
                       "videos": "a multimodal (videos) dataset", "audios": "a multimodal (audios) dataset"}.get(
                    col, "a preference (chosen/rejected) dataset"
                )
                break
    if why:
        raise LitFTError(f"dataset '{entry.name}' is {why}: not supported by SFT (litft fine-tunes on conversations)")


def resolve(dataset: str, dataset_dir: str | os.PathLike = "data") -> list[DatasetEntry]:
    """The entries named by ``data.dataset`` (comma-separated names or paths)."""
    names = [n.strip() for n in str(dataset).split(",") if n.strip()]
    if not names:
        raise LitFTError("data.dataset is empty: give dataset names from dataset_info.json or file paths")
    dataset_dir = str(dataset_dir)
    registry = load_registry(dataset_dir)
    info_file = str(Path(dataset_dir) / "dataset_info.json")
    entries = []
    for name in names:
        if name in registry:
            entry = _entry(name, registry[name], dataset_dir, info_file)
            if not (entry.file_name or entry.hf_hub_url or entry.ms_hub_url):
                raise DataError("needs file_name, hf_hub_url or ms_hub_url", file=info_file, field=name)
            if entry.formatting not in ("alpaca", "sharegpt", "openai", "lima", "dolly", "text"):
                raise DataError(f"unknown formatting '{entry.formatting}'", file=info_file, field=f"{name}.formatting")
            if entry.formatting == "alpaca" and set(entry.columns) <= {"prompt", "system"} and "prompt" in entry.columns:
                # LLaMA-Factory's pre-training entries map only the text column ("prompt": "text").
                entry.formatting = "text"
        else:
            candidates = [Path(name).expanduser(), Path(dataset_dir) / name]
            path = next((p for p in candidates if p.exists()), None)
            if path is None:
                names_known = sorted(registry)
                known = ", ".join(names_known[:15]) + (f", ... ({len(names_known)} in all)" if len(names_known) > 15 else "")
                raise LitFTError(
                    f"data.dataset: unknown dataset '{name}': not in {info_file} and not a file"
                    + (f" (known: {known})" if registry else "")
                )
            entry = DatasetEntry(name=name, file_name=str(path.resolve()), formatting="auto", dataset_dir=dataset_dir)
        check_sft(entry)
        entries.append(entry)
    return entries


def data_files(entry: DatasetEntry) -> list[Path]:
    """The local files of an entry (a folder → its files of known types, sorted)."""
    path = entry.path
    assert path is not None
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


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"not UTF-8 (byte {err.start}, line {line})", file=str(path)) from None
    if not text.strip():
        raise DataError("empty file", file=str(path))
    return text


def _line_col(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"line {line} column {pos - (text.rfind(chr(10), 0, pos) + 1) + 1}"


def _parse_json_array(text: str, path: Path, bad: list[int] | None) -> list[Any]:
    """Parse a JSON array element by element, so a syntax error names the record it is in."""
    decoder = json.JSONDecoder()
    ws = " \t\r\n"
    pos = text.index("[") + 1
    records: list[Any] = []
    n = len(text)

    def skip(p: int) -> int:
        while p < n and text[p] in ws:
            p += 1
        return p

    pos = skip(pos)
    if pos < n and text[pos] == "]":
        pos += 1
    else:
        while True:
            try:
                value, pos = decoder.raw_decode(text, pos)
            except ValueError as err:
                msg = getattr(err, "msg", str(err))
                raise DataError(f"malformed JSON ({msg} at {_line_col(text, getattr(err, 'pos', pos))})", file=str(path), record=len(records)) from None
            records.append(value)
            pos = skip(pos)
            if pos < n and text[pos] == ",":
                pos = skip(pos + 1)
                continue
            if pos < n and text[pos] == "]":
                pos += 1
                break
            raise DataError(f"malformed JSON (expected ',' or ']' after the record at {_line_col(text, pos)})", file=str(path), record=len(records) - 1)
    if text[pos:].strip():
        raise DataError(f"malformed JSON (extra data after the list at {_line_col(text, skip(pos))})", file=str(path))
    return records


def _read_json(path: Path, bad: list[int] | None = None) -> list[Any]:
    """Records of a JSON list (or an object of column lists) or of JSON lines. ``bad``: when given, malformed
    JSON lines are skipped and their record indices appended to it instead of raising."""
    text = _read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        return _parse_json_array(text, path, bad)
    if stripped.startswith("{") and path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError:
            data = None  # JSON lines in a .json file
        if isinstance(data, dict):
            if data and all(isinstance(v, list) for v in data.values()):
                return _columns_to_rows(data, path)
            return [data]
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as err:
            if bad is not None:
                bad.append(len(records) + len(bad))
                continue
            raise DataError(f"malformed JSON on line {lineno}: {err}", file=str(path), record=len(records)) from None
    return records


def _columns_to_rows(data: dict[str, list], path: Path) -> list[dict]:
    lengths = {len(v) for v in data.values()}
    if len(lengths) != 1:
        raise DataError("column lists of different lengths", file=str(path))
    keys = list(data)
    return [dict(zip(keys, vals)) for vals in zip(*data.values())]


def _read_with_datasets(path: Path, kind: str) -> list[dict]:
    import datasets

    if kind == "arrow":
        ds = datasets.Dataset.from_file(str(path))
    else:
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as err:  # noqa: BLE001 - library errors vary; report them in one line
            raise DataError(f"cannot read {kind} file: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=str(path)) from None
    return ds.to_list()


def read_file(path: Path, bad: list[int] | None = None) -> list[Any]:
    """Raw records of one local file (``bad``: see :func:`_read_json`)."""
    kind = FILE_TYPES[path.suffix.lower()]
    if kind == "json":
        return _read_json(path, bad)
    if kind == "text":
        text = _read_text(path)
        return [{"text": line} for line in text.splitlines() if line.strip()]
    if kind == "csv":  # every cell is text (a numeric answer stays "42"); an empty cell is no value
        rows = csv.DictReader(io.StringIO(_read_text(path), newline=""))
        return [{k: (v if v != "" else None) for k, v in row.items() if k is not None} for row in rows]
    if path.stat().st_size == 0:
        raise DataError("empty file", file=str(path))
    return _read_with_datasets(path, kind)


def read_hub(entry: DatasetEntry) -> list[dict]:
    """Records of a hub dataset (Hugging Face, or ModelScope with USE_MODELSCOPE_HUB=1)."""
    if os.environ.get("USE_MODELSCOPE_HUB", "0").lower() in ("1", "true") and entry.ms_hub_url:
        try:
            from modelscope import MsDataset
        except ImportError:
            raise LitFTError(f"dataset '{entry.name}': USE_MODELSCOPE_HUB=1 needs the modelscope package") from None
        ds = MsDataset.load(entry.ms_hub_url, subset_name=entry.subset, data_dir=entry.folder, split=entry.split)
        if hasattr(ds, "to_hf_dataset"):
            ds = ds.to_hf_dataset()
        return list(ds)
    if not entry.hf_hub_url:
        raise LitFTError(f"dataset '{entry.name}': only ms_hub_url is given; set USE_MODELSCOPE_HUB=1")
    import datasets

    try:
        ds = datasets.load_dataset(entry.hf_hub_url, name=entry.subset, data_dir=entry.folder, split=entry.split)
    except Exception as err:  # noqa: BLE001
        raise LitFTError(f"dataset '{entry.name}': cannot load {entry.hf_hub_url} from the hub: {str(err).splitlines()[0]}") from None
    return ds.to_list()


def iter_sources(entry: DatasetEntry, bad: list[int] | None = None) -> Iterator[tuple[str, list[Any]]]:
    """(source name, raw records) for each file of the entry, or the hub dataset."""
    if entry.file_name:
        for path in data_files(entry):
            yield str(path), read_file(path, bad)
    else:
        yield entry.hf_hub_url or entry.ms_hub_url or entry.name, read_hub(entry)
