"""``python -m litft``: Lightning's fit / validate / test / predict, plus litft's own commands.

Lightning subcommands go through :class:`LitFTCLI` (a LightningCLI). Every other command lives in
its own module ``litft/commands/<name>.py`` with ``add_arguments(parser)`` and ``run(cli)``; it gets the same
config parsing (``--config``, dotted overrides) as ``fit``, and the model and data module without a Trainer.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from types import ModuleType

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from litft import accelerators, strategies
from litft.console import quiet_library_noise
from litft.data.datamodule import LitFTDataModule
from litft.errors import LitFTError
from litft.io import atomic_write
from litft.methods import data_kind
from litft.model.module import LitFTModule
from litft.slurm import setup_rank_logs
from litft.trainer import LitFTTrainer
from litft.versions import check_start

# Lightning's own "predict" is replaced by litft's predict command (batched generation to JSONL).
LIGHTNING_COMMANDS = ("fit", "validate", "test")
# litft's own commands, each the module of that name under litft.commands
EXTRA_COMMANDS = ("prepare", "export", "generate", "chat", "predict", "evaluate", "slurm")

log = logging.getLogger("litft")


class SaveResolvedConfig(SaveConfigCallback):
    """Writes the resolved config to ``<output_dir>/config.yaml`` (atomically), for reproduction."""

    def save_config(self, trainer, pl_module, stage) -> None:
        atomic_write(Path(trainer.default_root_dir) / "config.yaml",
                     lambda tmp: self.parser.save(self.config, tmp, overwrite=True, multifile=False))


class LitFTCLI(LightningCLI):
    """LightningCLI with litft's model, data module and trainer, and the links that keep them consistent."""

    def __init__(self, *args, command: ModuleType | None = None, **kwargs):
        accelerators.register()
        strategies.register()
        self.command = command
        kwargs.setdefault("save_config_callback", SaveResolvedConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True, "save_to_log_dir": False})
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        super().__init__(
            LitFTModule,
            LitFTDataModule,
            *args,
            trainer_class=LitFTTrainer,
            auto_configure_optimizers=False,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--output_dir", type=str, default="outputs/run", help="Where the run writes everything.")
        parser.link_arguments("output_dir", "trainer.default_root_dir")
        # The tokenizer always comes from the model.
        parser.link_arguments("model.name_or_path", "data.tokenizer")
        parser.link_arguments("model.gguf_file", "data.gguf_file")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")
        # Packed batches: varlen position_ids for flash attention, a 4-D block mask otherwise.
        parser.link_arguments("model.attn_implementation", "data.attn_implementation")
        # The data a method consumes: sft -> conversations, dpo/orpo/simpo -> pairs, kto -> judged replies.
        parser.link_arguments("model.method", "data.kind", compute_fn=data_kind)
        if self.command is not None:
            self.command.add_arguments(parser)

    def instantiate_classes(self) -> None:
        if self.command is None:
            return super().instantiate_classes()
        # Commands that run no Trainer (export, generate, slurm, ...) must work on a login node without GPUs.
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = self.config_init.get("data")  # no subcommands here: the keys are at the top level
        self.model = self.config_init.get("model")
        self.trainer = None


def _setup_logging() -> None:
    """litft's messages on stderr as ``[litft] ...`` (once, however often main() runs in a process)."""
    if not any(getattr(h, "_litft", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[litft] %(message)s"))
        handler._litft = True
        log.addHandler(handler)
        setup_rank_logs(log)  # inside a SLURM task started by the sbatch template: one log per rank
    log.setLevel(logging.INFO)


def _usage() -> str:
    names = ", ".join(LIGHTNING_COMMANDS + EXTRA_COMMANDS)
    return f"usage: python -m litft {{{names}}} --config CONFIG.yaml [--key.sub value ...]"


def run(argv: list[str]) -> int:
    """Run one litft command; returns the exit code."""
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        if argv:
            print("Each command takes --help.")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name in LIGHTNING_COMMANDS:
        LitFTCLI(args=argv)
        return 0
    if name in EXTRA_COMMANDS:
        command = importlib.import_module(f"litft.commands.{name}")
        cli = LitFTCLI(args=rest, run=False, command=command)
        return int(command.run(cli) or 0)
    print(f"litft: error: unknown command '{name}'\n{_usage()}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> None:
    _setup_logging()
    quiet_library_noise()
    argv = sys.argv[1:] if argv is None else argv
    try:
        check_start()  # one line naming a core package older than litft supports (litft/versions.py)
        code = run(argv)
    except LitFTError as err:
        print(f"litft: error: {err}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("litft: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
