"""A dataset's records: read (its files or the hub), formatted into conversations, sampled (``num_samples``) and
mixed (several datasets: concat or interleave).

Files are read by :mod:`litft.data.reader`, one record at a time; each record becomes a
:class:`~litft.data.conversation.Conversation` through its format (:mod:`litft.data.formats`), or a
:class:`~litft.data.conversation.Preference` / :class:`~litft.data.conversation.Feedback` when the entry's kind
(:func:`entry_kind`) is preference / feedback. A bad record is a
one-line :class:`~litft.errors.DataError` naming file, record and field (or, with ``on_bad_record: skip``, counted
and skipped).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Iterator
from typing import Any

from litft.data.conversation import RECORD_TYPES, Conversation
from litft.data.formats import FORMATS, RecordError, guess_format, guess_kind
from litft.data.reader import data_files, iter_dataset, iter_file
from litft.data.registry import DatasetEntry
from litft.data.stats import Stats
from litft.errors import DataError, LitFTError

log = logging.getLogger(__name__)


def read_hub(entry: DatasetEntry) -> Iterable[dict]:
    """Records of a hub dataset (Hugging Face, or ModelScope with USE_MODELSCOPE_HUB=1)."""
    if os.environ.get("USE_MODELSCOPE_HUB", "0").lower() in ("1", "true") and entry.ms_hub_url:
        try:
            from modelscope import MsDataset  # optional: only for USE_MODELSCOPE_HUB=1
        except ImportError:
            raise LitFTError(f"dataset '{entry.name}': USE_MODELSCOPE_HUB=1 needs the modelscope package") from None
        ds = MsDataset.load(entry.ms_hub_url, subset_name=entry.subset, data_dir=entry.folder, split=entry.split)
        if hasattr(ds, "to_hf_dataset"):
            ds = ds.to_hf_dataset()
        return list(ds)
    if not entry.hf_hub_url:
        raise LitFTError(f"dataset '{entry.name}': only ms_hub_url is given; set USE_MODELSCOPE_HUB=1")
    import datasets  # heavy (pandas and more: ~1 s): imported only when a hub dataset is read

    try:
        ds = datasets.load_dataset(entry.hf_hub_url, name=entry.subset, data_dir=entry.folder, split=entry.split)
    except Exception as err:  # noqa: BLE001
        raise LitFTError(f"dataset '{entry.name}': cannot load {entry.hf_hub_url} from the hub: {str(err).splitlines()[0]}") from None
    return iter_dataset(ds)


def iter_sources(entry: DatasetEntry, bad: list[int] | None = None) -> Iterator[tuple[str, Iterator[Any]]]:
    """(source name, its raw records as an iterator) for each file of the entry, or the hub dataset."""
    if entry.file_name:
        for path in data_files(entry.path):
            yield str(path), iter_file(path, bad)
    else:
        yield entry.hf_hub_url or entry.ms_hub_url or entry.name, read_hub(entry)


def entry_kind(entry: DatasetEntry, *, on_bad_record: str = "error") -> str:
    """The kind of the entry's records (:data:`litft.data.conversation.KINDS`): the entry's own
    (:attr:`DatasetEntry.kind`), else guessed from the keys of its first record (read, nothing more)."""
    if entry.kind is not None:
        return entry.kind
    sources = iter_sources(entry, [] if on_bad_record == "skip" else None)
    try:
        for source, records in sources:
            try:
                for record in records:
                    return guess_kind(record if isinstance(record, dict) else {})
            finally:
                getattr(records, "close", lambda: None)()
            raise DataError("no records", file=source)
    finally:
        sources.close()
    return "sft"


def iter_conversations(
    entry: DatasetEntry, *, kind: str | None = None, on_bad_record: str = "error", stats: Stats | None = None
) -> Iterator[Any]:
    """The entry's records as conversations (or preference / feedback records: ``kind``, default the entry's own or
    guessed from its first record), streamed one file at a time and one record at a time: no file's records are
    held together (``num_samples`` not applied). An error is raised when reading reaches it."""
    bad_lines: list[int] | None = [] if on_bad_record == "skip" else None
    kind = kind or entry.kind
    for source, records in iter_sources(entry, bad_lines):
        fn = guessed_columns = None
        i = -1
        for i, record in enumerate(records):
            if fn is None:
                fmt, guessed_columns = entry.formatting, entry.columns
                if fmt == "auto":
                    fmt, guessed_columns = guess_format(record if isinstance(record, dict) else {})
                if kind is None:
                    kind = guess_kind(record if isinstance(record, dict) else {})
                fn = FORMATS[fmt]
            if stats is not None:
                stats.records += 1
            try:
                if not isinstance(record, dict):
                    raise RecordError(f"expected an object, got {type(record).__name__}", None)
                conv = fn(record, columns=guessed_columns, tags=entry.tags, kind=kind)
            except RecordError as err:
                if on_bad_record == "skip":
                    if stats is not None:
                        stats.skipped += 1
                    continue
                raise DataError(str(err), file=source, record=i, field=err.field) from None
            if not isinstance(conv, RECORD_TYPES[kind]):
                raise DataError(f"formatting '{fmt}' has no {kind} layout (alpaca, sharegpt, openai and trl have)", file=source)
            yield conv
        if bad_lines:
            if stats is not None:
                stats.records += len(bad_lines)
                stats.skipped += len(bad_lines)
            log.warning("%s: skipped %d malformed JSON line(s)", source, len(bad_lines))
            bad_lines.clear()
        if i < 0:
            raise DataError("no records", file=source)


def sample_indices(n: int, num_samples: int | None) -> list[int] | None:
    """Which of ``n`` conversations an entry's ``num_samples`` keeps (None: all; repeats when larger than n)."""
    if num_samples is None:
        return None
    k = int(num_samples)
    rng = random.Random(0)
    idx = list(range(n))
    if k <= n:
        return sorted(rng.sample(idx, k))
    return idx * (k // n) + sorted(rng.sample(idx, k % n))


def conversations(
    entry: DatasetEntry, *, kind: str | None = None, on_bad_record: str = "error", stats: Stats | None = None
) -> list[Conversation]:
    """The entry's records as conversations, or preference / feedback records (``num_samples`` applied)."""
    out = list(iter_conversations(entry, kind=kind, on_bad_record=on_bad_record, stats=stats))
    idx = sample_indices(len(out), entry.num_samples)
    return out if idx is None else [out[i] for i in idx]


def mix(parts: list[list[Any]], *, strategy: str = "concat", probs: list[float] | None = None, seed: int = 42) -> list[Any]:
    """Concatenate datasets, or interleave them (``interleave_under``: stop when the first runs out;
    ``interleave_over``: go on until all are used, restarting the exhausted ones)."""
    if strategy == "concat" or len(parts) == 1:
        return [x for p in parts for x in p]
    if strategy not in ("interleave_under", "interleave_over"):
        raise LitFTError(f"data.mix_strategy: unknown '{strategy}' (concat, interleave_under, interleave_over)")
    if probs is None:
        probs = [1.0 / len(parts)] * len(parts)
    if len(probs) != len(parts) or any(p < 0 for p in probs) or sum(probs) <= 0:
        raise LitFTError("data.interleave_probs: one non-negative probability per dataset")
    rng = random.Random(seed)
    pos = [0] * len(parts)
    done = [False] * len(parts)
    out = []
    while True:
        k = rng.choices(range(len(parts)), weights=probs)[0]
        if pos[k] >= len(parts[k]):
            done[k] = True
            if strategy == "interleave_under" or all(done[j] or probs[j] == 0 for j in range(len(parts))):
                break
            pos[k] = 0
        out.append(parts[k][pos[k]])
        pos[k] += 1
    return out
