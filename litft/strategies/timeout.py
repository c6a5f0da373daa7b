"""Process-group timeouts: long until the first optimizer step, bounded after it.

Start-up can legitimately keep one rank far behind the others in a collective: loading a 70B model from a shared
filesystem, preparing data, DeepSpeed's set-up (a JIT build on one node), the communicators' own set-up in the first
collectives. A training step cannot: once training runs, a rank that hangs or dies must end the job within minutes
rather than torch's 10 (NCCL) or 30 (gloo, Lightning) minutes. So every process group litft creates (DDP and
DeepSpeed) starts with ``LITFT_DIST_STARTUP_TIMEOUT`` seconds (default 3600), and every process group of the job
(DeepSpeed's own included) switches to ``LITFT_DIST_TIMEOUT`` seconds (default 300) at the end of the first optimizer
step (:class:`StartupTimeout`). The switch is local (no collective) and happens at the same point of every rank's
program: the first step's gradient reduction has just brought the ranks together, so none waits in a collective of
the second step under a timeout the others have not reached. A resumed run switches after its own first step.

A strategy's own ``timeout`` argument is used for both phases. Runs that never take an optimizer step (validate,
test, predict) keep the start-up timeout. The data cache is not waited for in a collective (``litft.data.cache``),
so a long tokenization never counts against either.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

from litft.errors import LitFTError
from litft.shims.torch import process_groups, set_group_timeout

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0
ENV = "LITFT_DIST_TIMEOUT"
DEFAULT_STARTUP_TIMEOUT_S = 3600.0
STARTUP_ENV = "LITFT_DIST_STARTUP_TIMEOUT"


def _seconds(env: str, default: float) -> timedelta:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return timedelta(seconds=default)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise LitFTError(f"{env}={raw!r}: expected a number of seconds > 0")
    return timedelta(seconds=seconds)


def dist_timeout() -> timedelta:
    """The bounded timeout after the first optimizer step: ``LITFT_DIST_TIMEOUT`` (seconds, > 0), default 300."""
    return _seconds(ENV, DEFAULT_TIMEOUT_S)


def startup_timeout() -> timedelta:
    """The timeout until the first optimizer step: ``LITFT_DIST_STARTUP_TIMEOUT`` (seconds, > 0), default 3600."""
    return _seconds(STARTUP_ENV, DEFAULT_STARTUP_TIMEOUT_S)


def apply_timeout(timeout: timedelta) -> list[str]:
    """Set ``timeout`` on every process group of this process; returns the backends that could not take it."""
    refused = []
    for group in process_groups():
        if not set_group_timeout(group, timeout):
            refused.append(group.name())  # the backend, e.g. hccl
    return refused


class StartupTimeout:
    """Strategy mixin (listed before the Lightning strategy): the start-up timeout until the first optimizer step,
    the bounded one after it. Call :meth:`_startup_timeout_for` in ``__init__`` for the process group's timeout."""

    def _startup_timeout_for(self, timeout: timedelta | None) -> timedelta:
        """Remember both phases (an explicit ``timeout`` serves both); returns the timeout to create groups with."""
        if timeout is not None:
            self._phase_timeouts = (timeout, timeout)
        else:
            self._phase_timeouts = (startup_timeout(), dist_timeout())
        self._timeout_bounded = False
        return self._phase_timeouts[0]

    def setup(self, trainer: Any) -> None:
        super().setup(trainer)  # type: ignore[misc]
        if not self._timeout_bounded:
            # groups created during set-up (DeepSpeed's data-parallel groups get torch's default otherwise)
            apply_timeout(self._phase_timeouts[0])

    def optimizer_step(self, *args: Any, **kwargs: Any) -> Any:
        output = super().optimizer_step(*args, **kwargs)  # type: ignore[misc]
        if not self._timeout_bounded:
            self._timeout_bounded = True
            startup, bounded = self._phase_timeouts
            refused = apply_timeout(bounded)
            if refused:
                log.warning(f"dist: the process groups {', '.join(refused)} cannot change their timeout: they keep "
                            f"{startup.total_seconds():g} s (set {STARTUP_ENV} lower for a shorter one)")
            elif getattr(self, "is_global_zero", True) and startup != bounded:
                log.info(f"dist: collective timeout {bounded.total_seconds():g} s from the first optimizer step on "
                         f"({startup.total_seconds():g} s before it)")
        return output
