"""Preemption signals that arrive before the trainer exists (while Python imports torch and Lightning).

``python -m litft`` inside a SLURM job step calls :func:`record_early` first thing, so a ``SIGUSR1`` / ``SIGTERM``
sent in the first seconds of a job is recorded instead of killing the process (their default action);
:class:`litft.callbacks.preemption.Preemption` takes the request over when it installs its own handlers.
Standard library only: this runs before any heavy import.
"""

from __future__ import annotations

import atexit
import os
import signal
from typing import Optional

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
_requested: Optional[int] = None


def _record(signum, frame) -> None:
    global _requested
    if _requested is None:
        _requested = signum


def record_early(env=os.environ) -> bool:
    """Inside a SLURM job step, record SIGUSR1/SIGTERM from now on (returns whether it did)."""
    if "SLURM_JOB_ID" not in env or ("SLURM_STEP_ID" not in env and "SLURM_STEPID" not in env):
        return False
    for sig in SIGNALS:
        signal.signal(sig, _record)
    # Python's finalization puts the default action (terminate) back on every signal it handled: a preemption
    # signal in the last instants of a finished run would turn its exit code into "killed by a signal".
    atexit.register(_ignore)
    return True


def _ignore() -> None:
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def early_request() -> Optional[int]:
    """The signal recorded before the trainer existed, if any."""
    return _requested
