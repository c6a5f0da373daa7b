"""Corpus-scale preparation on ``datasets``: records → Arrow → tokenize in parallel → (pack) → Arrow.

Memory does not grow with the corpus: data files are read as a stream, one record at a time
(:func:`litft.data.reader.iter_file`), conversations are written to an Arrow file as they are formatted,
mixing and the validation split are index selections on it, and tokenization is a batched ``Dataset.map``
(``num_proc`` worker processes) that writes its Arrow shards as it goes. Every row carries its ``length``
(and ``num_targets``), so length grouping and packing read one integer column.

The rows are exactly those of :func:`litft.data.truncation.encode_all` (+ :func:`litft.data.packing.pack`): the
same functions run on each batch. Statistics travel through one extra "carrier" row per batch (length 0,
holding the batch's counts in a ``_stats`` column), which is read and filtered out afterwards, so worker
processes need no side channel.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from litft.labels import count_targets
from litft.data.conversation import Conversation, Turn
from litft.data.packing import best_fit_decreasing, join
from litft.data.stats import Stats
from litft.data.truncation import encode_all

log = logging.getLogger(__name__)

_STATS = ("samples", "tokens", "trained_tokens", "truncated", "chunked", "dropped")
_CHUNK = 10_000  # conversations per Arrow record batch while formatting


def _conv_schema():
    import pyarrow as pa

    return pa.schema([("system", pa.string()), ("tools", pa.string()), ("text", pa.string()),
                      ("roles", pa.list_(pa.string())), ("contents", pa.list_(pa.string())),
                      ("inputs", pa.list_(pa.string())), ("instructions", pa.list_(pa.string()))])


def write_conversations(convs: Iterable[Conversation], path: Path) -> int:
    """Stream conversations into an Arrow file (``Dataset.from_file`` reads it memory-mapped); returns the count."""
    import pyarrow as pa

    schema = _conv_schema()
    n = 0
    cols: dict[str, list] = {k: [] for k in schema.names}

    def flush(writer):
        if cols["roles"]:
            writer.write_batch(pa.record_batch([pa.array(cols[k], type=schema.field(k).type) for k in schema.names], schema=schema))
            for v in cols.values():
                v.clear()

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for c in convs:
            cols["system"].append(c.system)
            cols["tools"].append(c.tools)
            cols["text"].append(c.text)
            cols["roles"].append([t.role for t in c.turns])
            cols["contents"].append([t.content for t in c.turns])
            cols["inputs"].append([t.input for t in c.turns])
            cols["instructions"].append([t.instruction for t in c.turns])
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


class _Encode:
    """The ``map`` function: a batch of conversations → its rows, plus one carrier row with the batch's stats."""

    def __init__(self, tokenizer, options: dict[str, Any]):
        self.tokenizer, self.options = tokenizer, options

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        stats = Stats()
        rows = encode_all(_to_conversations(batch), self.tokenizer, stats=stats, **self.options)
        out: dict[str, list] = {"input_ids": [], "labels": [], "length": [], "num_targets": [], "_stats": []}
        for r in rows:
            out["input_ids"].append(r["input_ids"])
            out["labels"].append(r["labels"])
            out["length"].append(len(r["input_ids"]))
            out["num_targets"].append(count_targets(r["labels"]))
            out["_stats"].append([])
        for k, v in (("input_ids", []), ("labels", []), ("length", 0), ("num_targets", 0)):
            out[k].append(v)
        out["_stats"].append([getattr(stats, k) for k in _STATS])
        return out


def _features(packed: bool = False, carrier: bool = False):
    import datasets

    seq = datasets.Sequence(datasets.Value("int32"))
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


def tokenize(ds, tokenizer, options: dict[str, Any], workdir: Path, name: str, num_proc: int | None) -> tuple[Any, Stats]:
    """Conversations dataset → rows dataset (input_ids, labels, length, num_targets) and its statistics."""
    mapped = ds.map(
        _Encode(tokenizer, options),
        remove_columns=ds.column_names,
        features=_features(carrier=True),
        **_map_kwargs(workdir, name, num_proc, f"litft: tokenizing {name}"),
    )
    lengths = column(mapped, "length")
    carriers = np.flatnonzero(lengths == 0)
    stats = Stats()
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
    import datasets

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
