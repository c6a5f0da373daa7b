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


def test_transformers_flags_the_weights_it_loads_from_the_checkpoint(tiny_llama, tmp_path):
    """litft.model.partition partitions a weight as it loads only when transformers flags it as loaded."""
    import transformers
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from litft.shims.transformers import LOADED_FLAG, loaded_from_checkpoint

    folder = tmp_path / "model"
    AutoModelForCausalLM.from_pretrained(tiny_llama).save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k != "model.norm.weight"}, folder / "model.safetensors",
              metadata={"format": "pt"})
    seen = {}
    from torch.nn.modules.module import register_module_parameter_registration_hook

    def hook(module, name, param):  # the flag must be set when the weight is assigned, not later
        if param is not None and param.device.type != "meta":
            seen[id(param)] = loaded_from_checkpoint(param)

    handle = register_module_parameter_registration_hook(hook)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder)
    finally:
        handle.remove()
    flags = {n: seen.get(id(p)) for n, p in model.named_parameters()}
    where = f"transformers {transformers.__version__}: check `{LOADED_FLAG}` in litft/shims/transformers.py"
    assert flags.pop("model.norm.weight") is not True, where  # missing from the checkpoint: initialised later
    assert set(flags.values()) == {True}, (where, flags)


def test_deepspeed_partitioned_parameters_carry_their_convert_method():
    """litft.model.partition partitions later weights like the first (as DeepSpeed's ZeRO-3 engine does)."""
    import inspect

    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.partition_parameters import Init

    from litft.shims.deepspeed import CONVERT_ATTR

    source = inspect.getsource(Init._convert_to_deepspeed_param)
    assert f"param.{CONVERT_ATTR} = " in source, (
        f"deepspeed {__import__('deepspeed').__version__}: zero.Init no longer attaches `{CONVERT_ATTR}` to the "
        "parameters it partitions; check litft/shims/deepspeed.py")


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
