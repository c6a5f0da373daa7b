"""Dataset registry: LLaMA-Factory's ``dataset_info.json`` as is, plus plain file paths.

``data.dataset`` is a comma-separated list of names. A name is looked up in
``<data.dataset_dir>/dataset_info.json``; a name that is not there but is an existing file or folder (absolute,
or relative to the working directory or to ``dataset_dir``) is loaded directly, its format ("auto") guessed from
its first record when it is read (:func:`litft.data.formats.guess_format`). Multimodal entries (images, videos,
audios) stop with a clear error. An entry's :attr:`~DatasetEntry.kind` says what its records are: ``ranking: true``
→ preference pairs, a ``kto_tag`` column → feedback (KTO), else SFT conversations; :func:`check_kinds` stops a run
whose datasets are of several kinds or not of the kind its method trains on. This module only resolves names to
entries: reading them is :mod:`litft.data.records` (files: :mod:`litft.data.reader`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litft.data.formats import FORMATS
from litft.errors import DataError, LitFTError

_MULTIMODAL_COLUMNS = ("images", "videos", "audios")


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
    """A format of :data:`litft.data.formats.FORMATS`; "auto" (a bare file): guessed from its first record."""
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
    """A preference dataset: records are (prompt, chosen, rejected) pairs (see :attr:`kind`)."""
    dataset_dir: str = "."
    """Folder that file_name is relative to."""

    @property
    def path(self) -> Path | None:
        if self.file_name is None:
            return None
        p = Path(self.file_name).expanduser()
        return p if p.is_absolute() else Path(self.dataset_dir) / p

    @property
    def kind(self) -> str | None:
        """``preference`` (ranking: true), ``feedback`` (a kto_tag column) or ``sft``; None for a bare file or a
        ``trl`` entry without either flag: then the keys of its first record decide
        (:func:`litft.data.records.entry_kind`)."""
        if self.ranking:
            return "preference"
        if self.columns.get("kto_tag"):
            return "feedback"
        if self.formatting in ("auto", "trl"):
            return None
        return "sft"

    def describe(self) -> dict[str, Any]:
        """A JSON-able description, part of the cache fingerprint."""
        d = dict(self.__dict__)
        d.pop("dataset_dir")
        d["path"] = str(self.path.resolve()) if self.path else None
        return d


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


def check_supported(entry: DatasetEntry, info_file: str | None = None) -> None:
    """Stop on entries litft cannot read instead of mis-reading them: multimodal data, and flags that contradict."""
    for col in _MULTIMODAL_COLUMNS:
        if entry.columns.get(col):
            raise LitFTError(f"dataset '{entry.name}' is a multimodal ({col}) dataset: not supported (litft fine-tunes on text)")
    if entry.ranking and entry.columns.get("kto_tag"):
        raise DataError("ranking: true and a kto_tag column: a dataset is preference pairs or KTO feedback, not both",
                        file=info_file, field=entry.name)
    if not entry.ranking and entry.formatting not in ("auto", "trl") and (entry.columns.get("chosen") or entry.columns.get("rejected")):
        raise DataError('chosen/rejected columns need "ranking": true (preference data)', file=info_file, field=entry.name)


_KIND_IS = {
    "sft": "SFT data (conversations)",
    "preference": "preference data (ranking: true)",
    "feedback": "feedback data (kto_tag)",
}
_METHODS_FOR = {"sft": "sft", "preference": "dpo, orpo or simpo", "feedback": "kto"}
"""The ``model.method`` values that train on each kind (the CLI links ``data.kind`` from ``model.method``)."""


def check_kinds(kinds: Mapping[str, str], want: str) -> None:
    """Stop unless every dataset (name → kind) is of one kind, the kind ``want`` (``data.kind``) trains on. The
    message names ``model.method``, the key a user sets (``data.kind`` follows it)."""
    if len(set(kinds.values())) > 1:
        listing = ", ".join(f"'{name}' is {_KIND_IS[kind]}" for name, kind in kinds.items())
        raise LitFTError(f"data: the datasets mix kinds of data: {listing}; the datasets of a run (data.dataset and "
                         "data.eval_dataset) must be of one kind")
    for name, kind in kinds.items():
        if kind != want:
            raise LitFTError(f"dataset '{name}': {_KIND_IS[kind]} needs model.method: {_METHODS_FOR[kind]} "
                             f"(this run's model.method is {_METHODS_FOR[want]})")


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
            if entry.formatting not in FORMATS:
                raise DataError(f"unknown formatting '{entry.formatting}' (expected one of {', '.join(FORMATS)})",
                                file=info_file, field=f"{name}.formatting")
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
        check_supported(entry, info_file if name in registry else None)
        entries.append(entry)
    return entries
