"""DPO's reference log-probabilities computed once per training set and cached beside the tokenized data
(``model.dpo.precompute_reference: true``): each training step then runs the policy's forward only.

Before training (:meth:`litft.model.module.LitFTModule.on_fit_start`) every training pair's chosen and rejected rows
are scored with the same scorer a step uses (the chunked head of :mod:`litft.methods.logps`, the adapters off, no
gradients, the model in eval mode: no dropout) in micro-batches of ``data.batch_size`` pairs. The table ``(pairs, 2)``
(chosen, rejected) is written atomically to ``<tokenized data cache>/reference-<model key>.npy``: the folder is keyed by
the data's fingerprint (:mod:`litft.data.cache`), the file by :func:`model_key` (the base model's files by content, how
it is loaded and the scoring code), so another base model, dtype, quantization or precision never reuses it. A later
run with the same data and model loads it instead of scoring. The data module hands each training row its two values
(:class:`litft.data.collate.ReferenceRows`) and :class:`litft.data.collate.PairCollator` puts them in the batch as
``reference_logps`` ``(2B,)``. Validation keeps the live reference.

Several ranks: global rank 0 computes the key and sends it; every rank scores a strided share of the pairs (the same
number of micro-batches on every rank: ZeRO-3's sharded calls stay symmetric) and the shares are all-gathered, so
every rank holds the whole table; the rank that prepares the data cache (global rank 0, or each node's local rank 0
with ``data.shared_filesystem: false``) writes it. The file is used only when every rank finds it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from litft.errors import LitFTError
from litft.io import atomic_write, file_digest
from litft.methods.logps import layout

log = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".py")
_SCORING_CODE = ("methods/logps.py", "methods/reference.py", "methods/precompute.py", "model/loss.py",
                 "model/zero3_head.py")


def model_files_digest(folder: Path) -> dict[str, str]:
    """sha256 of the files that decide the base model's outputs: config.json and the weights (and remote code)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.name == "config.json" or p.suffix in _WEIGHT_SUFFIXES))
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        raise LitFTError(f"model.dpo.precompute_reference: no weight files in {folder} to key the reference cache by")
    return {p.name: file_digest(p) for p in files}


def model_folder(spec) -> Path:
    """The local folder the base model's weights are read from (a hub id's cached snapshot)."""
    from litft.model.loading import resolve_model_path  # heavy (transformers): litft.methods stays light

    path = resolve_model_path(spec.name_or_path, gguf_file=spec.gguf_file, trust_remote_code=spec.trust_remote_code)
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download  # heavy-ish, and only for a hub id

    try:
        return Path(snapshot_download(path, local_files_only=True))
    except Exception as err:  # noqa: BLE001 -- any hub error: the weights are not where they can be hashed
        raise LitFTError(f"model.dpo.precompute_reference: cannot find the cached files of '{path}' to key the "
                         f"reference cache by ({type(err).__name__}); use a local model folder") from err


def model_key(spec, *, precision: Any, weights_dtype: Any) -> str:
    """What decides the reference log-probabilities besides the rows: the base model's files (by content), the dtype
    it runs in, its quantization, attention kernel and precision, and the scoring code (24 hex digits)."""
    root = Path(__file__).resolve().parent.parent
    quantization = spec.quantization
    payload = {
        "files": model_files_digest(model_folder(spec)),
        "dtype": str(weights_dtype),
        "quantization": None if quantization is None else repr(quantization),
        "attn_implementation": spec.attn_implementation,
        "precision": str(precision),
        "code": hashlib.sha256(b"".join((root / p).read_bytes() for p in _SCORING_CODE)).hexdigest(),
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def cache_file(data_dir: Path, key: str) -> Path:
    """Where the table of a data cache folder and a model key lives."""
    return Path(data_dir) / f"reference-{key}.npy"


def read_table(path: Path, pairs: int) -> Optional[torch.Tensor]:
    """The cached ``(pairs, 2)`` table, or None when missing or of another shape (then it is computed again)."""
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if values.shape != (pairs, 2):
        log.warning("reference cache %s holds %s values for %d pairs: computing them again", path, values.shape, pairs)
        return None
    return torch.from_numpy(values)


def write_table(path: Path, table: torch.Tensor) -> None:
    buffer = io.BytesIO()
    np.save(buffer, table.cpu().numpy(), allow_pickle=False)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(buffer.getvalue())

    atomic_write(path, write)


def score_pairs(rows, collate: Callable, reference: Callable, *, batch_size: int, rank: int = 0, world: int = 1,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """This rank's share of the table: pairs ``rank, rank + world, ...`` (padded with its last pair to the same
    count on every rank), ``(ceil(pairs / world), 2)`` (chosen, rejected), scored by ``reference`` in micro-batches
    of ``batch_size`` pairs collated by ``collate`` (:class:`litft.data.collate.PairCollator`)."""
    n = len(rows)
    share = -(-n // world)
    mine = list(range(rank, n, world)) or [n - 1]
    mine += [mine[-1]] * (share - len(mine))
    out = []
    for start in range(0, share, batch_size):
        batch = collate([rows[i] for i in mine[start : start + batch_size]])
        ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        logps, _ = reference(ids, mask, labels, **{k: v.to(device) for k, v in layout(batch).items()})
        b = logps.shape[0] // 2
        out.append(torch.stack([logps[:b], logps[b:]], dim=1).detach())
    return torch.cat(out)


def interleave(shares: torch.Tensor, pairs: int) -> torch.Tensor:
    """The table from the gathered shares ``(world, share, 2)``: pair ``rank + world * s`` is ``shares[rank, s]``."""
    return shares.transpose(0, 1).reshape(-1, shares.shape[-1])[:pairs]


def reference_table(*, trainer, datamodule, spec, weights_dtype, reference: Callable, model: torch.nn.Module,
                    device: torch.device) -> torch.Tensor:
    """The training pairs' reference log-probabilities ``(pairs, 2)``: read from the cache, or scored (every rank
    takes part) and written there. Every rank must call it."""
    strategy = trainer.strategy
    world, rank = int(trainer.world_size), int(trainer.global_rank)
    rows, data_dir = datamodule.train_rows, datamodule.cache_dir
    if rows is None or data_dir is None:
        raise LitFTError("model.dpo.precompute_reference needs litft's data module (data:), set up before fit")
    key = model_key(spec, precision=trainer.precision, weights_dtype=weights_dtype) if rank == 0 else None
    if world > 1:
        key = strategy.broadcast(key, src=0)
    path = cache_file(data_dir, key)
    table = read_table(path, len(rows))
    everywhere = strategy.reduce_boolean_decision(table is not None, all=True) if world > 1 else table is not None
    if everywhere:
        log.info("dpo: reusing the reference log-probabilities %s", path)
        return table
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        share = score_pairs(rows, datamodule.collator(), reference, batch_size=int(datamodule.batch_size), rank=rank,
                            world=world, device=device)
    finally:
        model.train(was_training)
    table = interleave(strategy.all_gather(share).reshape(world, -1, 2) if world > 1 else share[None], len(rows))
    table = table.cpu()
    writer = (rank == 0) if datamodule.shared_filesystem else int(trainer.local_rank) == 0
    if writer:
        write_table(path, table)
    if world > 1:
        strategy.barrier("litft-reference-logps")
    log.info("dpo: scored %d pairs with the reference in %.1f s: %s", len(rows), time.perf_counter() - t0, path)
    return table
