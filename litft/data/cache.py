"""On-disk cache of the tokenized (and packed) dataset, keyed by a fingerprint.

The fingerprint covers the data file contents (sha256), the registry entries, the rendered template, the
tokenizer (vocabulary, special tokens, chat template), every option that changes the rows (lengths,
masking, packing, split, seed) and the source of the pipeline modules themselves. The cache lives in ``cache_root()/data/<fingerprint>/``: ``train/`` and
``val/`` Arrow datasets (``datasets.save_to_disk``, memory-mapped on load) and ``stats.json``. It is
written to a temporary folder and renamed into place, so a reader sees all of it or nothing.

In a distributed job one process prepares (see :meth:`LitFTDataModule.prepare_data`); the others call
:func:`wait_for`, which polls without any timeout (a long preparation never trips a collective's timeout)
and stops with the preparer's error if it failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from litft.errors import LitFTError

log = logging.getLogger(__name__)
CACHE_VERSION = 1
_FAILED = ".failed"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    for name in ("registry.py", "formats.py", "conversation.py", "templates.py", "tokenize.py", "packing.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()


def fingerprint(entries, tokenizer, options: dict[str, Any], files: list[Path]) -> str:
    """The cache key (24 hex digits)."""
    payload = {
        "version": CACHE_VERSION,
        "code": code_digest(),
        "entries": [e.describe() for e in entries],
        "files": {str(p.resolve()): _file_digest(p) for p in files},
        "tokenizer": tokenizer_digest(tokenizer),
        "options": options,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def is_ready(path: Path) -> bool:
    return (path / "stats.json").is_file()


def write(path: Path, splits: dict[str, list[dict[str, list[int]]]], stats: dict[str, Any], *, overwrite: bool = False) -> None:
    """Store the rows atomically (temp folder + rename); ``overwrite`` replaces an existing cache."""
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp.", dir=path.parent))
    try:
        datasets.disable_progress_bars()
        for name, rows in splits.items():
            if not rows:
                continue
            columns = sorted(rows[0]) if rows else ["input_ids", "labels"]
            data = {c: [r[c] for r in rows] for c in columns}
            features = datasets.Features(
                {
                    c: datasets.Value("int64") if rows and isinstance(rows[0][c], int) else datasets.Sequence(datasets.Value("int32"))
                    for c in columns
                }
            )
            datasets.Dataset.from_dict(data, features=features).save_to_disk(str(tmp / name))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=1, ensure_ascii=False), encoding="utf-8")
        if overwrite and path.exists():
            old = Path(tempfile.mkdtemp(prefix=path.name + ".old.", dir=path.parent))
            os.replace(path, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:
            if not is_ready(path):  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    failed = path.with_name(path.name + _FAILED)
    failed.unlink(missing_ok=True)


def mark_failed(path: Path, message: str) -> None:
    """Tell waiting ranks that preparation failed (they raise the same message)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(path.name + _FAILED).write_text(message, encoding="utf-8")


def load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(splits as Arrow datasets, stats)."""
    import datasets

    splits = {p.name: datasets.load_from_disk(str(p)) for p in sorted(path.iterdir()) if p.is_dir()}
    stats = json.loads((path / "stats.json").read_text(encoding="utf-8"))
    return splits, stats


def wait_for(path: Path, *, poll_s: float = 1.0, log_every_s: float = 60.0, is_alive: Callable[[], bool] | None = None) -> None:
    """Block until ``path`` is ready (no timeout). Raises if the preparing rank reported a failure."""
    failed = path.with_name(path.name + _FAILED)
    start = last = time.monotonic()
    started_at = time.time() - 5.0  # a marker older than this wait belongs to an earlier run
    while not is_ready(path):
        if failed.is_file() and failed.stat().st_mtime >= started_at:
            raise LitFTError(f"data preparation failed on the preparing rank: {failed.read_text(encoding='utf-8')}")
        if is_alive is not None and not is_alive():
            raise LitFTError("data preparation: the preparing rank is gone")
        now = time.monotonic()
        if now - last >= log_every_s:
            log.info("data: waiting for the dataset cache %s (%.0f s)", path, now - start)
            last = now
        time.sleep(poll_s)
