"""The private library internals in litft/shims still exist in the installed libraries."""

from __future__ import annotations

import pytest


def test_bitsandbytes_linear4bit_has_the_cpu_packing_flag():
    bnn = pytest.importorskip("bitsandbytes.nn")
    from litft.shims.bitsandbytes import CPU_PACKING_FLAG

    layer = bnn.Linear4bit(8, 8)
    assert hasattr(layer, CPU_PACKING_FLAG), (
        f"bitsandbytes {__import__('bitsandbytes').__version__}: Linear4bit has no `{CPU_PACKING_FLAG}` any more; "
        "check litft/shims/bitsandbytes.py (is eval-time CPU repacking still there, and how is it turned off now?)"
    )


def test_lightning_precision_choices_are_importable_and_include_ours():
    import typing

    import lightning

    try:
        from litft.shims.lightning import PRECISION_INPUT
    except ImportError as err:
        pytest.fail(f"lightning {lightning.__version__}: {err}; update litft/shims/lightning.py")

    def flatten(t):
        args = typing.get_args(t)
        return [x for a in args for x in flatten(a)] if args else [t]

    choices = set(flatten(PRECISION_INPUT))
    assert {"auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"} <= choices, choices


def test_lightning_signal_connector_is_where_the_shim_expects_it():
    import inspect
    import signal

    import lightning
    import lightning.pytorch as pl
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    from litft.shims.lightning import leave_signals_alone

    hint = f"lightning {lightning.__version__}: update litft/shims/lightning.py (leave_signals_alone)"
    # Lightning still installs its handlers from Trainer._run through the connector the shim replaces ...
    assert "self._signal_connector.register_signal_handlers()" in inspect.getsource(pl.Trainer._run), hint
    assert {"register_signal_handlers", "teardown"} <= set(vars(_SignalConnector)), hint
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    connector = trainer._signal_connector
    assert isinstance(connector, _SignalConnector) and hasattr(connector, "_original_handlers"), hint
    # ... and the trainer's received_sigterm is the connector's flag (what the loops check to raise SIGTERMException).
    connector.received_sigterm = True
    assert trainer.received_sigterm, hint

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    leave_signals_alone(trainer)
    connector.register_signal_handlers()  # what Trainer._run calls: now installs nothing, clears the flag
    try:
        assert {s: signal.getsignal(s) for s in before} == before
        assert not trainer.received_sigterm
        connector.teardown()
        assert {s: signal.getsignal(s) for s in before} == before
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_torch_process_group_timeouts_can_be_listed_changed_and_read_back():
    import socket
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    from litft.shims.torch import group_timeout, process_groups, set_group_timeout

    hint = f"torch {torch.__version__}: update litft/shims/torch.py"
    # the setter: ProcessGroup.set_timeout from torch 2.9, distributed_c10d._set_pg_timeout before (2.3-2.8)
    assert hasattr(c10d.ProcessGroup, "set_timeout") or hasattr(c10d, "_set_pg_timeout"), hint
    assert hasattr(c10d, "_world") and hasattr(c10d, "_rank_not_in_group"), hint
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    assert process_groups() == []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=timedelta(seconds=123))
    try:
        extra = dist.new_group([0])
        groups = process_groups()
        assert dist.group.WORLD in groups and extra in groups and len(groups) == 2, hint
        assert group_timeout(dist.group.WORLD) == timedelta(seconds=123), hint
        assert set_group_timeout(extra, timedelta(seconds=4.5)) and set_group_timeout(dist.group.WORLD, timedelta(seconds=9))
        assert (group_timeout(extra), group_timeout(dist.group.WORLD)) == (timedelta(seconds=4.5), timedelta(seconds=9))
        if hasattr(c10d, "_set_pg_timeout"):  # the path torch < 2.9 takes
            c10d._set_pg_timeout(timedelta(seconds=7), extra)
            assert group_timeout(extra) == timedelta(seconds=7), hint
    finally:
        dist.destroy_process_group()

    class Refusing:  # a backend without setTimeout (what torch raises for it)
        def set_timeout(self, timeout):
            raise RuntimeError("Backend hccl does not support setting timeout")

    assert set_group_timeout(Refusing(), timedelta(seconds=1)) is False
