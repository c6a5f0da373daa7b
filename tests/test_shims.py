"""The private library internals in litft/shims still exist in the installed libraries."""

from __future__ import annotations

import functools

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
    save = inspect.getsource(ModelCheckpoint._save_checkpoint)
    assert "self._last_global_step_saved = trainer.global_step" in save, hint
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


def _check_members(cls, hooks: dict, hint: str) -> None:
    import inspect

    for name, params in hooks.items():
        member = getattr(cls, name, None)
        assert callable(member), f"{hint}: {cls.__name__}.{name} is gone"
        assert tuple(inspect.signature(member).parameters) == params, f"{hint}: {cls.__name__}.{name}{params} changed"


class _Recorder:
    """Stands for a callable of Lightning's: records its arguments, returns ``result``."""

    def __init__(self, result=None):
        self.calls, self.result = [], result

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result


def test_lightning_ddp_strategy_members_the_hooks_rely_on(monkeypatch):
    from contextlib import contextmanager
    from datetime import timedelta

    import lightning
    import torch
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.strategies import DDPStrategy
    from lightning.pytorch.strategies import ddp as lightning_ddp

    from litft.shims import lightning as shim
    from litft.shims.lightning import DDP_STRATEGY_HOOKS, DDPStrategyHooks

    hint = f"lightning {lightning.__version__}: update litft/shims/lightning.py (DDPStrategyHooks)"
    _check_members(DDPStrategy, DDP_STRATEGY_HOOKS, hint)
    for name in ("_init_dist_connection", "DistributedDataParallel"):  # what the stock code below is driven through
        assert hasattr(lightning_ddp, name), f"{hint}: lightning.pytorch.strategies.ddp no longer uses {name}"
    added = {n for n in vars(DDPStrategyHooks) if not n.startswith("_")}  # the public names the shim adds
    assert added == {"ddp_wrap_context", "setup_distributed_unbound"}
    assert not {n for n in added | {"default_process_group_backend"} if hasattr(DDPStrategy, n)}, hint

    events = []

    class Hooked(DDPStrategyHooks):
        def default_process_group_backend(self):
            return "my-backend"

        @contextmanager
        def ddp_wrap_context(self):
            events.append("enter")
            yield
            events.append("exit")

    def strategy(**kwargs):
        return Hooked(parallel_devices=[torch.device("cpu")], cluster_environment=LightningEnvironment(),
                      timeout=timedelta(seconds=77), **kwargs)

    # The backend: Lightning's setup_distributed asks _get_process_group_backend, which asks the hook unless a
    # backend was given; setup_distributed_unbound initializes the process group exactly as Lightning does on CPU.
    stock, mine = _Recorder(), _Recorder()
    monkeypatch.setattr(lightning_ddp, "_init_dist_connection", stock)
    monkeypatch.setattr(shim, "_init_dist_connection", mine)
    for given, backend in ((None, "my-backend"), ("given-backend", "given-backend")):
        lightnings, ours = strategy(process_group_backend=given), strategy(process_group_backend=given)
        lightnings.setup_distributed()
        ours.setup_distributed_unbound()
        assert lightnings.process_group_backend == ours.process_group_backend == backend, hint
        assert len(stock.calls) == len(mine.calls) == 1, hint
        (args, kwargs), (our_args, our_kwargs) = stock.calls.pop(), mine.calls.pop()
        assert args[1:] == our_args[1:] == (backend,) and kwargs == our_kwargs, hint
        assert kwargs == {"timeout": timedelta(seconds=77), "device_id": None}, hint
    # Wrapping the model: Lightning's configure_ddp calls _setup_model, which wraps it inside the hook's context with
    # the constructor's DDP arguments, as Lightning's own _setup_model does.
    wrapped = object()
    for module in (lightning_ddp, shim):
        monkeypatch.setattr(module, "DistributedDataParallel",
                            _Recorder(wrapped) if module is lightning_ddp else lambda **kw: events.append(kw) or wrapped)
    ours = strategy(find_unused_parameters=True, gradient_as_bucket_view=True)
    ours.model = model = BoringModel()
    ours.configure_ddp()
    assert ours.model is wrapped, hint
    assert events == ["enter", {"module": model, "device_ids": None, "find_unused_parameters": True,
                                "gradient_as_bucket_view": True}, "exit"], hint
    DDPStrategy._setup_model(ours, model)
    assert lightning_ddp.DistributedDataParallel.calls == [((), events[1])], hint


