"""Lightning internals litft relies on (checked against lightning 2.6.6)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal, Union

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT
from lightning.fabric.utilities.device_parser import _select_auto_accelerator
from lightning.fabric.utilities.distributed import _init_dist_connection
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from torch.nn.parallel import DistributedDataParallel

PRECISION_INPUT = Union[Literal["auto"], _PRECISION_INPUT]
"""Lightning's own precision choices (kept private by Lightning) plus litft's "auto", so the CLI accepts
exactly what the installed Lightning accepts and never drifts from it."""


def leave_signals_alone(trainer) -> None:
    """Stop ``trainer`` from installing Lightning's own SIGTERM (and SLURM SIGUSR1) handlers when it runs.

    Lightning installs them in ``Trainer._run``, after the model is set up and before the first hook of the stage:
    its SIGTERM handler runs a ``dist.broadcast`` *inside the handler* (a collective at whatever line each rank is
    on) and sets ``trainer.received_sigterm``, which makes the loops raise ``SIGTERMException`` -- a run that ends
    without saving, not a preemption. litft's :class:`~litft.callbacks.preemption.Preemption` owns both signals
    for the whole run instead. ``_SignalConnector`` is private (lightning 2.6: ``trainer._signal_connector``,
    ``register_signal_handlers``, ``_original_handlers``, ``received_sigterm``); tests/test_shims.py checks them.
    """
    connector = trainer._signal_connector

    def register_signal_handlers() -> None:
        connector.received_sigterm = False
        connector._original_handlers = {}  # nothing replaced: nothing for its teardown to put back

    connector.register_signal_handlers = register_signal_handlers


def select_auto_accelerator() -> str:
    """What Lightning itself picks for ``accelerator="auto"`` ("tpu", "mps", "cuda" or "cpu").

    ``lightning.fabric.utilities.device_parser._select_auto_accelerator`` is private (lightning 2.6.6); it is what
    Lightning's ``_AcceleratorConnector`` calls for "auto", so litft's own choice (which adds NPUs) starts from
    exactly Lightning's. tests/test_shims.py checks that Lightning still calls it there.
    """
    return _select_auto_accelerator()


MODEL_CHECKPOINT_HOOKS = {
    "_find_last_checkpoints": ("self", "trainer"),
    "_save_checkpoint": ("self", "trainer", "filepath"),
    "_remove_checkpoint": ("self", "trainer", "filepath"),
    "_save_last_checkpoint": ("self", "trainer", "monitor_candidates"),
    "_monitor_candidates": ("self", "trainer"),
}
"""The protected ``ModelCheckpoint`` methods :class:`ModelCheckpointHooks` overrides or calls, with their parameters
(lightning 2.6.6). The state it reads is ``_last_global_step_saved`` (set by ``_save_checkpoint``)."""


class ModelCheckpointHooks(ModelCheckpoint):
    """``ModelCheckpoint`` with the protected members litft needs turned into public hooks and helpers.

    Lightning offers no public way to act when a checkpoint file is written or removed, to find ``last.ckpt`` in a
    folder chosen at run time, or to save ``last.ckpt`` on demand, so this class overrides and calls the protected
    members listed in :data:`MODEL_CHECKPOINT_HOOKS`; subclasses use only the public names below.
    tests/test_shims.py checks that each member exists with these parameters and that Lightning still calls it
    where these hooks expect.
    """

    # -- hooks for subclasses ------------------------------------------------------------------------------------
    def before_find_last(self, trainer: "pl.Trainer") -> None:
        """Called before Lightning looks for ``last*.ckpt`` in this callback's folder (``ckpt_path="last"``)."""

    def after_file_saved(self, trainer: "pl.Trainer", filepath: str) -> None:
        """Called on every rank after a checkpoint file was written to ``filepath``."""

    def after_file_removed(self, trainer: "pl.Trainer", filepath: str) -> None:
        """Called on every rank after the checkpoint file ``filepath`` was removed (an older ``last`` / top-k)."""

    # -- helpers for subclasses ----------------------------------------------------------------------------------
    @property
    def last_saved_step(self) -> int:
        """The ``global_step`` of the last checkpoint this callback wrote (0 before the first)."""
        return self._last_global_step_saved

    def write_last(self, trainer: "pl.Trainer") -> None:
        """Save ``last.ckpt`` now (all ranks), replacing the previous one, as Lightning does at its save points."""
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    # -- the protected members -----------------------------------------------------------------------------------
    def _find_last_checkpoints(self, trainer: "pl.Trainer") -> set[str]:
        self.before_find_last(trainer)
        return super()._find_last_checkpoints(trainer)

    def _save_checkpoint(self, trainer: "pl.Trainer", filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self.after_file_saved(trainer, filepath)

    def _remove_checkpoint(self, trainer: "pl.Trainer", filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        self.after_file_removed(trainer, filepath)


# -- DDP and DeepSpeed strategies --------------------------------------------------------------------------------

DDP_STRATEGY_HOOKS = {
    "_get_process_group_backend": ("self",),
    "_setup_model": ("self", "model"),
}
"""The protected ``DDPStrategy`` methods :class:`DDPStrategyHooks` overrides, with their parameters (lightning 2.6.6;
``DeepSpeedStrategy`` inherits the first). The state they read is the constructor's: ``_process_group_backend``,
``_ddp_kwargs`` (DDP's keyword arguments), ``_timeout``; and ``lightning.fabric.utilities.distributed.
_init_dist_connection`` creates the process group."""


class ProcessGroupBackendHook:
    """Mixin (before a Lightning ``DDPStrategy`` or subclass): the process-group backend as a public hook.

    Lightning picks the backend in the protected ``_get_process_group_backend`` (its constructor's
    ``process_group_backend``, else one for the root device), which ``DDPStrategy.setup_distributed`` and
    ``DeepSpeedStrategy`` (before ``deepspeed.init_distributed``) call; this mixin routes it to
    :meth:`default_process_group_backend` when no backend was given.
    """

    def default_process_group_backend(self) -> str:
        """The backend when the strategy was given none (``process_group_backend`` is None); Lightning's choice here."""
        return super()._get_process_group_backend()  # type: ignore[misc]

    def _get_process_group_backend(self) -> str:
        return self.process_group_backend or self.default_process_group_backend()  # type: ignore[attr-defined]


class DDPStrategyHooks(ProcessGroupBackendHook, DDPStrategy):
    """``DDPStrategy`` with the protected members litft needs turned into public hooks and helpers.

    tests/test_shims.py checks that each member in :data:`DDP_STRATEGY_HOOKS` exists with its parameters, that
    Lightning still calls it where these hooks expect, and that the helpers do what Lightning's own code does.
    """

    # -- hooks for subclasses ------------------------------------------------------------------------------------
    def ddp_wrap_context(self) -> AbstractContextManager:
        """The context the model is wrapped in ``DistributedDataParallel`` in. Lightning's: a new CUDA stream on any
        device but the CPU."""
        return torch.cuda.stream(torch.cuda.Stream()) if self.determine_ddp_device_ids() is not None else nullcontext()

    # -- helpers for subclasses ----------------------------------------------------------------------------------
    def setup_distributed_unbound(self) -> None:
        """``DDPStrategy.setup_distributed`` without binding the default process group to the root device
        (``device_id=None``), for backends that bind through ``set_device`` (hccl)."""
        reset_seed()
        self.set_world_ranks()
        self._process_group_backend = self._get_process_group_backend()
        assert self.cluster_environment is not None
        _init_dist_connection(self.cluster_environment, self._process_group_backend, timeout=self._timeout,
                              device_id=None)

    # -- the protected member ------------------------------------------------------------------------------------
    def _setup_model(self, model: torch.nn.Module) -> DistributedDataParallel:
        device_ids = self.determine_ddp_device_ids()
        with self.ddp_wrap_context():
            return DistributedDataParallel(module=model, device_ids=device_ids, **self._ddp_kwargs)


DEEPSPEED_STRATEGY_HOOKS = {
    "_get_process_group_backend": ("self",),
    "_init_config_if_needed": ("self",),
}
"""The protected ``DeepSpeedStrategy`` methods :class:`DeepSpeedStrategyHooks` overrides or calls (lightning 2.6.6)."""


class DeepSpeedStrategyHooks(ProcessGroupBackendHook, DeepSpeedStrategy):
    """``DeepSpeedStrategy`` with the process-group backend as a public hook (:class:`ProcessGroupBackendHook`) and
    a public name for the protected ``_init_config_if_needed``; tests/test_shims.py checks both."""

    def complete_config(self) -> None:
        """Fill ``self.config`` from the trainer (batch size, precision, gradient clipping, ...) once, as Lightning
        does first thing in ``setup`` and ``model_sharded_context``."""
        self._init_config_if_needed()
