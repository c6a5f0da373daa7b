"""Atomic DeepSpeed checkpoints: a new folder per save, made current by one atomic pointer swap.

Lightning's DeepSpeed save bypasses ``CheckpointIO`` and rewrites the checkpoint folder (e.g. ``last.ckpt/``) in
place: a crash in the middle of a save leaves nothing loadable. Here every save goes to a fresh hidden folder next
to the target, written by all ranks; once every rank is done, rank 0 renames it to its final hidden name
(``.last.ckpt.<step>-<id>``) and replaces the target -- a symbolic link to that folder -- with one ``os.replace``
of a new link. Until that instant the previous checkpoint stays the current one and intact; the folder it pointed
to is removed afterwards. Half-written folders of a killed save (``.<name>.*.tmp``) are removed by the next save.
A target that is a real folder (not written here: Lightning's own DeepSpeed save) is refused, never overwritten.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

from litft.errors import LitFTError
from litft.io import fsync_dir, fsync_tree

TMP_SUFFIX = ".tmp"

# Test hook: a callable run on every rank after the new checkpoint is written and before it is made current
# (tests SIGKILL the process there to show the previous checkpoint survives). Not for production use.
before_commit: Optional[Callable[[Path], None]] = None


def _stale(target: Path) -> list[Path]:
    prefix = f".{target.name}."
    return [p for p in target.parent.glob(f"{prefix}*{TMP_SUFFIX}")]


def atomic_save(strategy: Any, save: Callable[[dict, str], None], checkpoint: dict, filepath: Any) -> None:
    """Run ``save(checkpoint, folder)`` (the DeepSpeed save, on all ranks) into a new folder, then make it ``filepath``.

    Collective: every rank calls it (as every rank calls a DeepSpeed save).
    """
    target = Path(strategy.broadcast(str(filepath)))
    if strategy.broadcast(target.is_dir() and not target.is_symlink()):  # rank 0's answer: every rank raises
        raise LitFTError(f"{target}: a checkpoint folder litft did not write is in the way of this save; move it")
    nonce = strategy.broadcast(f"{int(checkpoint.get('global_step', 0))}-{time.time_ns():x}")
    tmp = target.with_name(f".{target.name}.{nonce}{TMP_SUFFIX}")
    final = target.with_name(f".{target.name}.{nonce}")
    if strategy.is_global_zero:
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in _stale(target):  # a save killed mid-write left these
            shutil.rmtree(stale, ignore_errors=True)
    strategy.barrier("litft-ds-save-start")
    save(checkpoint, str(tmp))
    strategy.barrier("litft-ds-save-written")
    if before_commit is not None:
        before_commit(tmp)
    if strategy.is_global_zero:
        fsync_tree(tmp)
        os.replace(tmp, final)
        _commit(target, final)
    strategy.barrier("litft-ds-save-done")


def _commit(target: Path, final: Path) -> None:
    """Point ``target`` at ``final`` atomically; remove what it pointed to before."""
    previous: Optional[Path] = None
    if target.is_symlink():
        previous = target.parent / os.readlink(target)
    link = target.with_name(f".{target.name}.link{TMP_SUFFIX}")
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(final.name, link)
    os.replace(link, target)
    fsync_dir(target.parent)
    if previous is not None and previous.resolve() != final.resolve():
        shutil.rmtree(previous, ignore_errors=True)


def remove(target: Any) -> None:
    """Remove a checkpoint written by :func:`atomic_save`: the link and the folder it points to."""
    target = Path(target)
    if target.is_symlink():
        real = target.parent / os.readlink(target)
        target.unlink()
        shutil.rmtree(real, ignore_errors=True)
    elif target.exists():
        shutil.rmtree(target, ignore_errors=True)