def test_lightning_deepspeed_strategy_members_the_hooks_rely_on(monkeypatch):
    import inspect
    from datetime import timedelta

    pytest.importorskip("deepspeed")
    import deepspeed
    import lightning
    import torch
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch import Trainer
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from litft.shims.lightning import DEEPSPEED_STRATEGY_HOOKS, DeepSpeedStrategyHooks

    hint = f"lightning {lightning.__version__}: update litft/shims/lightning.py (DeepSpeedStrategyHooks)"
    _check_members(DeepSpeedStrategy, DEEPSPEED_STRATEGY_HOOKS, hint)
    added = {n for n in vars(DeepSpeedStrategyHooks) if not n.startswith("_")}
    assert added == {"complete_config"} and not hasattr(DeepSpeedStrategy, "complete_config"), hint
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for name, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29555"), ("RANK", "0"), ("WORLD_SIZE", "1"),
                        ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)  # Lightning sets them before deepspeed.init_distributed: restored afterwards

    class Hooked(DeepSpeedStrategyHooks):
        def default_process_group_backend(self):
            return "my-backend"

    # The backend: Lightning's setup_distributed gives deepspeed.init_distributed what the hook says.
    init = _Recorder()
    monkeypatch.setattr(deepspeed, "init_distributed", init)
    for given, backend in ((None, "my-backend"), ("given-backend", "given-backend")):
        strategy = Hooked(stage=2, parallel_devices=[torch.device("cpu", 0)], process_group_backend=given,
                          cluster_environment=LightningEnvironment(), timeout=timedelta(seconds=77))
        strategy.setup_distributed()
        assert strategy.process_group_backend == backend, hint
        assert init.calls == [((backend,), {"distributed_port": 29555, "timeout": timedelta(seconds=77)})], hint
        init.calls.clear()
    # complete_config: what Lightning runs first in setup and model_sharded_context, filling the config from the trainer.
    for caller in (DeepSpeedStrategy.setup, DeepSpeedStrategy.model_sharded_context):
        assert "self._init_config_if_needed()" in inspect.getsource(caller), f"{hint}: {caller.__qualname__}"
    strategy = DeepSpeedStrategyHooks(stage=2)
    Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False, precision="bf16-mixed")
    assert "bf16" not in strategy.config
    strategy.complete_config()
    assert strategy.config.get("bf16") == {"enabled": True}, hint
    strategy.config["bf16"] = "as set after the first call"
    strategy.complete_config()  # once only: Lightning's setup runs it again after model_sharded_context
    assert strategy.config["bf16"] == "as set after the first call", hint


# -- every library-private name litft uses lives in litft/shims ----------------------------------------------------
# A scan of litft/**/*.py outside litft/shims for: imports of private names or modules of other packages
# (``from lightning.x import _y``, ``import torch._dynamo``); ``obj._x`` / ``getattr(obj, "_x")`` on objects that are
# not litft's own (a name litft does not define); and ``self._x`` / ``super()._x`` / ``def _x`` inside a litft class
# when a library base class of it defines ``_x`` (a protected method or attribute of Lightning, torch, ...).

KNOWN_PRIVATE_USES: set[tuple[str, str]] = set()  # issue 21: every known use moved into litft/shims
"""(file, name) pairs still to move into litft/shims; remove an entry when its use is gone (the test says so)."""

PUBLIC_UNDERSCORE_NAMES = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}  # namedtuple's public API


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORE_NAMES


def _private_uses(tree):
    """(line, name, kind, class qualname) for every private name in ``tree``; kind: import, self, other."""
    import ast

    uses, classes = [], []

    def owner_is_self(node) -> bool:
        if isinstance(node, ast.Name):
            return node.id in ("self", "cls") and bool(classes)
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"
                and bool(classes))

    class Visitor(ast.NodeVisitor):
        def visit_ClassDef(self, node):
            classes.append(node.name)
            self.generic_visit(node)
            classes.pop()

        def visit_FunctionDef(self, node):  # a method that may override a library's protected one
            if classes and _private(node.name):
                uses.append((node.lineno, node.name, "self", ".".join(classes)))
            self.generic_visit(node)

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_Import(self, node):
            for alias in node.names:
                if alias.name.split(".")[0] != "litft" and any(map(_private, alias.name.split("."))):
                    uses.append((node.lineno, alias.name, "import", None))

        def visit_ImportFrom(self, node):
            module = node.module or ""
            if node.level or module.split(".")[0] == "litft":
                return
            if any(map(_private, module.split("."))):
                uses.append((node.lineno, module, "import", None))
            uses.extend((node.lineno, a.name, "import", None) for a in node.names if _private(a.name))

        def visit_Attribute(self, node):
            if _private(node.attr):
                kind = "self" if owner_is_self(node.value) else "other"
                uses.append((node.lineno, node.attr, kind, ".".join(classes) or None))
            self.generic_visit(node)

        def visit_Call(self, node):
            if (isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                    and isinstance(node.args[1].value, str) and _private(node.args[1].value)):
                kind = "self" if owner_is_self(node.args[0]) else "other"
                uses.append((node.lineno, node.args[1].value, kind, ".".join(classes) or None))
            self.generic_visit(node)

    Visitor().visit(tree)
    return uses


