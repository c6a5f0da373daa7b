"""The SFT equivalence matrix of tests/test_distributed.py, repeated for DPO (real processes over gloo, through
``python -m litft fit``).

Each strategy (DDP, DeepSpeed ZeRO-2, ZeRO-3 with every parameter partitioned) trains a tiny Llama with DPO for 4
optimizer steps on 2 processes with micro-batch 2 pairs, ``accumulate_grad_batches`` 1 (LoRA) and 3 (QLoRA, an epoch
of 5 micro-batches: groups of 3 + 2, so steps cross the epoch end); one process with micro-batch 4 pairs and the same
accumulation sees the same global batches. Per-step loss, gradient norm and rewards/chosen and the final adapter must
match within 1e-4. Scale-sensitive as for SFT: plain SGD (the update is lr x gradient), clipping active (the
reference checks that it clips), pairs whose replies run from 1 to 11 words (ranks hold pairs of different lengths),
and with A=3 the epoch's last group has 2 micro-batches, not 3: a loss divided by anything but the pairs of the
whole optimizer step on all ranks gives other gradients. The reference model is the base with the adapters off,
QLoRA included; the ZeRO-3 cells take it precomputed once before training (model.dpo.precompute_reference). The ZeRO-2
cells and the ZeRO-3 QLoRA cell run with one row per pair (data.share_prompt), against two-row references. Also: accumulation against one big batch (the ground truth of per-step normalisation), and KTO
under ZeRO-3 against DDP (its KL all-reduce inside the step; a smoke of symmetry, blind to a KL computed per rank,
which both strategies would share).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.test_distributed import LOSS_RTOL, _adapter, _assert_same_adapter, _fit, _metric, _report, _strategy

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS = 4
PAIRS = 20
LR = 0.3
"""SGD learning rate. At 1.0 the DPO trajectory of this tiny model is chaotic: one process with micro-batch 4 and with
2 x A=2 (the same pairs) part by 1.6% in the 4th step's gradient norm; at 0.3 they agree within 1e-6."""
CLIP = 2.5
"""gradient_clip_val: between the gradient norms of the steps (the references check that some steps clip and some
do not: an adapter that is clipped at every step would not show a gradient scale error)."""
BETA = 0.5
REWARD_ATOL = 1e-5
"""Rewards are beta x (log p - log p_ref), differences of log-probabilities of about -30 (float32: ~2e-6 apart); near
0 (the first steps) a float32 rounding of the log-probabilities is more than 1e-4 of them."""


def _write_pairs(path: Path) -> str:
    """TRL-format pairs whose replies range from 1 to 11 words: ranks get pairs of unequal lengths."""
    records = [{"prompt": f"What is {i} plus {i}?", "chosen": " ".join([str(2 * i)] * (1 + (7 * i) % 11)),
                "rejected": " ".join([str(2 * i + 1)] * (1 + (5 * i + 3) % 11))} for i in range(PAIRS)]
    path.write_text(json.dumps(records))
    return str(path)


def _write_config(out: Path, model: str, data: str, *, strategy: str, devices: int, batch: int, accumulate: int = 1,
                  qlora: bool = False, precompute: bool = False, share_prompt: bool = False) -> Path:
    config = {
        "output_dir": str(out),
        "seed_everything": 0,
        "model": {"name_or_path": model, "method": "dpo", "dpo": {"beta": BETA, "precompute_reference": precompute},
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                  "optimizer": {"name": "sgd", "lr": LR}, "scheduler": {"name": "constant"},
                  **({"quantization": {"bits": 4}} if qlora else {})},
        "data": {"dataset": data, "cutoff_len": 48, "batch_size": batch, "share_prompt": share_prompt},
        "trainer": {
            "accelerator": "cpu", "devices": devices, "strategy": _strategy(strategy), "max_steps": STEPS,
            "accumulate_grad_batches": accumulate, "gradient_clip_val": CLIP, "log_every_n_steps": 1,
            "enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(out), "name": "", "version": "logs"}},
        },
    }
    path = out.parent / f"{out.name}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


KEYS = ("train/loss", "train/grad_norm", "train/rewards/chosen", "train/rewards/rejected")


def _result(out: Path) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    return {k: _metric(out, k) for k in KEYS}, _adapter(out)


def _assert_matches(name: str, result: tuple, reference: tuple) -> None:
    (metrics, adapter), (ref_metrics, ref_adapter) = result, reference
    _report(name, metrics["train/loss"], ref_metrics["train/loss"], adapter, ref_adapter)
    for key in KEYS:
        atol = REWARD_ATOL if "rewards" in key else 0.0
        torch.testing.assert_close(torch.tensor(metrics[key]), torch.tensor(ref_metrics[key]), rtol=LOSS_RTOL,
                                   atol=atol, msg=key)
    _assert_same_adapter(adapter, ref_adapter)


