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


def test_lightning_auto_accelerator_is_what_lightning_itself_picks():
    import inspect

    import lightning
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    from litft.shims.lightning import select_auto_accelerator

    hint = f"lightning {lightning.__version__}: update litft/shims/lightning.py (select_auto_accelerator)"
    assert "_select_auto_accelerator()" in inspect.getsource(_AcceleratorConnector._choose_auto_accelerator), hint
    assert select_auto_accelerator() in {"tpu", "mps", "cuda", "cpu"}, hint
    assert select_auto_accelerator() == _AcceleratorConnector._choose_auto_accelerator(), hint


def test_lightning_model_checkpoint_members_the_hooks_rely_on(tmp_path):
    import inspect
    import os
    from types import SimpleNamespace

    import lightning
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.trainer.connectors import checkpoint_connector

    from litft.shims.lightning import MODEL_CHECKPOINT_HOOKS, ModelCheckpointHooks

    hint = f"lightning {lightning.__version__}: update litft/shims/lightning.py (ModelCheckpointHooks)"
    for name, params in MODEL_CHECKPOINT_HOOKS.items():
        member = getattr(ModelCheckpoint, name, None)
        assert callable(member), f"{hint}: ModelCheckpoint.{name} is gone"
        assert tuple(inspect.signature(member).parameters) == params, f"{hint}: ModelCheckpoint.{name}{params} changed"
    # Where Lightning calls them: ckpt_path="last" asks every ModelCheckpoint for its last files, saving "last"
    # writes through _save_checkpoint (which records the step) and removes the previous file through _remove_checkpoint.
    assert "callback._find_last_checkpoints(self.trainer)" in inspect.getsource(
        checkpoint_connector._CheckpointConnector._parse_ckpt_path), hint
    save_last = inspect.getsource(ModelCheckpoint._save_last_checkpoint)
    assert "self._save_checkpoint(trainer, filepath)" in save_last, hint
    assert "self._remove_checkpoint(trainer, previous)" in save_last, hint
    assert "self._last_global_step_saved = trainer.global_step" in inspect.getsource(ModelCheckpoint._save_checkpoint), hint
    # The public names the shim adds do not shadow anything of ModelCheckpoint's.
    added = set(vars(ModelCheckpointHooks)) - set(MODEL_CHECKPOINT_HOOKS) - {"__module__", "__doc__", "__qualname__"}
    assert added == {"before_find_last", "after_file_saved", "after_file_removed", "last_saved_step", "write_last"}
    assert not {n for n in added if hasattr(ModelCheckpoint, n) or hasattr(Callback, n)}, hint

    # And they work, through Lightning's own code (a stand-in trainer that writes empty files).
    calls = []

    class Recorder(ModelCheckpointHooks):
        CHECKPOINT_NAME_LAST = "last-{step}"  # a new name per step, so the previous "last" is removed

        def before_find_last(self, trainer):
            calls.append("find")

        def after_file_saved(self, trainer, filepath):
            calls.append(("saved", os.path.basename(filepath), self.last_saved_step))

        def after_file_removed(self, trainer, filepath):
            calls.append(("removed", os.path.basename(filepath), os.path.exists(filepath)))

    strategy = SimpleNamespace(broadcast=lambda x: x, remove_checkpoint=os.remove)
    trainer = SimpleNamespace(
        global_step=3, current_epoch=0, callback_metrics={}, ckpt_path=None, is_global_zero=True, loggers=[],
        strategy=strategy, save_checkpoint=lambda path, weights_only=False: open(path, "w").close(),
    )
    cb = Recorder(dirpath=str(tmp_path), save_last=True, save_top_k=0, enable_version_counter=False)
    cb.setup(trainer, None, "fit")
    assert cb.last_saved_step == 0
    cb.write_last(trainer)
    trainer.global_step = 5
    cb.write_last(trainer)
    assert calls == [("saved", "last-step=3.ckpt", 3), ("saved", "last-step=5.ckpt", 5),
                     ("removed", "last-step=3.ckpt", False)], hint
    cb.CHECKPOINT_NAME_LAST, trainer.global_step = "last", 7  # the name litft uses, which ckpt_path="last" finds
    cb.write_last(trainer)
    assert calls[3:] == [("saved", "last.ckpt", 7), ("removed", "last-step=5.ckpt", False)], hint
    assert cb._find_last_checkpoints(trainer) == {str(tmp_path / "last.ckpt")} and calls[-1] == "find", hint
