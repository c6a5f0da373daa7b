"""What a user reads on the console during a litft command: litft's lines, not the libraries' noise.

litft fixes the noise it causes where it causes it; the rest is silenced here, in one place, each entry with
the reason it is noise. Real warnings stay visible: every filter matches one exact message.
"""

from __future__ import annotations

import logging
import re
import warnings

import torch

WARNINGS: dict[str, str] = {
    # message prefix -> why it is noise for a litft user
    "LightningCLI's args parameter is intended to run from within Python":
        "litft parses sys.argv itself and hands LightningCLI exactly the arguments of one command",
    "The `srun` command is available on your system but is not used":
        "a machine with SLURM installed is not a SLURM job; litft's sbatch templates run under srun",
    "`isinstance(treespec, LeafSpec)` is deprecated":
        "Lightning's own use of a torch API, nothing a user can change",
    "`is_gradient_checkpointing` is deprecated":
        "peft's call into transformers 5, nothing a user can change",
    "`gradient_checkpointing_enable` is deprecated":
        "peft's prepare_model_for_kbit_training calls it; litft itself calls the new name where it exists",
}

LOG_LINES: dict[str, tuple[str, str]] = {
    # logger name -> (message prefix, why it is noise)
    "lightning.pytorch.utilities.rank_zero": (
        "💡 Tip: For seamless cloud logging", "an advertisement for a hosted logging service"),
    "bitsandbytes.backends.cpu.ops": (
        "Failed to load CPU gemm_4bit_forward from kernels-community",
        "optional faster CPU kernels from a separate package; the built-in path is used"),
}


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_library_noise() -> None:
    """Install the filters above (idempotent); called by litft's command line, never by ``import litft``."""
    for prefix in WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(prefix))
    lines = dict(LOG_LINES)
    if not torch.cuda.is_available():
        # DeepSpeed says so whenever something imports it on a machine without GPUs: true, and not news there.
        lines["DeepSpeed"] = ("Setting accelerator to CPU", "DeepSpeed imported on a CPU machine")
    for name, (prefix, _why) in lines.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))
