"""ZeRO-3 partitions for a quantized base model, which transformers does not load into partitions itself.

transformers loads a plain model under ZeRO-3 straight into partitions (``deepspeed.zero.Init``), not a
bitsandbytes-quantized one: it builds the 4-bit model on the meta device and loads it whole onto the rank's device.
Left so, every rank holds the whole 4-bit base until ``deepspeed.initialize`` partitions it.

:func:`loading_into_partitions` partitions each weight as ``from_pretrained`` assigns it to its module, through
DeepSpeed's documented way of partitioning allocated parameters (``deepspeed.zero.Init(module=...)``: rank 0's
values are broadcast, each rank keeps its 1/world slice, the full tensor is freed). The loader keeps its own
reference to the tensor it just loaded until it loads the next one, so that tensor's storage is freed too once it is
partitioned. A rank so holds its partitions of the weights loaded so far plus one whole weight (and that weight's
quantization temporaries), never the whole base. 4-bit weights are partitioned like any parameter (stored in the
compute dtype under ZeRO-3, ``bnb_4bit_quant_storage``); their quantization states (absmax, code tables: ~0.13 bit
per weight with double quantization, plus ~1 KB per weight matrix) stay whole on every rank, beside the layer that
uses them. Weights the checkpoint lacks are left to transformers to initialise; :func:`partition_now` then
partitions whatever the loading did not (those, or every weight with a transformers that does not flag the weights it
loads: the peak is then the whole 4-bit base, no more).

The engine then finds a ZeRO-3 model: it partitions only what was added since (the adapters) and casts nothing
(the frozen base keeps its storage dtype).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn.modules.module import register_module_parameter_registration_hook

from litft.shims.deepspeed import partition_like
from litft.shims.transformers import loaded_from_checkpoint


def _partition(params: list[torch.nn.Parameter], ds_config: dict[str, Any], owner: torch.nn.Module,
               partitioned: torch.nn.Parameter | None) -> None:
    """Partition ``params`` (all of ``owner``'s not partitioned yet): as the ZeRO-3 engine does, like a parameter
    already partitioned when there is one (same groups and devices), else with ``deepspeed.zero.Init(module=owner)``."""
    if partitioned is not None:
        partition_like(partitioned, params)
    else:
        import deepspeed  # optional, heavy: only under ZeRO-3

        deepspeed.zero.Init(module=owner, config_dict_or_path=ds_config)


@contextlib.contextmanager
def loading_into_partitions(ds_config: dict[str, Any]) -> Iterator[None]:
    """While active, a parameter filled from the checkpoint is partitioned as it is assigned to its module
    (a collective: every rank must load the same weights in the same order, as ``from_pretrained`` does)."""
    from deepspeed.runtime.zero.utils import is_zero_param  # optional, heavy: only under ZeRO-3

    busy = False
    first: list[torch.nn.Parameter] = []

    def on_register(module: torch.nn.Module, name: str, param: Any) -> None:
        nonlocal busy
        if busy or param is None or param.device.type == "meta" or is_zero_param(param):
            return None
        if not loaded_from_checkpoint(param):  # to be initialised by transformers: partitioned after that
            return None
        # transformers' loader keeps its own reference to the tensor it loaded until it loads the next weight:
        # free the memory of a tensor that owns its storage once partitioned (not a view into a memory-mapped file)
        storage = param.data.untyped_storage()
        owned = storage.resizable() and param.data.storage_offset() == 0 and storage.nbytes() == param.data.nbytes
        busy = True  # the holder's own registration below comes back here
        try:
            holder = torch.nn.Module()
            holder.weight = param
            _partition([param], ds_config, holder, first[0] if first else None)
        finally:
            busy = False
        if not first:
            first.append(param)
        if owned and storage.data_ptr() != param.data.data_ptr():
            storage.resize_(0)
        return None

    handle = register_module_parameter_registration_hook(on_register)
    try:
        yield
    finally:
        handle.remove()


def partition_now(model: torch.nn.Module, ds_config: dict[str, Any]) -> None:
    """Partition every parameter of ``model`` not partitioned yet (collective: all ranks call it)."""
    from deepspeed.runtime.zero.utils import is_zero_param  # optional, heavy: only under ZeRO-3

    params = list(model.parameters())
    rest = [p for p in params if not is_zero_param(p)]
    if rest:
        _partition(rest, ds_config, model, next((p for p in params if is_zero_param(p)), None))