def _own_names(tree):
    """Private names a module defines itself: module-level and class-level names, methods, ``self._x = ...``."""
    import ast

    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name)
              and node.value.id == "self"):
            names.add(node.attr)
    return {n for n in names if _private(n)}


@functools.cache
def _self_attributes(cls) -> frozenset:
    """The ``self.<name>`` attributes a class's own source mentions (empty without source)."""
    import inspect
    import re

    try:
        return frozenset(re.findall(r"\bself\.(\w+)", inspect.getsource(cls)))
    except (OSError, TypeError):
        return frozenset()


def _library_defines(cls, name: str, is_own) -> bool:
    """Whether a class in ``cls``'s MRO that is not litft's own defines ``name`` (as a member or as ``self.name``)."""
    return any(name in vars(base) or name in _self_attributes(base)
               for base in cls.__mro__ if not is_own(base) and base is not object)


def _violations(files: dict, modules: dict, own_prefix: str = "litft") -> set:
    """(path, name) of the library-private uses in ``files`` ({path: source}); ``modules`` maps a path to a function
    that imports its module (only called for a class whose ``self._x`` needs its library bases looked at)."""
    import ast

    def is_own(cls) -> bool:
        return cls.__module__.split(".")[0] == own_prefix

    uses = {path: _private_uses(ast.parse(source)) for path, source in files.items()}
    own = set().union(*(_own_names(ast.parse(source)) for source in files.values()))
    found = set()
    for path, path_uses in uses.items():  # imports, and self._x of what a library base class defines
        for _, name, kind, qualname in path_uses:
            if kind == "import":
                found.add((path, name))
            elif kind == "self":
                cls = modules[path]()
                for part in qualname.split("."):
                    cls = getattr(cls, part)
                if _library_defines(cls, name, is_own):
                    found.add((path, name))
    own -= {name for _, name in found}  # litft assigns them, but they are a library's
    for path, path_uses in uses.items():  # obj._x: fine only for a name litft defines (or marks as its own)
        found |= {(path, name) for _, name, kind, _ in path_uses
                  if kind == "other" and name not in own and not name.startswith("_litft")}
    return found


def test_the_private_name_scan_finds_library_internals_and_passes_our_own():
    import types

    source = """
import torch._C
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.fabric.utilities.device_parser import _select_auto_accelerator


class Mine(ModelCheckpoint):
    def __init__(self):
        super().__init__()
        self._mine = 1

    def _save_checkpoint(self, trainer, filepath):
        super()._save_checkpoint(trainer, filepath)
        return self._last_global_step_saved, self._mine, self._helper()

    def _helper(self):
        return trainer._signal_connector, getattr(trainer.strategy, "_checkpoint_io", None), handler._litft_mark


def outside(mine, point):
    return mine._mine, point._replace(x=1), mine._save_checkpoint
"""
    module = types.ModuleType("fake")
    exec(compile(source, "fake.py", "exec"), module.__dict__)
    found = _violations({"fake.py": source}, {"fake.py": lambda: module}, own_prefix="fake")
    assert found == {("fake.py", name) for name in (
        "torch._C", "_select_auto_accelerator", "_save_checkpoint", "_last_global_step_saved", "_signal_connector",
        "_checkpoint_io")}


def test_library_private_names_are_used_only_in_shims():
    import importlib
    from pathlib import Path

    import litft

    root = Path(litft.__file__).parent
    files, modules = {}, {}
    for file in sorted(root.rglob("*.py")):
        rel = file.relative_to(root.parent)
        if rel.parts[1] == "shims" or rel.name == "__main__.py":  # __main__ runs at import: it defines no class
            continue
        files[rel.as_posix()] = file.read_text()
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        modules[rel.as_posix()] = lambda name=name: importlib.import_module(name)  # imported only when needed
    found = _violations(files, modules)
    new = sorted(found - KNOWN_PRIVATE_USES)
    assert not new, (
        "library-private names used outside litft/shims (move each into litft/shims/<library>.py with a version "
        f"test in tests/test_shims.py): {new}"
    )
    gone = sorted(KNOWN_PRIVATE_USES - found)
    assert not gone, f"no longer used: remove these from KNOWN_PRIVATE_USES in tests/test_shims.py: {gone}"
