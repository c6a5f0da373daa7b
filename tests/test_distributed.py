"""Distributed training on CPU, for real: several processes over gloo, started through ``python -m litft``.

The equivalence matrix: each strategy (DDP, DeepSpeed ZeRO-2, ZeRO-3, and DDP across two "nodes" on
loopback) trains a tiny Llama with LoRA for 4 optimizer steps on 2 processes with micro-batch 2, with
``accumulate_grad_batches`` 1 and 3; a single process with micro-batch 4 and the same accumulation sees
the same global batches. The per-step logged loss and gradient norm and the final adapter must match
that run within LOSS_RTOL / WEIGHT_ATOL (the only differences are float summation order across ranks
and padding widths). The comparison is made scale-sensitive on purpose:

- plain SGD (Adam would hide a constant factor in the gradients) with ``gradient_clip_val`` below the
  larger gradient norms (a wrong scale clips differently) — the reference asserts that it does clip;
- rows of very different lengths, so the two ranks hold different numbers of trained tokens in a step
  (a per-rank mean instead of the global token weighting fails);
- with accumulation 3, an epoch is 5 micro-batches: groups of 3 + 2 per epoch, and steps 2-3 run in the
  second epoch (a group that straddled the epoch end, as DeepSpeed's own micro-step count would make,
  fails).

The A=3 cells train QLoRA (4-bit nf4 base, bitsandbytes on CPU; under ZeRO-3 stored in the compute dtype and
partitioned), so both adapter kinds run distributed at no extra launch; ZeRO-3 also trains LoRA at A=3.

Gradient checkpointing is on in every 2-process run and off in the 1-process references, so each cell also proves
that checkpointing on gives the same per-step loss, gradient norm and adapter as off; single device on vs off is
checked for LoRA and QLoRA at A=3. A probe (tests/gc_probe.py) asserts that it really recomputed: each decoder
layer's forward runs twice per micro-batch with checkpointing, once without. ZeRO-3 partitions every parameter
(``stage3_param_persistence_threshold`` 0: the tiny model's parameters would otherwise all stay whole), which the probe
checks too.

The A=1 runs also save a checkpoint at step 2; resuming from it must end on the same adapter. Each run
tokenizes its data once (rank 0 writes the cache, the other rank loads it).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
STEPS = 4
ROWS = 20
"""20 rows: 5 micro-batches of 2 per rank (or of 4 in one process) per epoch; with accumulation 3 that is
a group of 3 and a group of 2 per epoch, so the 4 steps cross an epoch end."""
LR = 1.0
CLIP = 1.0
"""gradient_clip_val: below the gradient norms of the later steps (the reference checks that it clips)."""
LOSS_RTOL = 1e-4
"""Per-step loss and gradient norm, relative: measured differences are ~1e-7 (float summation order)."""
WEIGHT_ATOL = 1e-4
"""Final adapter weights, absolute (SGD at lr 1.0 moves them by up to CLIP per step)."""


def _write_rows(path: Path) -> str:
    """Alpaca records whose replies range from 1 to 11 words: ranks get unequal trained-token counts."""
    records = [{"instruction": f"What is {i} plus {i}?", "input": "",
                "output": " ".join([str(2 * i)] * (1 + (7 * i) % 11))} for i in range(ROWS)]
    path.write_text(json.dumps(records))
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"))}
    env.update(PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), DS_ACCELERATOR="cpu")
    env.update(extra)
    return env


def _strategy(name: str):
    """ZeRO-3 partitions every parameter: DeepSpeed's default ``stage3_param_persistence_threshold`` (1e5 elements;
    Lightning has no argument for it) would keep all of the tiny model's parameters whole on every rank. Otherwise
    the zero_optimization settings of Lightning's ``deepspeed_stage_3``."""
    if name != "deepspeed_stage_3":
        return name
    zero = {"stage": 3, "contiguous_gradients": True, "overlap_comm": True, "allgather_partitions": True,
            "reduce_scatter": True, "stage3_param_persistence_threshold": 0}
    return {"class_path": "litft.strategies.LitFTDeepSpeedStrategy",
            "init_args": {"config": {"zero_optimization": zero, "zero_allow_untested_optimizer": True}}}


