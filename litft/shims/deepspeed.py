"""DeepSpeed internals litft relies on (checked against deepspeed 0.19.8)."""

from __future__ import annotations

import torch

CONVERT_ATTR = "convert_to_zero_parameters"
"""Method DeepSpeed's ``zero.Init`` attaches to every parameter it partitions: partitions more parameters with that
same ``Init`` (its process groups, hpZ sub-group and remote device). The ZeRO-3 engine partitions the parameters added
to a partitioned model with it (``DeepSpeedZeRoOffload._convert_to_zero_parameters``); a second ``zero.Init`` would
create the hpZ sub-group again, which DeepSpeed refuses."""


def partition_like(partitioned: torch.nn.Parameter, params: list[torch.nn.Parameter]) -> None:
    """Partition ``params`` the way ``partitioned`` (a ZeRO-3 parameter) was."""
    getattr(partitioned, CONVERT_ATTR)(params)
