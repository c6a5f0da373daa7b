"""Preference evaluation: how the base and the fine-tuned model (base + adapter) rank held-out pairs.

``python -m litft evaluate`` on pairs (``model.method`` dpo, orpo or simpo, or evaluation data that is pairs) scores
each pair's chosen and rejected replies with the training scorer (:mod:`litft.methods.logps`, the chunked head on
the reply tokens) in batches from the data module's own builder (:class:`litft.data.collate.PairCollator`, the rows of
:mod:`litft.data.preference`): once with the adapter (fine-tuned) and once with it switched off (base, exactly DPO's
reference: :func:`litft.methods.reference.adapters_off`). One model is loaded.

Metrics (means over the N pairs; ``s`` is the method's own score of a reply: the SUMMED log-probability of its trained
tokens for DPO, KTO and SFT, the MEAN per trained token for ORPO and SimPO, as the losses use them):

- for both models: ``logps/chosen``, ``logps/rejected`` (mean ``s``), ``preference/margin`` = mean ``s_c - s_r``,
  ``preference/accuracy`` = share of pairs with ``s_c > s_r`` (strictly);
- for the fine-tuned model only, the base as reference (DPO's implicit reward): ``r = beta (logp - logp_base)`` on
  SUMMED log-probabilities, ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins`` = mean ``r_c - r_r``,
  ``rewards/accuracies`` = share with ``r_c > r_r``. The base model's own rewards are 0 by definition (its accuracy
  would be 0, its margin 0), so they are not reported for it; beta is ``model.kto.beta`` for KTO, else
  ``model.dpo.beta`` (accuracy does not depend on beta; margins scale with it). ORPO's and SimPO's own rewards
  (``beta`` x mean log-probability) order the pairs as ``preference/accuracy`` does.

A model that has learnt the preference has fine-tuned ``preference/accuracy`` above the base's and
``rewards/accuracies`` above 0.5 with a positive ``rewards/margins``. ``rewards/accuracies`` is the quantity training
logs as ``val/rewards/accuracies`` (DPO), here computed in float64 from the scorer's float32 sums.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Callable, Optional

import torch

from litft.data.records import entry_kind
from litft.data.registry import resolve
from litft.errors import LitFTError
from litft.methods import METHODS
from litft.methods.logps import layout
from litft.methods.reference import reference_scorer

MEAN_SCORE = ("orpo", "simpo")
"""Methods whose score of a reply is the mean token log-probability (the others: the sum)."""
MODEL_METRICS = ("preference/accuracy", "preference/margin", "logps/chosen", "logps/rejected")
REWARD_METRICS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")
METRICS = MODEL_METRICS + REWARD_METRICS


def score_name(method: str) -> str:
    """What ``s`` is for ``method`` (written into the report)."""
    return ("mean log-probability per reply token" if method in MEAN_SCORE
            else "summed log-probability of the reply tokens")


def reward_beta(method: str, *, dpo_beta: float, kto_beta: float) -> float:
    """beta of DPO's implicit reward for a run of ``method``: ``model.kto.beta`` for KTO, else ``model.dpo.beta``."""
    return float(kto_beta if method == "kto" else dpo_beta)


def pair_logps(batches: Iterable[dict], score: Callable, model: torch.nn.Module,
               ) -> dict[str, dict[str, torch.Tensor]]:
    """Per pair, for ``fine-tuned`` (``score`` as given) and ``base`` (``model``'s adapters off):
    ``chosen``, ``rejected`` (summed log-probabilities, float64, CPU) and ``chosen_tokens``, ``rejected_tokens``.

    ``batches`` are :class:`~litft.data.collate.PairCollator` batches (rows ``0..B-1`` chosen, ``B..2B-1`` rejected)."""
    device = next(model.parameters()).device
    base_score = reference_scorer(model, score)
    parts: dict[str, dict[str, list]] = {label: {} for label in ("base", "fine-tuned")}
    for batch in batches:
        ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        extra = {k: v.to(device) for k, v in layout(batch).items()}  # one row per pair (data.share_prompt)
        with torch.no_grad():
            for label, scorer in (("fine-tuned", score), ("base", base_score)):
                logps, tokens = scorer(ids, mask, labels, **extra)
                b = logps.shape[0] // 2
                logps, tokens = logps.detach().double().cpu(), tokens.detach().cpu()
                for key, value in (("chosen", logps[:b]), ("rejected", logps[b:]),
                                   ("chosen_tokens", tokens[:b]), ("rejected_tokens", tokens[b:])):
                    parts[label].setdefault(key, []).append(value)
    if not parts["base"]:
        return {label: {} for label in parts}
    return {label: {k: torch.cat(v) for k, v in cols.items()} for label, cols in parts.items()}


def model_metrics(logps: dict[str, torch.Tensor], *, mean_score: bool) -> dict[str, float]:
    """``preference/*`` and ``logps/*`` of one model from :func:`pair_logps`' columns."""
    c, r = logps["chosen"], logps["rejected"]
    if mean_score:
        c, r = c / logps["chosen_tokens"].clamp(min=1), r / logps["rejected_tokens"].clamp(min=1)
    return {"preference/accuracy": (c > r).double().mean().item(), "preference/margin": (c - r).mean().item(),
            "logps/chosen": c.mean().item(), "logps/rejected": r.mean().item()}


