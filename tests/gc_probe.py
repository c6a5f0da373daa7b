"""A callback for the distributed equivalence runs: records, per rank, whether gradient checkpointing really
recomputed the decoder layers, and how many of the module's parameters ZeRO-3 partitioned.

With checkpointing, a decoder layer's forward runs twice per training micro-batch (once in the forward, once
recomputed in the backward); without, once. Counted on the layer's attention module (transformers 5 checkpoints
the layer's ``forward``, so hooks on the layer itself run once either way). Forwards without gradients or in eval mode (litft's one-off check
of the loss shortcut) are not counted. Under ZeRO-3 a partitioned parameter is an empty placeholder (``numel()``
0) outside the forward; one kept whole (below ``stage3_param_persistence_threshold``, ``ds_persist``) is gathered at
its first forward and stays whole.
"""

from __future__ import annotations

import json
import os

import lightning.pytorch as pl
import torch


class CheckpointingProbe(pl.Callback):
    def __init__(self, record_dir: str):
        self.record_dir = record_dir
        self.micro_batches = self.layer_forwards = 0
        self.params = self.partitioned = 0

    def on_train_start(self, trainer, pl_module) -> None:
        layers = [m for m in pl_module.modules() if type(m).__name__.endswith("DecoderLayer")]
        assert layers, "no decoder layer found"
        layers[0].self_attn.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        if module.training and torch.is_grad_enabled():
            self.layer_forwards += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.micro_batches += 1

    def on_train_end(self, trainer, pl_module) -> None:
        # after training, not before: parameters ZeRO-3 keeps whole are gathered at their first forward, and stay
        params = list(pl_module.parameters())
        self.params = len(params)
        self.partitioned = sum(1 for p in params if hasattr(p, "ds_id") and not getattr(p, "ds_persist", False)
                               and p.numel() == 0)
        record = {k: getattr(self, k) for k in ("micro_batches", "layer_forwards", "params", "partitioned")}
        with open(os.path.join(self.record_dir, f"gc-rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)
