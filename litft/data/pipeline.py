"""Corpus-scale preparation on ``datasets``: records → Arrow → tokenize in parallel → (pack) → Arrow.

Memory does not grow with the corpus: data files are read as a stream, one record at a time
(:func:`litft.data.reader.iter_file`), conversations are written to an Arrow file as they are formatted,
mixing and the validation split are index selections on it, and tokenization is a batched ``Dataset.map``
(``num_proc`` worker processes) that writes its Arrow shards as it goes. Every row carries its ``length``
(and ``num_targets``), so length grouping and packing read one integer column.

The rows are exactly those of :func:`litft.data.truncation.encode_all` (+ :func:`litft.data.packing.pack`), or of
:func:`litft.data.preference.encode_pairs` / :func:`~litft.data.preference.encode_feedback` for preference / feedback
records (``kind``): the same functions run on each batch. Statistics travel through one extra "carrier" row per batch (length 0,
holding the batch's counts in a ``_stats`` column), which is read and filtered out afterwards, so worker
processes need no side channel.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from litft.labels import count_targets
from litft.data.conversation import Conversation, Feedback, Preference, Turn
from litft.data.packing import best_fit_decreasing, join
from litft.data.preference import encode_feedback, encode_pairs
from litft.data.stats import Stats
from litft.data.truncation import encode_all

log = logging.getLogger(__name__)

_STATS = ("samples", "tokens", "trained_tokens", "truncated", "chunked", "dropped", "identical", "desirable")
_CHUNK = 10_000  # conversations per Arrow record batch while formatting
_CARRIER = {"length": 0, "num_targets": 0, "label": False, "prompt_length": 0}  # the carrier row's scalars (lists: [])


def _conv_schema(kind: str = "sft"):
    """Arrow schema of formatted records: a conversation (a preference / feedback record's prompt) plus the
    replies (``chosen``, ``rejected``; ``completion`` and ``label``)."""
    fields = [("system", pa.string()), ("tools", pa.string()), ("text", pa.string()),
              ("roles", pa.list_(pa.string())), ("contents", pa.list_(pa.string())),
              ("inputs", pa.list_(pa.string())), ("instructions", pa.list_(pa.string()))]
    if kind == "preference":
        fields += [("chosen", pa.string()), ("rejected", pa.string())]
    elif kind == "feedback":
        fields += [("completion", pa.string()), ("label", pa.bool_())]
    return pa.schema(fields)


def write_conversations(convs: Iterable[Any], path: Path, kind: str = "sft") -> int:
    """Stream conversations (or preference / feedback records: ``kind``) into an Arrow file
    (``Dataset.from_file`` reads it memory-mapped); returns the count."""
    schema = _conv_schema(kind)
    n = 0
    cols: dict[str, list] = {k: [] for k in schema.names}

    def flush(writer):
        if cols["roles"]:
            writer.write_batch(pa.record_batch([pa.array(cols[k], type=schema.field(k).type) for k in schema.names], schema=schema))
            for v in cols.values():
                v.clear()

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for record in convs:
            c = record.prompt if kind != "sft" else record
            cols["system"].append(c.system)
            cols["tools"].append(c.tools)
            cols["text"].append(c.text)
            cols["roles"].append([t.role for t in c.turns])
            cols["contents"].append([t.content for t in c.turns])
            cols["inputs"].append([t.input for t in c.turns])
            cols["instructions"].append([t.instruction for t in c.turns])
            if kind == "preference":
                cols["chosen"].append(record.chosen.content)
                cols["rejected"].append(record.rejected.content)
            elif kind == "feedback":
                cols["completion"].append(record.completion.content)
                cols["label"].append(bool(record.label))
            n += 1
            if n % _CHUNK == 0:
                flush(writer)
        flush(writer)
    return n


def _to_conversations(batch: dict[str, list]) -> list[Conversation]:
    return [
        Conversation(turns=[Turn(r, c, input=i, instruction=n) for r, c, i, n in zip(roles, contents, inputs, instructions)],
                     system=system, tools=tools, text=text)
        for system, tools, text, roles, contents, inputs, instructions in zip(
            batch["system"], batch["tools"], batch["text"], batch["roles"], batch["contents"], batch["inputs"],
            batch["instructions"],
        )
    ]


def _to_records(batch: dict[str, list], kind: str) -> list[Any]:
    """The records of a batch of :func:`write_conversations`' Arrow rows."""
    convs = _to_conversations(batch)
    if kind == "preference":
        return [Preference(c, Turn("assistant", a), Turn("assistant", b))
                for c, a, b in zip(convs, batch["chosen"], batch["rejected"])]
    if kind == "feedback":
        return [Feedback(c, Turn("assistant", a), bool(x)) for c, a, x in zip(convs, batch["completion"], batch["label"])]
    return convs


class _Encode:
    """The ``map`` function: a batch of records → its rows, plus one carrier row with the batch's stats."""

    def __init__(self, tokenizer, options: dict[str, Any], kind: str = "sft"):
        self.tokenizer, self.options, self.kind = tokenizer, options, kind

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        stats = Stats()
        records = _to_records(batch, self.kind)
        if self.kind in ("preference", "feedback"):
            encode = encode_pairs if self.kind == "preference" else encode_feedback
            rows = encode(records, self.tokenizer, stats=stats, template=self.options["template"],
                          cutoff_len=self.options["cutoff_len"])
        else:
            rows = [{**r, "length": len(r["input_ids"]), "num_targets": count_targets(r["labels"])}
                    for r in encode_all(records, self.tokenizer, stats=stats, **self.options)]
        out: dict[str, list] = {k: [r[k] for r in rows] + [_CARRIER.get(k, [])] for k in _features(kind=self.kind)}
        out["_stats"] = [[] for _ in rows] + [[getattr(stats, k) for k in _STATS]]
        return out


def _features(packed: bool = False, carrier: bool = False, kind: str = "sft"):
    import datasets  # heavy (pandas and more: ~1 s): litft slurm, export, generate must not pay it

    seq = datasets.Sequence(datasets.Value("int32"))
    if kind == "preference":
        f = {"chosen_input_ids": seq, "chosen_labels": seq, "rejected_input_ids": seq, "rejected_labels": seq}
    elif kind == "feedback":
        f = {"input_ids": seq, "labels": seq, "label": datasets.Value("bool"), "prompt_length": datasets.Value("int64")}
    else:
        f = {"input_ids": seq, "labels": seq}
    if packed:
        f["position_ids"] = seq
    f.update(length=datasets.Value("int64"), num_targets=datasets.Value("int64"))
    if carrier:
        f["_stats"] = datasets.Sequence(datasets.Value("int64"))
    return datasets.Features(f)


def column(ds, name: str) -> np.ndarray:
    """One integer column of a dataset as a numpy array (reads that column only)."""
    return np.asarray(ds.select_columns([name]).with_format("numpy")[:][name])


def _map_kwargs(workdir: Path, name: str, num_proc: int | None, desc: str) -> dict[str, Any]:
    return dict(
        batched=True,
        batch_size=1000,
        writer_batch_size=1000,
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        cache_file_name=str(workdir / f"{name}.arrow"),
        load_from_cache_file=False,
        new_fingerprint=f"litft-{name}",  # no hashing of the tokenizer by datasets
        desc=desc,
    )


def tokenize(
    ds, tokenizer, options: dict[str, Any], workdir: Path, name: str, num_proc: int | None, kind: str = "sft"
) -> tuple[Any, Stats]:
    """Records dataset → rows dataset (input_ids, labels, length, num_targets; the preference / feedback columns for
    those kinds) and its statistics."""
    mapped = ds.map(
        _Encode(tokenizer, options, kind),
        remove_columns=ds.column_names,
        features=_features(carrier=True, kind=kind),
        **_map_kwargs(workdir, name, num_proc, f"litft: tokenizing {name}"),
    )
    lengths = column(mapped, "length")
    carriers = np.flatnonzero(lengths == 0)
    stats = Stats(kind=kind)
    if len(carriers):
        sums = np.asarray([s for s in mapped.select(carriers)["_stats"] if s], dtype=np.int64).sum(axis=0)
        for k, v in zip(_STATS, sums.tolist()):
            setattr(stats, k, int(v))
    rows = mapped.select(np.flatnonzero(lengths > 0)).remove_columns("_stats")
    return rows, stats


class _Pack:
    """The ``map`` function of packing: a batch of bins (lists of row indices) → packed rows (see :func:`pack`)."""

    def __init__(self, rows):
        self.rows = rows

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        members = batch["members"]
        flat = [i for b in members for i in b]
        order = sorted(set(flat))
        got = self.rows.select(order)[:] if order else {"input_ids": [], "labels": []}
        where = {i: k for k, i in enumerate(order)}
        out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "length": [], "num_targets": []}
        for b in members:
            row = join((got["input_ids"][where[i]], got["labels"][where[i]]) for i in b)
            for key in ("input_ids", "labels", "position_ids"):
                out[key].append(row[key])
            out["length"].append(len(row["input_ids"]))
            out["num_targets"].append(count_targets(row["labels"]))
        return out


def pack(rows, capacity: int, workdir: Path, name: str, num_proc: int | None) -> tuple[Any, float]:
    """Packed rows (best-fit decreasing on the ``length`` column) and the packing efficiency."""
    import datasets  # heavy (pandas and more: ~1 s): litft slurm, export, generate must not pay it

    lengths = column(rows, "length")
    bins = best_fit_decreasing(lengths.tolist(), capacity)
    plan = datasets.Dataset.from_dict({"members": bins})
    packed = plan.map(
        _Pack(rows),
        remove_columns=["members"],
        features=_features(packed=True),
        **_map_kwargs(workdir, f"{name}-packed", num_proc, f"litft: packing {name}"),
    )
    efficiency = float(lengths.sum()) / (len(bins) * capacity) if bins else 0.0
    return packed, efficiency


def select(ds, indices: Sequence[int] | None):
    """``ds`` restricted to ``indices`` in that order (None: all of it)."""
    return ds if indices is None else ds.select(indices)
