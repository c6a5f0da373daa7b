"""A callback that runs a ``litft fit`` launch on the CPU stand-in flash kernel (tests/cpu_flash_attn) and records its
calls (the CLI also takes the kernel's id as ``model.attn_implementation``; the callback adds the call counts).

Before the model is built (``setup`` runs before ``configure_model``) it switches the model spec and the data's
collator to ``litft-tests/cpu-flash-attn``; the launching test sets ``LOCAL_KERNELS`` to point that id at the
folder. At the end of training each rank records the kernel's call counts (``flash-rank<N>.json``), so the test
can see that the varlen entry point, and not the dense one, computed the attention.
"""

from __future__ import annotations

import dataclasses
import json
import os

import lightning.pytorch as pl

STANDIN = "litft-tests/cpu-flash-attn"


class UseFlashStandin(pl.Callback):
    def __init__(self, record_dir: str):
        self.record_dir = record_dir

    def setup(self, trainer, pl_module, stage: str) -> None:
        assert os.environ.get("LOCAL_KERNELS", "").startswith(f"{STANDIN}="), "LOCAL_KERNELS must name the stand-in"
        pl_module.spec = dataclasses.replace(pl_module.spec, attn_implementation=STANDIN)
        trainer.datamodule.attn_implementation = STANDIN

    def on_train_end(self, trainer, pl_module) -> None:
        from kernels import get_loaded_kernels

        (kernel,) = [k.module for k in get_loaded_kernels() if str(k.metadata.name) == "cpu-flash-attn"]
        with open(os.path.join(self.record_dir, f"flash-rank{trainer.global_rank}.json"), "w") as f:
            json.dump(dict(kernel.calls), f)
