"""On-disk cache of the tokenized (and packed) dataset, keyed by a fingerprint.

The fingerprint covers the data file contents (sha256), the registry entries, the rendered template, the
tokenizer (vocabulary, special tokens, chat template), every option that changes the rows (the data kind: sft,
preference or feedback; lengths, masking, packing, split, seed) and the source of the pipeline modules themselves.
The cache lives in ``cache_root()/data/<fingerprint>/``: ``train/`` and ``val/`` Arrow datasets
(``datasets.save_to_disk``, memory-mapped on load) and ``stats.json``. It is written to a temporary folder and
renamed into place, so a reader sees all of it or nothing.

In a distributed job one process prepares (see :meth:`LitFTDataModule.prepare_data`); the others call
:func:`wait_for`, which polls the filesystem (a long preparation never trips a collective's timeout). The
preparer keeps a heartbeat file ``<key>.alive`` whose *content* (a counter) changes every few seconds; a
waiter that sees neither the cache nor a change of the heartbeat for ``timeout_s`` stops with one line naming
``data.shared_filesystem`` (the usual cause: a cache on node-local disk while the config says it is shared).
A failed preparation writes ``<key>.failed`` holding the run's token and the error; waiters raise it only
when the token is their run's, so a marker left by an earlier run is ignored. No file time is compared with
the local clock (nodes' clocks and a network filesystem's times need not agree).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from litft.errors import LitFTError
from litft.io import atomic_dir, atomic_write_text, file_digest

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: rows carry a length column
_FAILED = ".failed"
_ALIVE = ".alive"


def tokenizer_digest(tokenizer) -> str:
    """A digest of what decides token ids: the backend tokenizer, special tokens and chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # slow tokenizers: the vocabulary
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(
        {
            "special": {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())},
            "chat_template": getattr(tokenizer, "chat_template", None),
            "class": type(tokenizer).__name__,
            "add_bos": getattr(tokenizer, "add_bos_token", None),
        },
        sort_keys=True,
        default=str,
    ).encode())
    return h.hexdigest()


def code_digest() -> str:
    """A digest of the pipeline's own source, so a fix in litft's data code never reuses stale rows."""
    h = hashlib.sha256()
    for name in ("registry.py", "reader.py", "records.py", "formats.py", "conversation.py", "templates.py", "truncation.py",
                 "stats.py", "packing.py", "pipeline.py", "collate.py", "template_spec.py", "preference.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()


def fingerprint(entries, tokenizer, options: dict[str, Any], files: list[Path]) -> str:
    """The cache key (24 hex digits)."""
    payload = {
        "version": CACHE_VERSION,
        "code": code_digest(),
        "entries": [e.describe() for e in entries],
        "files": {str(p.resolve()): file_digest(p) for p in files},
        "tokenizer": tokenizer_digest(tokenizer),
        "options": options,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def is_ready(path: Path) -> bool:
    return (path / "stats.json").is_file()


def _rows_dataset(rows: list[dict[str, Any]]):
    import datasets  # heavy (pandas and more: ~1 s): litft slurm, export, generate must not pay it

    columns = sorted(rows[0])
    data = {c: [r[c] for r in rows] for c in columns}
    features = datasets.Features(
        {c: datasets.Value("int64") if isinstance(rows[0][c], int) else datasets.Sequence(datasets.Value("int32")) for c in columns}
    )
    return datasets.Dataset.from_dict(data, features=features)


def build_into(
    path: Path,
    build: Callable[[Path], tuple[dict[str, Any], dict[str, Any]]],
    *,
    overwrite: bool = False,
) -> None:
    """``build(workdir)`` → (splits, stats); store them atomically (temp folder + rename). A split is a
    ``datasets.Dataset`` or a list of row dicts; empty splits are left out. ``overwrite`` replaces a cache."""
    # A cache that appears meanwhile was built by another process from the same key: it is kept (replace=False).
    with atomic_dir(path, replace=overwrite) as tmp:
        splits, stats = build(tmp / "work")
        for name, rows in splits.items():
            if rows is None or len(rows) == 0:
                continue
            ds = _rows_dataset(rows) if isinstance(rows, list) else rows
            ds.save_to_disk(str(tmp / name))  # one process: a copy, disk-bound (its num_proc spawns fresh interpreters)
        del splits
        shutil.rmtree(tmp / "work", ignore_errors=True)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=1, ensure_ascii=False), encoding="utf-8")
    path.with_name(path.name + _FAILED).unlink(missing_ok=True)


