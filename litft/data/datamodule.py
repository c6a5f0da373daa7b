"""LitFTDataModule: the ``data:`` section of the config (registry → formats → template → rows → loaders)."""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from litft.data import cache, pipeline
from litft.data.collate import FeedbackCollator, PadCollator, PairCollator, ReferenceRows
from litft.data.conversation import KINDS
from litft.data.loader import ResumableBatchSampler, ResumableLoader, epoch_generator
from litft.data.packing import PackedCollator, is_varlen
from litft.data.reader import data_files
from litft.data.records import entry_kind, iter_conversations, mix, sample_indices
from litft.data.registry import check_kinds, resolve
from litft.data.shared_prompt import SharedPromptCollator
from litft.data.stats import Stats
from litft.data.templates import resolve_template
from litft.errors import LitFTError
from litft.model.loading import cache_root, load_tokenizer
from litft.strategies.sequence_parallel import data_rank_world

log = logging.getLogger(__name__)


class LitFTDataModule(pl.LightningDataModule):
    """Fine-tuning data: any registered dataset, rendered with a chat template, masked exactly: conversations
    (SFT), preference pairs (DPO, ORPO, SimPO) or feedback examples (KTO).

    Args:
        dataset: Comma-separated dataset names from ``<dataset_dir>/dataset_info.json`` or file paths.
        kind: What the training method consumes: ``sft`` (conversations), ``preference`` (pairs: LLaMA-Factory's
            ``ranking: true`` entries, TRL's prompt/chosen/rejected) or ``feedback`` (KTO: a ``kto_tag`` column,
            TRL's prompt/completion/label). Every dataset (and eval_dataset) must be of this kind (else a one-line
            error naming the dataset); a bare file's kind is read from its first record. The CLI links it from
            ``model.method`` (not set by hand). See litft/data/preference.py for the rows and
            litft/data/collate.py for the batches.
        dataset_dir: Folder holding ``dataset_info.json`` and the data files it names.
        tokenizer: Model name or path the tokenizer is loaded from (linked from ``model.name_or_path``).
        gguf_file: GGUF file inside ``tokenizer`` (linked from ``model.gguf_file``).
        trust_remote_code: Allow custom tokenizer code (linked from ``model.trust_remote_code``).
        template: Chat template: None = the tokenizer's own; a built-in name (alpaca, chatml, empty, llama2, llama3,
            phi, qwen); a Jinja chat template (inline or a .jinja file); or a declarative template (a .yaml file or
            a mapping with user/assistant/system/input/tool blocks, default_system, end_of_turn): see
            litft/data/template_spec.py. It is also written into the adapter's and the export's tokenizer.
        cutoff_len: Maximum tokens per sample (and per packed row; per chosen / rejected row); longer samples are
            truncated (see litft/data/truncation.py, litft/data/preference.py).
        eval_dataset: Validation data for fit, and what evaluate/predict score by default: comma-separated names
            or paths like ``dataset`` (None = none, or a val_size split of the training records).
        val_size: Validation share split off the training records: a fraction (< 1) or a number of records
            (>= 1); 0 = none. Not together with eval_dataset.
        batch_size: Micro-batch size (rows per step per device).
        eval_batch_size: Validation batch size (None = batch_size).
        num_workers: DataLoader worker processes.
        seed: Seed for shuffling (epoch e uses seed + e) and for the validation split.
        packing: Pack samples into rows of cutoff_len (no cross-sample attention). SFT only.
        train_on_prompt: Train on prompt tokens too (labels = input_ids everywhere). SFT only.
        mask_history: Train on the last assistant turn only (preference and feedback rows always are).
        mix_strategy: How several datasets combine: concat, interleave_under or interleave_over.
        interleave_probs: Sampling probabilities per dataset when interleaving (None = uniform).
        max_samples: Use at most this many records per dataset (None = all).
        on_bad_record: error (stop on the first bad record) or skip (skip and count bad records and malformed
            JSON lines; file-level problems such as a non-UTF-8 or empty file always stop).
        pad_to_multiple_of: Pad batch width to a multiple of this (None = longest in batch).
        attn_implementation: The model's attention implementation (linked from model.attn_implementation): with a
            flash-attention one ("flash" in the name, transformers' rule) a packed micro-batch is ONE row of all its
            samples, delimited by position_ids (varlen); otherwise packed rows with a 4-D block-diagonal mask.
        shared_filesystem: All nodes see the same cache folder: prepare once (global rank 0). False: once per
            node (local rank 0). Either way only global rank 0 fingerprints the data; the others receive the key.
        cache_wait_timeout: Seconds a rank waits for the cache with no sign of the preparing rank (its heartbeat)
            before stopping with an error that names data.shared_filesystem.
        preprocessing_num_workers: Worker processes that tokenize (and pack) in parallel (None or 1: in-process).
        share_prompt: Preference pairs as one row each, the prompt computed once for chosen and rejected (a 4-D
            mask; exact; litft.data.shared_prompt). SDPA or eager attention; not with sequence parallelism.
        overwrite_cache: Rebuild the tokenized dataset even when a cached copy exists.
        group_by_length: Batch rows of similar length together (less padding, faster); ignored when packing.
    """

    def __init__(
        self,
        dataset: str,
        kind: Literal["sft", "preference", "feedback"] = "sft",
        dataset_dir: str = "data",
        tokenizer: str | None = None,
        gguf_file: str | None = None,
        trust_remote_code: bool = False,
        template: str | dict[str, str] | None = None,
        cutoff_len: int = 1024,
        val_size: float = 0.0,
        eval_dataset: str | None = None,
        batch_size: int = 1,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        packing: bool = False,
        train_on_prompt: bool = False,
        mask_history: bool = False,
        mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = "concat",
        interleave_probs: list[float] | None = None,
        max_samples: int | None = None,
        on_bad_record: Literal["error", "skip"] = "error",
        pad_to_multiple_of: int | None = None,
        attn_implementation: str | None = None,
        shared_filesystem: bool = True,
        overwrite_cache: bool = False,
        group_by_length: bool = False,
        cache_wait_timeout: float = 600.0,
        preprocessing_num_workers: int | None = None,
        share_prompt: bool = False,
    ):
        super().__init__()
        if on_bad_record not in ("error", "skip"):
            raise LitFTError(f"data.on_bad_record: expected 'error' or 'skip', got '{on_bad_record}'")
        if cutoff_len < 2:
            raise LitFTError("data.cutoff_len must be at least 2")
        if val_size < 0:
            raise LitFTError("data.val_size must be >= 0")
        if preprocessing_num_workers is not None and preprocessing_num_workers < 1:
            raise LitFTError("data.preprocessing_num_workers must be >= 1 (or null)")
        if cache_wait_timeout <= 0:
            raise LitFTError("data.cache_wait_timeout must be > 0 seconds")
        if eval_dataset and val_size:
            raise LitFTError("data.eval_dataset and data.val_size: give one (validation data, or a split of the training data)")
        if kind not in KINDS:
            raise LitFTError(f"data.kind: expected one of {', '.join(KINDS)}, got '{kind}'")
        if kind != "sft" and packing:
            # Exact packing of pairs is possible (a block-diagonal mask per sample, the loss gathering each sample's
            # log-probability by segment) but not built: the loss would have to know which packed sample is which.
            raise LitFTError(f"data.packing is not supported for {kind} data (rows are padded): set data.packing: false")
        if share_prompt and kind != "preference":
            raise LitFTError(f"data.share_prompt applies to preference pairs, not {kind} data: set it to false")
        if share_prompt and is_varlen(attn_implementation):
            raise LitFTError(f"data.share_prompt needs a 4-D attention mask, which {attn_implementation} does not take: "
                             "set model.attn_implementation: sdpa (or data.share_prompt: false)")
        if kind != "sft" and train_on_prompt:
            raise LitFTError(f"data.train_on_prompt does not apply to {kind} data (only the replies are scored)")
        self.kind, self.share_prompt = kind, share_prompt
        self.eval_dataset = eval_dataset
        self.dataset, self.dataset_dir = dataset, dataset_dir
        self.tokenizer_name, self.gguf_file, self.trust_remote_code = tokenizer, gguf_file, trust_remote_code
        self.template, self.cutoff_len, self.val_size = template, cutoff_len, val_size
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size or batch_size, num_workers
        self.seed, self.packing = seed, packing
        self.train_on_prompt, self.mask_history = train_on_prompt, mask_history
        self.mix_strategy, self.interleave_probs, self.max_samples = mix_strategy, interleave_probs, max_samples
        self.on_bad_record, self.pad_to_multiple_of = on_bad_record, pad_to_multiple_of
        self.attn_implementation, self.shared_filesystem = attn_implementation, shared_filesystem
        self.overwrite_cache = overwrite_cache
        # Lightning runs prepare_data on global rank 0 only, or on local rank 0 of every node.
        self.prepare_data_per_node = not shared_filesystem
        self.group_by_length = group_by_length
        self.cache_wait_timeout, self.preprocessing_num_workers = cache_wait_timeout, preprocessing_num_workers
        self._run_token: str | None = None  # identifies this run's failure marker (global rank 0 makes it)
        self._tokenizer = None
        self.train_rows = None  # a sequence of row dicts (an Arrow dataset once cached)
        self.val_rows = None
        self.stats: Stats | None = None
        self.cache_dir: Path | None = None
        self.cache_hit: bool | None = None
        self._reference_rows: ReferenceRows | None = None
        self.reference_logps = None
        """Precomputed reference log-probabilities of the training pairs ``(pairs, 2)`` (litft.methods.precompute),
        carried by the training batches once set with :meth:`set_reference_logps`; None = the step scores them."""

    def set_reference_logps(self, table) -> None:
        """Give training row ``i`` the reference log-probabilities ``table[i]`` (chosen, rejected) from now on."""
        if table is not None and len(table) != len(self.train_rows):
            raise ValueError(f"{len(table)} reference log-probabilities for {len(self.train_rows)} training rows")
        self.reference_logps = table
        if self._reference_rows is not None:
            self._reference_rows.table = table

    # ------------------------------------------------------------------ tokenizer
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if not self.tokenizer_name:
                raise LitFTError("data.tokenizer is not set (the CLI links it from model.name_or_path)")
            self._tokenizer = load_tokenizer(
                self.tokenizer_name, gguf_file=self.gguf_file, trust_remote_code=self.trust_remote_code
            )
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._tokenizer = value

    # ------------------------------------------------------------------ preparation
    def build(self, workdir: Path) -> tuple[dict[str, Any], Stats]:
        """Read, format, split, tokenize (and pack) into Arrow files under ``workdir``:
        ({"train": rows, "val": rows or None}, statistics); rows are ``datasets.Dataset`` objects."""
        import datasets  # heavy (pandas and more: ~1 s): litft slurm, export, generate must not pay it

        workdir.mkdir(parents=True, exist_ok=True)
        resolve_template(self.tokenizer, self.template) if self.template or self.tokenizer.chat_template else None
        stats = Stats(kind=self.kind)
        entries = resolve(self.dataset, self.dataset_dir)
        eval_entries = resolve(self.eval_dataset, self.dataset_dir) if self.eval_dataset else []
        check_kinds({e.name: entry_kind(e, on_bad_record=self.on_bad_record) for e in entries + eval_entries}, self.kind)
        records = dict(kind=self.kind, on_bad_record=self.on_bad_record)
        parts = []
        for k, entry in enumerate(entries):
            file = workdir / f"records-{k}.arrow"
            n = pipeline.write_conversations(iter_conversations(entry, stats=stats, **records), file, self.kind)
            idx = sample_indices(n, entry.num_samples)
            if self.max_samples is not None:
                idx = list(idx if idx is not None else range(n))[: self.max_samples]
            part = pipeline.select(datasets.Dataset.from_file(str(file)), idx)
            stats.per_dataset[entry.name] = stats.per_dataset.get(entry.name, 0) + len(part)
            parts.append(part)
        order = None
        if len(parts) > 1 and self.mix_strategy != "concat":
            offsets = [sum(len(p) for p in parts[:i]) for i in range(len(parts))]
            order = mix([range(o, o + len(p)) for o, p in zip(offsets, parts)], strategy=self.mix_strategy,
                        probs=self.interleave_probs, seed=self.seed)
        convs = pipeline.select(datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0], order)
        n_val = self._num_val(len(convs))
        train_convs, val_convs = convs, None
        if self.eval_dataset:  # validation data of its own (never together with val_size)
            evals = []
            for k, entry in enumerate(eval_entries):
                file = workdir / f"eval-{k}.arrow"
                n = pipeline.write_conversations(iter_conversations(entry, **records), file, self.kind)
                evals.append(pipeline.select(datasets.Dataset.from_file(str(file)), sample_indices(n, entry.num_samples)))
            val_convs = datasets.concatenate_datasets(evals) if len(evals) > 1 else evals[0]
        if n_val:
            order = list(range(len(convs)))
            random.Random(self.seed).shuffle(order)
            is_val = [False] * len(convs)
            for i in order[:n_val]:
                is_val[i] = True
            val_convs = convs.select([i for i, v in enumerate(is_val) if v])
            train_convs = convs.select([i for i, v in enumerate(is_val) if not v])
        kw = dict(template=self.template, cutoff_len=self.cutoff_len, train_on_prompt=self.train_on_prompt,
                  mask_history=self.mask_history)
        workers = self.preprocessing_num_workers
        train, train_stats = pipeline.tokenize(train_convs, self.tokenizer, kw, workdir, "train", workers, self.kind)
        stats.merge(train_stats)
        val = None
        if val_convs is not None:
            val = pipeline.tokenize(val_convs, self.tokenizer, kw, workdir, "val", workers, self.kind)[0]
        if stats.identical:
            log.warning("data: %d preference pair(s) have chosen == rejected (after tokenization and truncation): dropped, "
                        "nothing to prefer", stats.identical)
        if not len(train):
            raise LitFTError(f"data: no training samples left from '{self.dataset}' (all dropped or empty)")
        if self.packing:
            train, stats.packing_efficiency = pipeline.pack(train, self.cutoff_len, workdir, "train", workers)
            if val is not None and len(val):
                val = pipeline.pack(val, self.cutoff_len, workdir, "val", workers)[0]
        stats.rows = len(train)
        return {"train": train, "val": val}, stats

    def _num_val(self, n: int) -> int:
        if not self.val_size:
            return 0
        k = int(self.val_size) if self.val_size >= 1 else int(round(self.val_size * n))
        if k >= n:
            raise LitFTError(f"data.val_size={self.val_size} leaves no training records (of {n})")
        return max(k, 1)

    def _options(self) -> dict[str, Any]:
        """Everything besides data files and tokenizer that changes the rows (part of the fingerprint)."""
        jinja, eot = resolve_template(self.tokenizer, self.template) if self.template or self.tokenizer.chat_template else (None, None)
        keys = ("kind", "cutoff_len", "val_size", "eval_dataset", "seed", "packing", "train_on_prompt", "mask_history",
                "mix_strategy", "interleave_probs", "max_samples", "on_bad_record")
        return {"template": [self.template, jinja, eot], **{k: getattr(self, k) for k in keys}}

    def cache_key(self) -> str:
        """The fingerprint of the data, tokenizer and options (hashes every data file: one rank computes it)."""
        entries = resolve(self.dataset, self.dataset_dir)
        if self.eval_dataset:
            entries = entries + resolve(self.eval_dataset, self.dataset_dir)
        files = [f for e in entries if e.file_name for f in data_files(e.path)]
        return cache.fingerprint(entries, self.tokenizer, self._options(), files)

    def cache_path(self) -> Path:
        """``cache_root()/data/<fingerprint>`` for the current configuration."""
        if self.cache_dir is None:
            self._set_cache_key(self.cache_key())
        return self.cache_dir

    def _set_cache_key(self, key: str) -> None:
        self.cache_dir = cache_root() / "data" / key

    def _token(self) -> str:
        if self._run_token is None:
            self._run_token = uuid.uuid4().hex
        return self._run_token

    def _distributed(self):
        """The trainer's strategy when this is one rank of several (else None)."""
        trainer = self.trainer
        if trainer is None or int(getattr(trainer, "world_size", 1)) <= 1:
            return None
        return getattr(trainer, "strategy", None)

    def _agree_on_cache(self) -> Path:
        """Global rank 0 fingerprints; every rank receives (key, run token) and joins it to its own cache root."""
        strategy = self._distributed()
        if strategy is None:
            return self.cache_path()
        mine = (self.cache_path().name, self._token()) if int(self.trainer.global_rank) == 0 else None
        key, self._run_token = strategy.broadcast(mine, src=0)
        self._set_cache_key(key)
        return self.cache_dir

    def _is_preparer(self) -> bool:
        trainer = self.trainer
        if trainer is None or int(getattr(trainer, "world_size", 1)) <= 1:
            return True
        if self.shared_filesystem:
            return int(trainer.global_rank) == 0
        return int(trainer.local_rank) == 0

    def _build_for_cache(self, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        splits, stats = self.build(workdir)
        return splits, dataclasses.asdict(stats)

    def _write_cache(self, path: Path) -> None:
        t0 = time.perf_counter()
        try:
            with cache.heartbeat(path):
                cache.build_into(
                    path,
                    self._build_for_cache,
                    overwrite=self.overwrite_cache,
                )
        except Exception as err:
            cache.mark_failed(path, str(err).splitlines()[0] if str(err) else type(err).__name__, token=self._token())
            raise
        log.info("data: prepared %s in %.1f s (%s worker process(es))", path, time.perf_counter() - t0,
                 self.preprocessing_num_workers or 1)

    def prepare_data(self) -> None:
        """Tokenize once and write the cache (Lightning calls this on the preparing rank(s) only). In a job of
        several ranks only global rank 0 prepares here; with ``shared_filesystem: false`` the other nodes'
        local rank 0 prepare in :meth:`setup`, once rank 0 has sent them the fingerprint."""
        trainer = self.trainer
        if trainer is not None and int(getattr(trainer, "world_size", 1)) > 1 and int(trainer.global_rank) != 0:
            return
        path = self.cache_path()
        if self.overwrite_cache or not cache.is_ready(path):
            self._write_cache(path)
            self.cache_hit = False
            self.overwrite_cache = False  # setup() must not rebuild it again

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is not None:
            return
        path = self._agree_on_cache()
        if cache.is_ready(path) and not self.overwrite_cache:
            if self.cache_hit is None:
                self.cache_hit = True
                log.info("data: reusing the cached dataset %s", path)
        elif self._is_preparer():
            self._write_cache(path)
            self.cache_hit = False
            self.overwrite_cache = False
        else:
            cache.wait_for(path, token=self._run_token, timeout_s=self.cache_wait_timeout)
        splits, stats = cache.load(path)
        self.train_rows, self.val_rows = splits["train"], splits.get("val") or []
        self.stats = Stats(**stats)
        if not self.val_rows and stage == "fit" and self.trainer is not None:
            # No validation data: say so to the trainer rather than hand it an empty loader (Lightning warns then).
            self.trainer.limit_val_batches = 0
        s = self.stats
        extra = {"preference": f"; {s.identical} identical pairs dropped",
                 "feedback": f"; {s.desirable} desirable, {s.samples - s.desirable} undesirable"}.get(s.kind, "")
        log.info(
            "data: %d records → %d %s, %d rows (%d tokens, %d trained; %d truncated, %d dropped, %d skipped)%s%s",
            s.records, s.samples, {"preference": "pairs", "feedback": "examples"}.get(s.kind, "samples"), s.rows, s.tokens,
            s.trained_tokens, s.truncated, s.dropped, s.skipped, extra,
            f"; packing efficiency {s.packing_efficiency:.1%}" if s.packing_efficiency is not None else "",
        )

    # ------------------------------------------------------------------ loaders
    def _column(self, name: str, of_row) -> list[int]:
        """An integer column of the training rows (read alone from Arrow; no token ids are loaded)."""
        rows = self.train_rows
        if hasattr(rows, "column_names") and name in rows.column_names:
            return pipeline.column(rows, name).tolist()
        return [of_row(r) for r in rows]

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _accumulate(self) -> int:
        trainer = self.trainer
        return int(getattr(trainer, "accumulate_grad_batches", 1) or 1) if trainer is not None else 1

    def _epoch_batches(self):
        trainer = self.trainer
        return getattr(trainer, "num_training_batches", None) if trainer is not None else None

    def collator(self, *, packed: bool | None = None):
        """The batch collator of this data: :class:`PairCollator` (preference), :class:`FeedbackCollator` (feedback,
        with KL rows), else padded or packed SFT rows."""
        if self.kind == "preference" and self.share_prompt:
            return SharedPromptCollator(self.tokenizer.pad_token_id, attn_implementation=self.attn_implementation,
                                        pad_to_multiple_of=self.pad_to_multiple_of)
        if self.kind == "preference":
            return PairCollator(self.tokenizer.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of)
        if self.kind == "feedback":
            return FeedbackCollator(self.tokenizer.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of,
                                    max_length=self.cutoff_len)
        if self.packing if packed is None else packed:
            return PackedCollator(self.tokenizer.pad_token_id, attn_implementation=self.attn_implementation)
        return PadCollator(self.tokenizer.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of)

    def train_dataloader(self) -> ResumableLoader:
        if self.train_rows is None:
            self.setup("fit")
        rank, world = self._rank_world()

        # a sequence-parallel group is one data-parallel rank: its ranks get the same rows
        rank, world = data_rank_world(getattr(self.trainer, "strategy", None), rank, world)
        lengths = None
        if self.group_by_length and not self.packing:
            lengths = self._column("length", lambda r: len(r["input_ids"]))
        sampler = ResumableBatchSampler(
            len(self.train_rows), self.batch_size, shuffle=True, seed=self.seed, rank=rank, world_size=world,
            lengths=lengths,
        )
        if len(sampler) == 0:
            raise LitFTError(f"data: {len(self.train_rows)} training rows are too few for {world} ranks")
        rows = self.train_rows
        if self.kind == "preference":  # the loader may exist before the reference table does (set_reference_logps)
            rows = self._reference_rows = ReferenceRows(rows)
            rows.table = self.reference_logps
        return ResumableLoader(
            rows,
            self._column("num_targets", lambda r: r["num_targets"]),
            self.collator(),
            sampler,
            accumulate_grad_batches=self._accumulate,
            num_workers=self.num_workers,
            epoch_batches=self._epoch_batches,
        )

    def val_dataloader(self):
        if self.train_rows is None:
            self.setup("validate")
        if not self.val_rows:
            return []
        return DataLoader(
            self.val_rows,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.collator(),
            num_workers=self.num_workers,
            generator=epoch_generator(self.seed),  # validation never draws from the training's RNG stream
        )
