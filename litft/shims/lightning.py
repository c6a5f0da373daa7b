"""Lightning internals litft relies on (checked against lightning 2.6.6)."""

from __future__ import annotations

from typing import Literal, Union

from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

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
