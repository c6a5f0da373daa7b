"""Lightning internals litft relies on (checked against lightning 2.6.6)."""

from __future__ import annotations

from typing import Literal, Union

from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

PRECISION_INPUT = Union[Literal["auto"], _PRECISION_INPUT]
"""Lightning's own precision choices (kept private by Lightning) plus litft's "auto", so the CLI accepts
exactly what the installed Lightning accepts and never drifts from it."""
