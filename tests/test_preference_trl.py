"""litft's preference training against TRL 1.16's own trainers, step by step (no mock of either).

The same tiny random Llama with the same initial LoRA adapter (litft builds it, TRL trains a copy), the same 10
records in TRL's conversational format (litft reads them with ``formatting: trl``; the tokens are checked equal),
the same hyper-parameters (SGD, constant learning rate, no clipping, no dropout, fp32) and the same batches in the
same order (TRL's sequential sampler over the records written in litft's batch order). Per optimizer step, the
loss, rewards/chosen and rewards/rejected must agree within 1e-4 relative:

- DPO sigmoid and IPO (``DPOTrainer``, the reference = the base with the adapter off in both);
- KTO (``KTOTrainer``; litft's KL rows pair prompt i with reply i-1 inside the micro-batch, as TRL's rotation does
  inside each ``per_device_train_batch_size`` block of the records);
- CPO-SimPO (``trl.experimental.cpo.CPOTrainer``, ``loss_type="simpo"``, ``cpo_alpha`` > 0; one pair per step:
  TRL's NLL term is a token mean over the micro-batch, litft's a per-pair mean, equal for one pair).

ORPO is compared term by term in tests/test_methods.py: TRL's ORPOTrainer puts the prompt tokens in its NLL term
(its comment: "computed over the full prompt and response"), litft trains the reply only, so their trajectories
differ by design.
"""

from __future__ import annotations

import copy
import json
import math

import lightning.pytorch as L
from lightning.pytorch.loggers import Logger
import pytest
import torch

from litft.data.datamodule import LitFTDataModule
from litft.data.loader import ResumableBatchSampler
from litft.methods import DPOConfig, KTOConfig, SimPOConfig
from litft.model.config import LoraConfig, OptimizerConfig, SchedulerConfig
from litft.model.module import LitFTModule

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install 'litft[dev]')")

pytestmark = pytest.mark.slow

REL = 1e-4
ABS = 1e-5
"""Rewards are beta x (log p - log p_ref), differences of log-probabilities of about -50 (float32: ~4e-6 apart); at
the first steps they are ~1e-2, so a float32 rounding of the log-probabilities is ~1e-4 of them: absolute 1e-5."""
LR = 0.5
SEED = 7
WORDS = "fox dog cat bird fish cow horse sheep goat duck".split()


def _records(kind: str) -> list[dict]:
    """10 conversational records of TRL's formats: pairs (prompt/chosen/rejected) or labelled replies."""
    out = []
    for i in range(10):
        prompt = [{"role": "user", "content": f"Name animal number {i}."}]
        good = " ".join(WORDS[: 1 + i % 4]) + f" {i}"
        bad = " ".join(WORDS[i % 3: 3 + i % 5])
        if kind == "preference":
            out.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": good}],
                        "rejected": [{"role": "assistant", "content": bad}]})
        else:
            label = i % 3 != 0
            out.append({"prompt": prompt, "completion": [{"role": "assistant", "content": good if label else bad}],
                        "label": label})
    return out


def _in_litft_order(records: list[dict], batch_size: int) -> list[dict]:
    """The records in the order litft's loader visits them in epoch 0 (one rank)."""
    order = [i for b in ResumableBatchSampler(len(records), batch_size, shuffle=True, seed=SEED).batches(0) for i in b]
    return [records[i] for i in order]


class _Capture(Logger):
    """What the module logs, step by step (Lightning's callback_metrics keep a metric's last value at the steps
    where it is not logged, e.g. KTO's rewards/rejected in a step without undesirable examples)."""

    def __init__(self):
        super().__init__()
        self.rows: dict[int, dict[str, float]] = {}

    name, version = "capture", 0

    def log_metrics(self, metrics, step=None):
        self.rows.setdefault(step, {}).update({k: float(v) for k, v in metrics.items()})

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def steps(self) -> list[dict[str, float]]:
        return [self.rows[s] for s in sorted(self.rows) if "train/loss" in self.rows[s]]


def _litft(tmp_path, model_path: str, records: list[dict], kind: str, batch_size: int, steps: int, **module_kwargs):
    """litft's run; returns (per-step metrics, the initial PEFT model, the tokenized rows)."""
    data_file = tmp_path / "records.json"
    data_file.write_text(json.dumps(records))
    module = LitFTModule(model_path, lora=LoraConfig(r=4, alpha=8, dropout=0.0),
                         optimizer=OptimizerConfig(name="sgd", lr=LR), scheduler=SchedulerConfig(name="constant"),
                         **module_kwargs)
    data = LitFTDataModule(dataset=str(data_file), kind=kind, tokenizer=model_path, cutoff_len=256,
                           batch_size=batch_size, seed=SEED)
    initial = []

    class Initial(L.Callback):
        def on_train_start(self, trainer, pl_module):
            initial.append(copy.deepcopy(pl_module.model))  # the PEFT model before its first step, for TRL

    logger = _Capture()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, precision="32-true", logger=logger,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Initial()], default_root_dir=str(tmp_path / "litft"), log_every_n_steps=1)
    L.seed_everything(0)
    trainer.fit(module, datamodule=data)
    rows = [data.train_rows[i] for i in range(len(data.train_rows))]
    keys = ("loss", "rewards/chosen", "rewards/rejected")
    steps_seen = [{k: logged[f"train/{k}"] for k in keys if not math.isnan(logged.get(f"train/{k}", math.nan))}
                  for logged in logger.steps()]  # NaN: no unit for it in the step (TRL leaves it out)
    return steps_seen, initial[0], rows


