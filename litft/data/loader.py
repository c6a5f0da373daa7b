"""A resumable, shard-aware training loader that adds ``num_target_tokens`` to every batch.

:class:`ResumableBatchSampler` decides the order of the batches of an epoch deterministically: a permutation
from ``torch.Generator().manual_seed(seed + epoch)``, then each rank takes its own disjoint, strided share
(the remainder that does not divide evenly over ranks is left out this epoch; it differs each epoch), then
consecutive batches. :class:`ResumableLoader` wraps a ``DataLoader`` built on it and exposes
``state_dict`` / ``load_state_dict`` with (epoch, batches consumed, seed): Lightning saves that state in
its checkpoints and restores it before iterating, and the loader then starts on exactly the next batch
(skipping happens on indices, no data is loaded for skipped batches).

``num_target_tokens`` (README batch contract): trained positions (``labels[:, 1:] != -100``) summed over
the micro-batches of the current optimizer step on this rank. It is computed from per-row target counts
stored with the dataset, so it is known before the step's later micro-batches are loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from litft.errors import LitFTError


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices for one rank, deterministic in (seed, epoch)."""

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 42,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        lengths: Sequence[int] | None = None,
        group_batches: int = 50,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if lengths is not None and len(lengths) != num_rows:
            raise ValueError(f"lengths has {len(lengths)} entries for {num_rows} rows")
        # Length grouping: within each run of ``group_batches`` batches, rows are sorted by length, so a padded
        # batch holds rows of similar length; the batches are then shuffled so step lengths stay random.
        self.lengths, self.group_batches = lengths, max(1, group_batches)
        self.num_rows, self.batch_size, self.shuffle, self.seed = num_rows, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.start_batch = 0  # batches of this epoch already consumed (resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rank_indices(self, epoch: int) -> list[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_rows, generator=gen).tolist()
        else:
            order = list(range(self.num_rows))
        per_rank = self.num_rows // self.world_size if self.world_size > 1 else self.num_rows
        # Strided, not contiguous: batch k of every rank together is batch k of a single process with
        # batch_size * world_size, so a run on N ranks sees the same global batches as one process.
        return order[self.rank : per_rank * self.world_size : self.world_size]

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of an epoch for this rank, in order."""
        epoch = self.epoch if epoch is None else epoch
        idx = self._rank_indices(epoch)
        if self.lengths is not None:
            idx = self._grouped(idx)
        out = [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.lengths is not None and self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + epoch + 1_000_003)
            full = [b for b in out if len(b) == self.batch_size]
            out = [full[i] for i in torch.randperm(len(full), generator=gen).tolist()] + out[len(full) :]
        if self.drop_last and out and len(out[-1]) < self.batch_size:
            out.pop()
        return out

    def _grouped(self, idx: list[int]) -> list[int]:
        span = self.batch_size * self.group_batches
        out: list[int] = []
        for start in range(0, len(idx), span):
            out += sorted(idx[start : start + span], key=lambda i: -self.lengths[i])
        return out

    def __len__(self) -> int:
        per_rank = self.num_rows // self.world_size if self.world_size > 1 else self.num_rows
        if self.drop_last:
            return per_rank // self.batch_size
        return (per_rank + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.start_batch :]


def epoch_generator(seed: int, epoch: int = 0) -> torch.Generator:
    """The generator a DataLoader iterator draws its base seed (worker seeds) from.

    Without one, every ``iter(DataLoader)`` draws from the global torch RNG, i.e. from the training's dropout stream,
    at a moment that depends on where a run started: a run resumed from a checkpoint saved at the last batch of an
    epoch restores that stream and then creates the next epoch's iterator, which an uninterrupted run created after
    the save -- one draw apart, a different run. A generator of its own (deterministic in seed and epoch) keeps
    loaders off the training stream, and gives workers the same seeds in a resumed run.
    """
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class ResumableLoader:
    """Iterable over training batches (dicts of tensors) with a resumable position.

    Args:
        dataset: map-style dataset of rows (dicts with ``input_ids``, ``labels``, ...).
        targets: trained positions per row (``labels[1:] != -100``), used for ``num_target_tokens``.
        collate_fn: turns a list of rows into a batch dict.
        batch_sampler: a :class:`ResumableBatchSampler`.
        accumulate_grad_batches: a callable returning the current gradient accumulation (read lazily
            from the trainer), or an int.
        epoch_batches: a callable returning how many batches the trainer runs per epoch (it may stop
            early with ``limit_train_batches``), so the last accumulation group ends where it steps.
    """

    def __init__(
        self,
        dataset: Dataset,
        targets: Sequence[int],
        collate_fn: Callable[[list[Any]], dict[str, Any]],
        batch_sampler: ResumableBatchSampler,
        *,
        accumulate_grad_batches: Callable[[], int] | int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        epoch_batches: Callable[[], int | float | None] | None = None,
    ):
        self.dataset, self.targets, self.collate_fn = dataset, targets, collate_fn
        self.batch_sampler = batch_sampler
        self._accumulate = accumulate_grad_batches
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self._epoch_batches = epoch_batches  # batches the trainer runs per epoch (limit_train_batches)
        self.epoch = 0
        self.consumed = 0  # batches of ``epoch`` already yielded
        # Lightning calls ``loader.sampler.set_epoch(epoch)`` at the start of every epoch: route it here.
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    @property
    def accumulate_grad_batches(self) -> int:
        acc = self._accumulate() if callable(self._accumulate) else self._accumulate
        return max(1, int(acc or 1))

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def state_dict(self) -> dict[str, int]:
        s = self.batch_sampler
        return {"epoch": self.epoch, "batches_consumed": self.consumed, "seed": s.seed,
                "world_size": s.world_size, "batch_size": s.batch_size, "num_rows": s.num_rows,
                "grouped": int(s.lengths is not None)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.batch_sampler.seed) != self.batch_sampler.seed:
            # A different seed means a different order: continuing "at batch k" would be meaningless.
            self.epoch, self.consumed = int(state["epoch"]), 0
            return
        self.epoch, self.consumed = int(state["epoch"]), int(state["batches_consumed"])
        s = self.batch_sampler
        old_world, old_batch = int(state.get("world_size", s.world_size)), int(state.get("batch_size", s.batch_size))
        if (old_world, old_batch) != (s.world_size, s.batch_size):
            self.consumed = self._same_global_sample(state, old_world, old_batch)

    def _same_global_sample(self, state: dict[str, int], old_world: int, old_batch: int) -> int:
        """Batches of this run's sampler that cover exactly the samples a run with ``old_world`` ranks x
        ``old_batch`` consumed in the saved epoch; LitFTError (one line) when no whole number of batches does.

        Batch k of all ranks together is the k-th slice of ``old_world x old_batch`` samples of the epoch's
        permutation (see :class:`ResumableBatchSampler`), so the position is a global sample count."""
        s = self.batch_sampler
        old_len = len(ResumableBatchSampler(s.num_rows, old_batch, rank=0, world_size=old_world, drop_last=s.drop_last))
        if self.consumed >= old_len:  # the saved epoch was complete: so is it here
            return len(s)
        samples = self.consumed * old_batch * old_world
        step = s.batch_size * s.world_size
        problems = []
        if int(state.get("num_rows", s.num_rows)) != s.num_rows:
            problems.append(f"the training set has {s.num_rows} rows, not {state['num_rows']}")
        if state.get("grouped") or s.lengths is not None:
            problems.append("data.group_by_length orders batches by batch size")
        if samples % step:
            problems.append(f"{samples} is not a multiple of {step}")
        if s.num_rows // old_world * old_world != s.num_rows // s.world_size * s.world_size:
            problems.append("the rows left out of each epoch (not divisible by the number of ranks) differ")
        if problems:
            raise LitFTError(
                f"cannot resume at the same sample: the checkpoint was written by {old_world} rank(s) x "
                f"data.batch_size {old_batch} after {samples} samples of epoch {self.epoch}; this run has "
                f"{s.world_size} rank(s) x data.batch_size {s.batch_size} ({'; '.join(problems)}). Resume with "
                f"the same number of ranks and batch size, or with ranks x batch size dividing {samples}"
            )
        return samples // step

    def _step_targets(self, batches: list[list[int]]) -> list[int]:
        """num_target_tokens for each batch of the epoch: the sum over its accumulation group.

        The groups are Lightning's, for every strategy (litft's DeepSpeed strategy leaves accumulation to
        Lightning): ``accumulate_grad_batches`` consecutive batches counted from the start of each epoch
        (``batch_progress.current.ready % A``), and the epoch's last batch steps, closing a shorter group.
        """
        acc = self.accumulate_grad_batches
        per_batch = [sum(self.targets[i] for i in b) for b in batches]
        limit = self._epoch_batches() if self._epoch_batches is not None else None
        if isinstance(limit, int) and 0 < limit < len(per_batch):
            # The trainer stops the epoch early and steps on its last batch: groups end there.
            per_batch = per_batch[:limit] + [0] * (len(per_batch) - limit)
        out = []
        for g in range(0, len(per_batch), acc):
            total = sum(per_batch[g : g + acc])
            out += [total] * len(per_batch[g : g + acc])
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        sampler = self.batch_sampler
        sampler.set_epoch(self.epoch)
        if self.consumed >= len(sampler):  # the saved epoch was complete: start the next one
            self.epoch, self.consumed = self.epoch + 1, 0
            sampler.set_epoch(self.epoch)
        epoch, start = self.epoch, self.consumed
        step_targets = self._step_targets(sampler.batches(epoch))
        sampler.start_batch = start
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=epoch_generator(sampler.seed, epoch),
        )
        try:
            for k, batch in enumerate(loader, start=start):
                batch["num_target_tokens"] = torch.tensor(step_targets[k], dtype=torch.long)
                self.consumed = k + 1
                yield batch
        finally:
            sampler.start_batch = 0
        if self.consumed >= len(sampler):
            self.epoch, self.consumed = epoch + 1, 0
