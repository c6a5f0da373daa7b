"""The process-group timeout: bounded and configurable, so a job whose rank died ends instead of waiting.

torch's defaults (10 min for NCCL, 30 min for gloo; Lightning passes 30 min) leave the surviving ranks of a job
blocked in a collective for that long after one rank was killed. litft uses ``LITFT_DIST_TIMEOUT`` seconds
(default 300) for every process group it creates (DDP and DeepSpeed); a strategy's own ``timeout`` argument wins.
A collective that legitimately takes longer (none in a LoRA step) needs a larger value. The data cache is not
waited for in a collective (``litft.data.cache``), so a long tokenization does not count against it.
"""

from __future__ import annotations

import os
from datetime import timedelta

from litft.errors import LitFTError

DEFAULT_TIMEOUT_S = 300.0
ENV = "LITFT_DIST_TIMEOUT"


def dist_timeout() -> timedelta:
    """``LITFT_DIST_TIMEOUT`` (seconds, > 0) or :data:`DEFAULT_TIMEOUT_S`."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise LitFTError(f"{ENV}={raw!r}: expected a number of seconds > 0")
    return timedelta(seconds=seconds)