def write(path: Path, splits: dict[str, Any], stats: dict[str, Any], *, overwrite: bool = False) -> None:
    """Store ready rows (lists of row dicts or datasets) atomically; ``overwrite`` replaces an existing cache."""
    build_into(path, lambda _work: (splits, stats), overwrite=overwrite)


def mark_failed(path: Path, message: str, *, token: str | None = None) -> None:
    """Tell waiting ranks of run ``token`` that preparation failed (they raise the same message)."""
    atomic_write_text(path.with_name(path.name + _FAILED), json.dumps({"token": token, "message": message}))


def _failure(path: Path, token: str | None) -> str | None:
    """The failure message for run ``token``, if the preparer of that run wrote one."""
    try:
        raw = path.with_name(path.name + _FAILED).read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        marker = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(marker, dict) or marker.get("token") != token:
        return None  # an earlier run's marker
    return str(marker.get("message"))


@contextlib.contextmanager
def heartbeat(path: Path, *, every_s: float = 5.0):
    """While the block runs, rewrite ``<key>.alive`` with a growing counter every ``every_s`` seconds."""
    alive = path.with_name(path.name + _ALIVE)
    path.parent.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    nonce = f"{os.getpid()}-{time.monotonic_ns()}"

    def beat():
        n = 0
        while True:
            try:
                atomic_write_text(alive, f"{nonce} {n}")
            except OSError:
                pass
            n += 1
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=beat, name="litft-cache-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        alive.unlink(missing_ok=True)


def load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(splits as Arrow datasets, stats)."""
    import datasets  # heavy (pandas and more: ~1 s): litft slurm, export, generate must not pay it

    splits = {p.name: datasets.load_from_disk(str(p)) for p in sorted(path.iterdir()) if p.is_dir()}
    stats = json.loads((path / "stats.json").read_text(encoding="utf-8"))
    return splits, stats


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def wait_for(
    path: Path,
    *,
    token: str | None = None,
    timeout_s: float = 600.0,
    poll_s: float = 1.0,
    log_every_s: float = 60.0,
) -> None:
    """Block until ``path`` is ready. Raises the preparer's error if run ``token``'s preparation failed, and a
    one-line error naming ``data.shared_filesystem`` after ``timeout_s`` seconds without the cache appearing or
    the preparer's heartbeat changing."""
    alive = path.with_name(path.name + _ALIVE)
    start = last_log = last_sign = time.monotonic()
    seen = _read(alive)
    while not is_ready(path):
        message = _failure(path, token)
        if message is not None:
            raise LitFTError(f"data preparation failed on the preparing rank: {message}")
        now = time.monotonic()
        beat = _read(alive)
        if beat is not None and beat != seen:
            seen, last_sign = beat, now
        if now - last_sign >= timeout_s:
            raise LitFTError(
                f"data: waited {now - start:.0f} s for the dataset cache {path} without seeing it or any sign of the "
                f"preparing rank; with data.shared_filesystem: true every node must see the same cache folder "
                f"(LITFT_CACHE): on node-local disks set data.shared_filesystem: false (or raise data.cache_wait_timeout)"
            )
        if now - last_log >= log_every_s:
            log.info("data: waiting for the dataset cache %s (%.0f s)", path, now - start)
            last_log = now
        time.sleep(poll_s)
