"""Which checkpoint a run resumes from: the newest loadable one in its output folder, by global step.

A run resumes when asked (``--ckpt_path last``) and, inside a SLURM job, whenever its output folder holds a
checkpoint (a requeued job continues where it stopped). The candidates are every kind litft or Lightning writes:

- ``<output_dir>/checkpoints/*.ckpt``: files (``last.ckpt``, ``step=N.ckpt``) and DeepSpeed folders (or the links
  to them that :mod:`litft.strategies.checkpointing` maintains);
- ``<output_dir>/hpc_ckpt_N.ckpt``: Lightning's own SLURM checkpoints. litft's runs do not write them (inside SLURM
  its Trainer turns Lightning's auto-requeue off, and :class:`~litft.callbacks.preemption.Preemption` keeps
  Lightning's signal handlers out), but a run given its own ``SLURMEnvironment`` can, and Lightning loads them by
  itself inside SLURM when no ``ckpt_path`` is given.

Hidden names (``.x``) and ``*.tmp`` leftovers of a killed write are never candidates. Each candidate is opened and
its ``global_step`` read; one that fails to open is skipped with a warning naming it and the reason. The newest
step wins (the most recently written on a tie). Nothing loadable: a warning, and the run starts from step 0 --
inside SLURM after moving unloadable ``hpc_ckpt_*`` files and ``.hpc_ckpt_*.tmp`` leftovers out of Lightning's
way (Lightning would otherwise try to load them: it reads the digits of any name containing ``hpc_ckpt_``).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

log = logging.getLogger("litft")

UNLOADABLE_DIR = "unloadable-checkpoints"


def checkpoint_step(path: Path) -> int:
    """The ``global_step`` stored in a checkpoint file or DeepSpeed folder; raises when it cannot be loaded."""
    path = Path(path)
    if path.is_dir():
        latest = path / "latest"
        if not latest.is_file():
            raise ValueError("DeepSpeed folder without a 'latest' file")
        tag = latest.read_text().strip()
        # mp_rank_00_model_states.pt (ZeRO 0-2), zero_pp_rank_<r>_mp_rank_00_model_states.pt per rank (ZeRO-3)
        model_states = sorted((path / tag).glob("*model_states.pt"), key=lambda p: (len(p.name), p.name))
        if not model_states:
            raise ValueError(f"no model states in {path / tag}")
        state = torch.load(model_states[0], map_location="cpu", weights_only=False)
        shards = list((path / tag).glob("*optim_states.pt"))
        expected = int(state.get("dp_world_size", len(shards) or 1)) if shards else 0
        if len(shards) != expected:
            raise ValueError(f"{len(shards)} optimizer shards for {expected} ranks")
        return int(state["global_step"])
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return int(state["global_step"])


def candidates(root: Path) -> list[Path]:
    root = Path(root)
    found: list[Path] = []
    for folder, pattern in ((root / "checkpoints", "*.ckpt"), (root, "hpc_ckpt_*.ckpt")):
        if folder.is_dir():
            found += [p for p in folder.glob(pattern) if not p.name.startswith(".") and not p.name.endswith(".tmp")]
    return sorted(found)


def newest_checkpoint(root: Any) -> Optional[tuple[Path, int]]:
    """(path, global step) of the newest loadable checkpoint under ``root``; unloadable ones are skipped, warned."""
    best: Optional[tuple[int, float, Path]] = None
    for path in candidates(Path(root)):
        try:
            step = checkpoint_step(path)
            mtime = path.stat().st_mtime
        except Exception as err:  # any failure to read it: truncated, not a checkpoint, missing shards, ...
            log.warning("Skipping checkpoint %s: it does not load (%s: %s)", path, type(err).__name__, err)
            continue
        if best is None or (step, mtime) > best[:2]:
            best = (step, mtime, path)
    return None if best is None else (best[2], best[0])


def clear_hpc_leftovers(root: Any) -> None:
    """Move names Lightning's SLURM resume would pick up (``*hpc_ckpt_*``) out of ``root``: ``*.tmp`` leftovers are
    deleted, other unloadable files go to ``<root>/unloadable-checkpoints/``. Safe on every rank at once."""
    root = Path(root)
    if not root.is_dir():
        return
    for p in root.iterdir():
        if "hpc_ckpt_" not in p.name:
            continue
        try:
            if p.name.endswith(".tmp"):
                p.unlink()
            else:
                (root / UNLOADABLE_DIR).mkdir(exist_ok=True)
                os.replace(p, root / UNLOADABLE_DIR / p.name)
                log.warning("Moved unloadable %s to %s/", p, root / UNLOADABLE_DIR)
        except FileNotFoundError:  # another rank was faster
            pass
        except IsADirectoryError:
            shutil.rmtree(p, ignore_errors=True)


def resolve_ckpt_path(ckpt_path: Any, root: Any, in_slurm: bool) -> Any:
    """What ``Trainer.fit`` should resume from: ``ckpt_path`` "last" (or None inside SLURM) becomes the newest
    loadable checkpoint under ``root`` (or None: start from step 0); any other value is returned unchanged."""
    if not (ckpt_path == "last" or (ckpt_path is None and in_slurm)):
        return ckpt_path
    found = newest_checkpoint(root)
    if found is not None:
        path, step = found
        log.info("Resuming from %s (global step %d)", path, step)
        return str(path)
    if ckpt_path == "last" or candidates(Path(root)):
        log.warning("No loadable checkpoint in %s: training starts at step 0", root)
    if in_slurm:
        clear_hpc_leftovers(root)
    return None
