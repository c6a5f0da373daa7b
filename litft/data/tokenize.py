"""From registry entries to tokenized rows: read → format → encode → truncate, with statistics.

Truncation policy (``cutoff_len``): a plain-text document (continued pre-training) longer than ``cutoff_len``
is split into consecutive chunks of ``cutoff_len`` tokens, all kept. A conversation longer than ``cutoff_len`` keeps its first ``cutoff_len`` tokens
when at least one trained token remains among them (counted as *truncated*); when the prompt alone fills
``cutoff_len`` nothing would be trained, so the sample is dropped (counted as *dropped*, never cut to a
target-less row). Samples with no trained token at all are dropped too.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from litft.data.conversation import Conversation
from litft.data.formats import FORMATS, RecordError
from litft.data.registry import DatasetEntry, _guess_format, iter_sources
from litft.data.templates import encode_many
from litft.labels import IGNORE_INDEX, count_targets
from litft.errors import DataError, LitFTError

log = logging.getLogger(__name__)


@dataclass
class Stats:
    """Figures reported by ``prepare`` and logged by the data module."""

    records: int = 0
    """Raw records read."""
    skipped: int = 0
    """Bad records skipped (data.on_bad_record: skip)."""
    samples: int = 0
    """Samples kept after truncation."""
    tokens: int = 0
    """Tokens in the kept samples."""
    trained_tokens: int = 0
    """Trained (label != -100) tokens in the kept samples."""
    truncated: int = 0
    """Samples cut to cutoff_len."""
    chunked: int = 0
    """Plain-text documents longer than cutoff_len, split into several samples."""
    dropped: int = 0
    """Samples dropped (prompt alone fills cutoff_len, or nothing to train)."""
    rows: int = 0
    """Training rows (== samples unless packed)."""
    packing_efficiency: float | None = None
    """Real tokens / (rows × cutoff_len) when packed."""
    per_dataset: dict[str, int] = field(default_factory=dict)
    """Samples per dataset name."""

    def merge(self, other: "Stats") -> None:
        for k in ("records", "skipped", "samples", "tokens", "trained_tokens", "truncated", "chunked", "dropped"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for k, v in other.per_dataset.items():
            self.per_dataset[k] = self.per_dataset.get(k, 0) + v


def iter_conversations(entry: DatasetEntry, *, on_bad_record: str = "error", stats: Stats | None = None) -> Iterator[Conversation]:
    """The entry's records as conversations, streamed one file at a time and one record at a time: no file's
    records are held together (``num_samples`` not applied). An error is raised when reading reaches it."""
    bad_lines: list[int] | None = [] if on_bad_record == "skip" else None
    for source, records in iter_sources(entry, bad_lines):
        fn = guessed_columns = None
        i = -1
        for i, record in enumerate(records):
            if fn is None:
                fmt, guessed_columns = entry.formatting, entry.columns
                if fmt == "auto":
                    fmt, guessed_columns = _guess_format(record if isinstance(record, dict) else {})
                fn = FORMATS[fmt]
            if stats is not None:
                stats.records += 1
            try:
                if not isinstance(record, dict):
                    raise RecordError(f"expected an object, got {type(record).__name__}", None)
                conv = fn(record, columns=guessed_columns, tags=entry.tags)
            except RecordError as err:
                if on_bad_record == "skip":
                    if stats is not None:
                        stats.skipped += 1
                    continue
                raise DataError(str(err), file=source, record=i, field=err.field) from None
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


def conversations(entry: DatasetEntry, *, on_bad_record: str = "error", stats: Stats | None = None) -> list[Conversation]:
    """The entry's records as conversations (``num_samples`` applied)."""
    out = list(iter_conversations(entry, on_bad_record=on_bad_record, stats=stats))
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


def encode_all(
    convs: Iterable[Conversation],
    tokenizer,
    *,
    template: str | None,
    cutoff_len: int,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    stats: Stats | None = None,
) -> list[dict[str, list[int]]]:
    """Tokenize and truncate; rows are {input_ids, labels}."""
    stats = stats if stats is not None else Stats()
    rows = []
    convs = list(convs)
    encoded = encode_many(tokenizer, convs, template=template, train_on_prompt=train_on_prompt, mask_history=mask_history)
    for conv, (ids, labels) in zip(convs, encoded):
        if conv.text is not None and len(ids) > cutoff_len:
            stats.chunked += 1
            for k in range(0, len(ids), cutoff_len):
                piece = ids[k : k + cutoff_len]
                if len(piece) < 2:
                    continue
                rows.append({"input_ids": piece, "labels": list(piece)})
                stats.samples += 1
                stats.tokens += len(piece)
                stats.trained_tokens += len(piece)
            continue
        if len(ids) > cutoff_len:
            ids, labels = ids[:cutoff_len], labels[:cutoff_len]
            if count_targets(labels) == 0:
                stats.dropped += 1
                continue
            stats.truncated += 1
        elif count_targets(labels) == 0:
            stats.dropped += 1
            continue
        rows.append({"input_ids": ids, "labels": labels})
        stats.samples += 1
        stats.tokens += len(ids)
        stats.trained_tokens += len(labels) - labels.count(IGNORE_INDEX)
    return rows