@pytest.fixture(scope="module")
def setup_dirs(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("dist-dpo")
    return root, tiny_llama, _write_pairs(root / "pairs.json")


@pytest.fixture(scope="module")
def references(setup_dirs):
    """One process, micro-batch 4 pairs: the runs the distributed ones must reproduce (lazy, one per cell kind)."""
    root, model, data = setup_dirs
    cache: dict[tuple[int, bool], tuple] = {}

    def get(accumulate: int, qlora: bool):
        if (accumulate, qlora) not in cache:
            out = root / f"single-a{accumulate}{'-qlora' if qlora else ''}"
            _fit(_write_config(out, model, data, strategy="auto", devices=1, batch=4, accumulate=accumulate,
                               qlora=qlora))
            metrics, adapter = cache[accumulate, qlora] = _result(out)
            assert all(len(v) == STEPS for v in metrics.values()), metrics
            norms = metrics["train/grad_norm"]
            assert max(norms) > CLIP > min(norms), f"gradient norms {norms}: gradient_clip_val={CLIP} clips none or all"
            assert metrics["train/loss"][0] != metrics["train/loss"][-1]
        return cache[accumulate, qlora]

    return get


@pytest.mark.parametrize("accumulate,qlora", [(1, False), (3, True)], ids=["lora-a1", "qlora-a3"])
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed_stage_2", "deepspeed_stage_3"])
def test_dpo_two_processes_match_one(setup_dirs, references, strategy, accumulate, qlora):
    root, model, data = setup_dirs
    out = root / f"{strategy}-a{accumulate}{'-qlora' if qlora else ''}"
    # ZeRO-3 with the reference precomputed (litft/methods/precompute.py: each rank scores a share of the pairs with
    # the same sharded calls, shares all-gathered) must reproduce the live reference of the one-process run.
    precompute = strategy == "deepspeed_stage_3"
    # ZeRO-2, and ZeRO-3 with QLoRA, with one row per pair (data.share_prompt: the prompt once, a 4-D branch mask):
    # the one-process reference has two rows per pair
    share = strategy == "deepspeed_stage_2" or (strategy == "deepspeed_stage_3" and qlora)
    _fit(_write_config(out, model, data, strategy=strategy, devices=2, batch=2, accumulate=accumulate, qlora=qlora,
                       precompute=precompute, share_prompt=share))
    if precompute:
        assert len(list((out / "cache").glob("data/*/reference-*.npy"))) == 1
    _assert_matches(f"DPO {strategy} A={accumulate}", _result(out), references(accumulate, qlora))


def test_dpo_accumulation_matches_one_big_batch(setup_dirs, references):
    """The ground truth of accumulation: one process, micro-batch 4 pairs x A=3 (groups of 3 + 2 micro-batches per
    epoch) equals micro-batch 12 x A=1 (batches of 12 + 8 pairs: the same pairs per step). A loss normalised per
    micro-batch instead of per optimizer step fails at the short group."""
    root, model, data = setup_dirs
    out = root / "single-b12-qlora"
    _fit(_write_config(out, model, data, strategy="auto", devices=1, batch=12, qlora=True))
    _assert_matches("DPO micro-batch 12 vs 4 x A=3", _result(out), references(3, True))


def test_kto_zero3_matches_ddp(setup_dirs):
    """KTO on 2 processes: its KL baseline is all-reduced inside the step (a collective between ZeRO-3's parameter
    gathers) and ranks hold different numbers of desirable examples. ZeRO-3 (every parameter partitioned) must
    reproduce DDP with the same micro-batches per rank (one process cannot: the KL rows pair replies within each
    rank's micro-batch)."""
    root, model, _ = setup_dirs
    records = [{"prompt": f"What is {i} plus {i}?", "completion": " ".join([str(2 * i + i % 3)] * (1 + (7 * i) % 11)),
                "label": i % 3 != 0} for i in range(PAIRS)]
    data = root / "feedback.json"
    data.write_text(json.dumps(records))
    results = []
    for strategy in ("ddp", "deepspeed_stage_3"):
        out = root / f"kto-{strategy}"
        config = _write_config(out, model, str(data), strategy=strategy, devices=2, batch=2, accumulate=3)
        raw = yaml.safe_load(config.read_text())
        raw["model"].update(method="kto", kto={"beta": BETA})
        config.write_text(yaml.safe_dump(raw))
        _fit(config)
        results.append(({k: _metric(out, k) for k in KEYS[:3] + ("train/kl",)}, _adapter(out)))
    (kto_ddp, adapter_ddp), (kto_zero3, adapter_zero3) = results
    assert len(kto_ddp["train/loss"]) == STEPS and max(kto_ddp["train/kl"]) > 0, kto_ddp
    _report("KTO ZeRO-3 vs DDP", kto_zero3["train/loss"], kto_ddp["train/loss"], adapter_zero3, adapter_ddp)
    for key, values in kto_ddp.items():
        atol = REWARD_ATOL if "rewards" in key or "kl" in key else 0.0
        torch.testing.assert_close(torch.tensor(kto_zero3[key]), torch.tensor(values), rtol=LOSS_RTOL, atol=atol,
                                   msg=key)
    _assert_same_adapter(adapter_zero3, adapter_ddp)