def _trl_steps(trainer) -> list[dict[str, float]]:
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return [{k: float(h[k]) for k in ("loss", "rewards/chosen", "rewards/rejected") if k in h} for h in logs]


def _args(config_class, tmp_path, batch_size: int, steps: int, **kwargs):
    return config_class(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, seed=SEED,
                        per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=LR, optim="sgd",
                        lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=1, save_strategy="no",
                        train_sampling_strategy="sequential", bf16=False, **kwargs)


def _assert_same_steps(mine: list[dict], theirs: list[dict], steps: int) -> None:
    """Per step: loss, rewards/chosen and rewards/rejected within REL (rewards: or ABS, see ABS) and logged at the
    same steps (KTO logs no rewards/rejected for a step without an undesirable example, in both)."""
    assert len(mine) == len(theirs) == steps, (mine, theirs)
    for step, (a, b) in enumerate(zip(mine, theirs)):
        assert set(a) == set(b), (step, a, b)
        for key in a:
            tol = 1e-9 if key == "loss" else ABS
            assert math.isclose(a[key], b[key], rel_tol=REL, abs_tol=tol), (step, key, a[key], b[key])
    assert mine[0]["loss"] != mine[-1]["loss"]  # the runs trained


def _dataset(records):
    from datasets import Dataset

    return Dataset.from_list(records)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_steps_match_trl(tmp_path, tiny_llama, loss_type):
    from transformers import AutoTokenizer

    steps, batch, beta = 5, 2, 0.2
    records = _in_litft_order(_records("preference"), batch)
    mine, initial, rows = _litft(tmp_path, tiny_llama, _records("preference"), "preference", batch, steps,
                                 method="dpo", dpo=DPOConfig(beta=beta, loss_type=loss_type))
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    trainer = trl.DPOTrainer(model=initial, args=_args(trl.DPOConfig, tmp_path, batch, steps, beta=beta,
                                                       loss_type=[loss_type]),
                             train_dataset=_dataset(records), processing_class=tok)
    by_ids = {tuple(r["chosen_input_ids"]): r for r in rows}  # litft's rows, tokens equal to TRL's
    for t in trainer.train_dataset:
        r = by_ids[tuple(t["prompt_ids"] + t["chosen_ids"])]
        assert r["rejected_input_ids"] == t["prompt_ids"] + t["rejected_ids"]
        assert r["chosen_labels"] == [-100] * len(t["prompt_ids"]) + t["chosen_ids"]
    _assert_same_steps(mine, _trl_steps(trainer), steps)


def test_kto_steps_match_trl(tmp_path, tiny_llama):
    from transformers import AutoTokenizer

    steps, batch, beta = 5, 2, 0.3
    config = KTOConfig(beta=beta, desirable_weight=1.0, undesirable_weight=1.4)
    records = _in_litft_order(_records("feedback"), batch)
    mine, initial, _ = _litft(tmp_path, tiny_llama, _records("feedback"), "feedback", batch, steps, method="kto",
                              kto=config)
    args = _args(trl.KTOConfig, tmp_path, batch, steps, beta=beta, desirable_weight=1.0, undesirable_weight=1.4)
    trainer = trl.KTOTrainer(model=initial, args=args, train_dataset=_dataset(records),
                             processing_class=AutoTokenizer.from_pretrained(tiny_llama))
    _assert_same_steps(mine, _trl_steps(trainer), steps)


def test_cpo_simpo_steps_match_trl(tmp_path, tiny_llama):
    from transformers import AutoTokenizer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    steps, batch, beta, gamma, alpha = 6, 1, 2.0, 0.5, 0.3
    records = _in_litft_order(_records("preference"), batch)
    mine, initial, _ = _litft(tmp_path, tiny_llama, _records("preference"), "preference", batch, steps,
                              method="simpo", simpo=SimPOConfig(beta=beta, gamma=gamma, sft_weight=alpha))
    trainer = CPOTrainer(model=initial, args=_args(CPOConfig, tmp_path, batch, steps, loss_type="simpo", beta=beta,
                                                   simpo_gamma=gamma, cpo_alpha=alpha, max_length=256),
                         train_dataset=_dataset(records), processing_class=AutoTokenizer.from_pretrained(tiny_llama))
    _assert_same_steps(mine, _trl_steps(trainer), steps)