def reward_metrics(tuned: dict[str, torch.Tensor], base: dict[str, torch.Tensor], beta: float) -> dict[str, float]:
    """``rewards/*``: DPO's implicit reward ``beta (logp - logp_base)`` on summed log-probabilities."""
    rc = beta * (tuned["chosen"] - base["chosen"])
    rr = beta * (tuned["rejected"] - base["rejected"])
    return {"rewards/accuracies": (rc > rr).double().mean().item(), "rewards/margins": (rc - rr).mean().item(),
            "rewards/chosen": rc.mean().item(), "rewards/rejected": rr.mean().item()}


def evaluate_pairs(batches: Iterable[dict], score: Callable, model: torch.nn.Module, *, method: str,
                   beta: float) -> tuple[dict[str, dict[str, float]], int]:
    """({"base": metrics, "fine-tuned": metrics}, number of pairs); see the module docstring. ``model`` carries the
    adapter (a PEFT model); ``score`` is its training scorer (``LitFTModule.score`` or :func:`litft.methods.logps
    .scorer`)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    logps = pair_logps(batches, score, model)
    n = len(logps["base"].get("chosen", ()))
    if n == 0:
        return {"base": {}, "fine-tuned": {}}, 0
    mean_score = method in MEAN_SCORE
    results = {label: model_metrics(logps[label], mean_score=mean_score) for label in ("base", "fine-tuned")}
    results["fine-tuned"].update(reward_metrics(logps["fine-tuned"], logps["base"], beta))
    return results, n


def change(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """fine-tuned minus base, per metric both have."""
    base, tuned = results["base"], results["fine-tuned"]
    return {m: tuned[m] - base[m] for m in METRICS if m in base and m in tuned}


def format_table(results: dict[str, dict[str, float]], n: int, *, method: str, beta: float) -> str:
    """The metrics side by side (base, fine-tuned, change); ``-`` where a model has no value."""
    delta = change(results)
    names = ("base", "fine-tuned", "change")
    lines = [f"{'metric':<22}" + "".join(f"{x:>12}" for x in names)]
    for m in METRICS:
        cells = [results["base"].get(m), results["fine-tuned"].get(m)]
        row = "".join(f"{v:>12.4f}" if v is not None else f"{'-':>12}" for v in cells)
        lines.append(f"{m:<22}{row}" + (f"{delta[m]:>+12.4f}" if m in delta else f"{'-':>12}"))
    lines.append(f"({n} pairs; logps: {score_name(method)} ({method}); rewards: beta (logp - logp_base) summed, "
                 f"beta {beta:g}, base = adapters off)")
    return "\n".join(lines)


def report(results: dict[str, dict[str, float]], n: int, *, method: str, beta: float, source: str) -> dict:
    """What ``eval_results.json`` holds for pairs."""
    return {"kind": "preference", "pairs": n, "data": source, "method": method, "score": score_name(method),
            "beta": beta, "scores": results, "change": change(results)}


def first(rows: Sequence, max_samples: Optional[int]):
    """The first ``max_samples`` rows (all with None); rows are a list or a ``datasets.Dataset``."""
    if not max_samples or max_samples >= len(rows):
        return rows
    return rows.select(range(max_samples)) if hasattr(rows, "select") else rows[:max_samples]


# ---------------------------------------------------------------------------------------------------- which pairs
def is_pairs(dataset: str, *, dataset_dir: str, on_bad_record: str = "error") -> bool:
    """Whether every dataset named by ``dataset`` is preference pairs (read from the registry or the first record)."""
    return all(entry_kind(e, on_bad_record=on_bad_record) == "preference" for e in resolve(dataset, dataset_dir))


def pair_source(method: str, data_args: dict, *, eval_dataset: Optional[str], on_training_data: bool,
                ) -> Optional[tuple[dict, str, str]]:
    """Which pairs ``evaluate`` scores: (the data module's arguments, its split ``train`` or ``val``, where they come
    from), or None when the evaluation data is not pairs (``evaluate`` then generates and scores text).

    ``data_args`` are the run's ``data:`` section (``LitFTDataModule``'s arguments, ``kind`` linked from
    ``model.method``). In order: ``--eval_dataset``; ``data.eval_dataset``; for a pairwise method the held-out split
    ``data.val_size`` (the same records as training's validation: the same seed, the same cache), then the training
    data with ``--on_training_data``. Pairs that are not the run's kind (an SFT or KTO run, evaluation data that is
    pairs) are read as a data module of their own: ``dataset`` = those pairs, nothing held out, its ``train`` split."""
    pairwise = METHODS[method].data_kind == "preference"
    alone = dict(data_args, kind="preference", eval_dataset=None, val_size=0.0, packing=False, train_on_prompt=False)
    where_dir = dict(dataset_dir=data_args["dataset_dir"], on_bad_record=data_args["on_bad_record"])
    if eval_dataset:
        if pairwise or is_pairs(eval_dataset, **where_dir):
            return dict(alone, dataset=eval_dataset), "train", f"{eval_dataset} (--eval_dataset)"
        return None
    configured = data_args.get("eval_dataset")
    if configured:
        if pairwise:
            return dict(data_args), "val", f"{configured} (data.eval_dataset)"
        if is_pairs(configured, **where_dir):
            return dict(alone, dataset=configured), "train", f"{configured} (data.eval_dataset)"
        return None
    if not pairwise:
        return None
    if data_args.get("val_size"):
        return dict(data_args), "val", (f"{data_args['dataset']} (data.val_size: {data_args['val_size']:g} held out, "
                                        f"seed {data_args['seed']})")
    if on_training_data:
        return dict(data_args), "train", f"{data_args['dataset']} (data.dataset: the TRAINING data, --on_training_data)"
    raise LitFTError("no evaluation pairs: set data.eval_dataset or data.val_size, or pass --eval_dataset "
                     "(or --on_training_data to score the training pairs, data.dataset)")