def _write_config(out: Path, model: str, data: str, *, strategy: str, devices: int, batch: int, num_nodes: int = 1,
                  accumulate: int = 1, qlora: bool = False, gc: bool = False):
    config = {
        "output_dir": str(out),
        "seed_everything": 0,
        "model": {"name_or_path": model, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                  "optimizer": {"name": "sgd", "lr": LR}, "scheduler": {"name": "constant"}, "gradient_checkpointing": gc,
                  **({"quantization": {"bits": 4}} if qlora else {})},
        "data": {"dataset": data, "cutoff_len": 48, "batch_size": batch},
        "trainer": {
            "accelerator": "cpu", "devices": devices, "num_nodes": num_nodes, "strategy": _strategy(strategy),
            "max_steps": STEPS, "accumulate_grad_batches": accumulate, "gradient_clip_val": CLIP, "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(out), "name": "", "version": "logs"}},
            "callbacks": [{"class_path": "litft.callbacks.throughput.Throughput", "init_args": {"peak_flops": 1e12}},
                          {"class_path": "tests.gc_probe.CheckpointingProbe", "init_args": {"record_dir": str(out)}},
                          {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(out / "checkpoints"), "every_n_train_steps": 2,
                                         "save_top_k": -1, "filename": "step{step}", "auto_insert_metric_name": False}}],
        },
    }
    path = out.parent / f"{out.name}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(config: Path, *args: str) -> str:
    """Run ``litft fit`` with a fresh data cache under the run's output folder; returns all ranks' output."""
    out = Path(yaml.safe_load(config.read_text())["output_dir"])
    proc = subprocess.run([sys.executable, "-m", "litft", "fit", "--config", str(config), *args], cwd=REPO,
                          env=_env(LITFT_CACHE=str(out / "cache")), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout + proc.stderr


def _assert_tokenized_once(out: Path, log: str, world_size: int) -> None:
    """One tokenized dataset in the run's cache, and every other rank loaded it instead of tokenizing."""
    built = [p for p in (out / "cache" / "data").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(built) == 1, built
    assert log.count("data: reusing the cached dataset") == world_size - 1, log[-3000:]


def _metric(out: Path, name: str) -> list[float]:
    """A per-step metric from the CSV log, in step order (one value per optimizer step)."""
    with open(out / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get(name)]
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == len(set(steps)), f"{name} logged more than once per step: {steps}"
    return [float(r[name]) for r in sorted(rows, key=lambda r: int(r["step"]))]


def _losses(out: Path) -> list[float]:
    return _metric(out, "train/loss")


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def _report(name: str, losses: list[float], ref_losses: list[float], a: dict, b: dict) -> None:
    loss_diff = max(abs(x - y) / abs(y) for x, y in zip(losses, ref_losses))
    weight_diff = max((a[k] - b[k]).abs().max().item() for k in b)
    print(f"\n{name}: max loss rel diff {loss_diff:.2e}, max adapter abs diff {weight_diff:.2e}")


def _assert_same_adapter(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) and len(a) > 0
    for key in a:
        assert a[key].numel() > 0, f"{key} is empty"
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=WEIGHT_ATOL, msg=key)


def _assert_checkpointing(out: Path, *, on: bool, world_size: int, zero3: bool = False) -> None:
    """From the probe: every rank recomputed each decoder layer once per micro-batch (on) or never (off); under
    ZeRO-3 every parameter was partitioned."""
    for rank in range(world_size):
        record = json.loads((out / f"gc-rank{rank}.json").read_text())
        assert record["micro_batches"] > 0, record
        assert record["layer_forwards"] == (2 if on else 1) * record["micro_batches"], (rank, record)
        assert record["partitioned"] == (record["params"] if zero3 else 0) and record["params"] > 0, (rank, record)


def _checkpoint(out: Path) -> Path:
    found = sorted((out / "checkpoints").glob("step2*"))
    assert found, f"no step-2 checkpoint in {out / 'checkpoints'}"
    return found[0]


@pytest.fixture(scope="module")
def setup_dirs(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("dist")
    return root, tiny_llama, _write_rows(root / "rows.json")


def _result(out: Path) -> tuple[list[float], list[float], dict[str, torch.Tensor]]:
    return _losses(out), _metric(out, "train/grad_norm"), _adapter(out)


@pytest.fixture(scope="module")
def references(setup_dirs):
    """One process, micro-batch 4: the runs the distributed ones must reproduce, one per accumulation (lazy)."""
    root, model, data = setup_dirs
    cache: dict[tuple[int, bool], tuple] = {}

    def get(accumulate: int, qlora: bool = False):
        if (accumulate, qlora) not in cache:
            out = root / f"single-a{accumulate}{'-qlora' if qlora else ''}"
            config = _write_config(out, model, data, strategy="auto", devices=1, batch=4, accumulate=accumulate,
                                   qlora=qlora)
            _fit(config)
            _assert_checkpointing(out, on=False, world_size=1)
            losses, norms, adapter = cache[accumulate, qlora] = _result(out)
            assert len(losses) == len(norms) == STEPS
            assert max(norms) > CLIP, f"gradient norms {norms} never reach gradient_clip_val={CLIP}: nothing clips"
        return cache[accumulate, qlora]

    return get


def _assert_matches(name: str, out: Path, reference: tuple) -> None:
    losses, norms, adapter = _result(out)
    ref_losses, ref_norms, ref_adapter = reference
    _report(name, losses, ref_losses, adapter, ref_adapter)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=LOSS_RTOL, atol=0)
    torch.testing.assert_close(torch.tensor(norms), torch.tensor(ref_norms), rtol=LOSS_RTOL, atol=0)
    _assert_same_adapter(adapter, ref_adapter)
    # MFU needs the parameter count: under ZeRO-3 partitioned parameters are empty placeholders (numel 0)
    mfu = _metric(out, "mfu")
    assert mfu and min(mfu) > 0, f"{name}: mfu {mfu}"


@pytest.mark.parametrize("accumulate,qlora", [(1, False), (3, True)], ids=["lora-a1", "qlora-a3"])
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed_stage_2", "deepspeed_stage_3"])
def test_two_processes_match_one(setup_dirs, references, strategy, accumulate, qlora):
    _two_processes_match_one(setup_dirs, references, strategy, accumulate, qlora)


def test_zero3_lora_with_accumulation_matches_one(setup_dirs, references):
    """LoRA (not only QLoRA) at A=3 under ZeRO-3 with checkpointing: every parameter partitioned, groups across epochs."""
    _two_processes_match_one(setup_dirs, references, "deepspeed_stage_3", 3, False)


def _two_processes_match_one(setup_dirs, references, strategy, accumulate, qlora):
    root, model, data = setup_dirs
    out = root / f"{strategy}-a{accumulate}{'-qlora' if qlora else ''}"
    config = _write_config(out, model, data, strategy=strategy, devices=2, batch=2, accumulate=accumulate, qlora=qlora,
                           gc=True)
    _assert_tokenized_once(out, _fit(config), world_size=2)
    _assert_checkpointing(out, on=True, world_size=2, zero3=strategy == "deepspeed_stage_3")
    reference = references(accumulate, qlora)
    _assert_matches(f"{strategy} A={accumulate}{' QLoRA' if qlora else ''} (checkpointing on vs off)", out, reference)
    if accumulate != 1:
        return

    # resume from the step-2 checkpoint: the run must end on the same adapter as the uninterrupted one
    ref_losses, _, ref_adapter = reference
    resumed = root / f"{strategy}-resumed"
    config = _write_config(resumed, model, data, strategy=strategy, devices=2, batch=2, gc=True)
    _fit(config, "--ckpt_path", str(_checkpoint(out)))
    assert _losses(resumed) == pytest.approx(ref_losses[2:], rel=LOSS_RTOL)
    _assert_same_adapter(_adapter(resumed), ref_adapter)


@pytest.mark.parametrize("qlora", [False, True], ids=["lora", "qlora"])
def test_single_device_checkpointing_on_matches_off(setup_dirs, references, qlora):
    """One process, A=3: gradient checkpointing on gives the reference's (off) losses, gradient norms and adapter."""
    root, model, data = setup_dirs
    out = root / f"single-a3{'-qlora' if qlora else ''}-gc"
    _fit(_write_config(out, model, data, strategy="auto", devices=1, batch=4, accumulate=3, qlora=qlora, gc=True))
    _assert_checkpointing(out, on=True, world_size=1)
    _assert_matches(f"single device A=3{' QLoRA' if qlora else ''} checkpointing on vs off", out, references(3, qlora))


def test_two_nodes_on_loopback(setup_dirs, references):
    """Two processes posing as two nodes (NODE_RANK 0 and 1, MASTER_ADDR=127.0.0.1), one device each."""
    root, model, data = setup_dirs
    out = root / "two-nodes"
    config = _write_config(out, model, data, strategy="ddp", devices=1, batch=2, num_nodes=2)
    port = str(_free_port())
    cmd = [sys.executable, "-m", "litft", "fit", "--config", str(config)]
    env = dict(MASTER_PORT=port, LITFT_CACHE=str(out / "cache"))
    procs = [subprocess.Popen(cmd, cwd=REPO, env=_env(NODE_RANK=str(rank), **env),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(log[-4000:] for log in logs)
    _assert_tokenized_once(out, "".join(logs), world_size=2)  # one shared filesystem: global rank 0 prepares
    _assert_matches("two nodes", out, references(1))
