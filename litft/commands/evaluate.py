"""``python -m litft evaluate --config X.yaml [--adapter DIR] [--eval_dataset D]`` or ``--predictions A.jsonl B.jsonl``

Scores predictions against references with ROUGE-1/2/L (F-measure, rouge-score with Porter stemming, one token
per CJK character), corpus BLEU-4 and exact match (all × 100, ``litft/metrics.py``) and prints the models side
by side with the change. Without ``--predictions`` it first predicts on the evaluation data (``--eval_dataset``,
else ``data.eval_dataset``; the training data only with ``--on_training_data``) with the base model and with
base + adapter (default ``<output_dir>/adapter``), writing both JSONL files to output_dir. Stop strings
(``--stop``) are applied before scoring. The table is also written to ``<output_dir>/eval_results.json``.

On preference pairs (``model.method`` dpo, orpo or simpo, or evaluation data that is pairs) nothing is generated:
each pair is scored by the base (the adapter switched off) and the fine-tuned model (base + adapter) with the
training scorer, reporting preference accuracy and margins, log-probabilities and DPO's implicit rewards
(``litft/methods/evaluation.py`` defines them); the pairs are ``--eval_dataset``, else ``data.eval_dataset``, else the
``data.val_size`` split, else (``--on_training_data``) the training pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.data import DataLoader

from litft.data.datamodule import LitFTDataModule
from litft.errors import DataError, LitFTError
from litft.generation import cut_at_stop
from litft.inference import (
    GenerationSettings, add_eval_data_arguments, add_inference_arguments, eval_source, load_examples, load_model,
    predict, predictions_path, write_jsonl,
)
from litft.io import atomic_write_text
from litft.methods import evaluation
from litft.metrics import METRICS, score


def add_arguments(parser) -> None:
    add_inference_arguments(parser, adapter_help="PEFT adapter of the fine-tuned model (default: <output_dir>/adapter).")
    add_eval_data_arguments(parser)
    parser.add_argument("--predictions", type=str, nargs="+", default=None,
                        help="JSONL files with prediction and reference fields to score (skips generation).")
    parser.add_argument("--labels", type=str, nargs="+", default=None, help="Column names for --predictions files.")


def read_predictions(path: str | Path) -> list[dict]:
    rows = []
    path = Path(path)
    if not path.is_file():
        raise LitFTError(f"--predictions: no such file: {path}")
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"not JSON: {err.msg}", file=str(path), record=i) from None
        for field in ("prediction", "reference"):
            if not isinstance(row.get(field), str):
                raise DataError("missing or not a string", file=str(path), record=i, field=field)
        rows.append(row)
    return rows


def score_rows(rows: list[dict], stop=None) -> dict[str, float]:
    return score([cut_at_stop(r["prediction"], stop) for r in rows], [r["reference"] for r in rows])


def change(results: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """Last column minus first, per metric (None with a single column)."""
    names = list(results)
    if len(names) < 2:
        return None
    return {m: results[names[-1]][m] - results[names[0]][m] for m in METRICS}


def format_table(results: dict[str, dict[str, float]], n: int) -> str:
    names = list(results)
    delta = change(results)
    width = max(12, *(len(x) + 2 for x in names))
    lines = [f"{'metric':<12}" + "".join(f"{name:>{width}}" for name in names) + (f"{'change':>{width}}" if delta else "")]
    for m in METRICS:
        line = f"{m:<12}" + "".join(f"{results[name][m]:>{width}.2f}" for name in names)
        lines.append(line + (f"{delta[m]:>+{width}.2f}" if delta else ""))
    lines.append(f"({n} examples; ROUGE F-measure, BLEU-4, exact match, all x 100)")
    return "\n".join(lines)


def score_files(files: list[str], labels: list[str] | None, stop=None) -> tuple[dict[str, dict[str, float]], int]:
    """(scores per label, most rows in a file) for existing predictions files."""
    labels = labels or [Path(f).stem for f in files]
    if len(labels) != len(files):
        raise LitFTError("--labels: give one label per --predictions file")
    results, counts = {}, set()
    for label, f in zip(labels, files):
        rows = read_predictions(f)
        counts.add(len(rows))
        results[label] = score_rows(rows, stop)
    return results, max(counts)


def fine_tuned_adapter(cfg) -> str:
    """``--adapter``, else ``<output_dir>/adapter``; stops unless it is a PEFT adapter folder."""
    adapter = cfg.adapter or str(Path(cfg.output_dir) / "adapter")
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise LitFTError(f"evaluate: no adapter at {adapter} (train first, or give --adapter or --predictions)")
    return adapter


def run_pairs(cli, data_args: dict, split: str, source: str) -> int:
    """Preference evaluation (:mod:`litft.methods.evaluation`): pairs from the data module's builder, scored by the
    training scorer with the adapter on (fine-tuned) and off (base); one model in memory."""
    cfg, module = cli.config, cli.model
    adapter = fine_tuned_adapter(cfg)
    dm = LitFTDataModule(**data_args)
    dm.setup("validate")
    rows = evaluation.first(dm.train_rows if split == "train" else dm.val_rows, cfg.max_samples)
    if not len(rows):
        raise LitFTError(f"evaluate: no pairs to score in {source} (none left after tokenization)")
    batches = DataLoader(rows, batch_size=dm.eval_batch_size, shuffle=False, collate_fn=dm.collator())
    module.model, _ = load_model(module.spec, adapter=adapter, dtype=cfg.dtype, precision=cfg.get("trainer.precision"))
    method = module.method
    beta = evaluation.reward_beta(method, dpo_beta=cfg.model.dpo.beta, kto_beta=cfg.model.kto.beta)
    results, n = evaluation.evaluate_pairs(batches, module.score, module.model, method=method, beta=beta)
    print(evaluation.format_table(results, n, method=method, beta=beta))
    print(f"scored: {source}; fine-tuned = base + {adapter}")
    report = evaluation.report(results, n, method=method, beta=beta, source=source)
    atomic_write_text(Path(cfg.output_dir) / "eval_results.json", json.dumps(report, indent=1) + "\n")
    return 0


def run(cli) -> int:
    cfg, model_spec, dm = cli.config, cli.model.spec, cli.datamodule
    output_dir = Path(cfg.output_dir)
    if not cfg.predictions:
        plan = evaluation.pair_source(cli.model.method, cfg.data.as_dict(), eval_dataset=cfg.eval_dataset,
                                      on_training_data=cfg.on_training_data)
        if plan is not None:
            return run_pairs(cli, *plan)
    results: dict[str, dict[str, float]] = {}
    if cfg.predictions:
        results, n = score_files(cfg.predictions, cfg.labels, cfg.stop)
        source = "predictions files: " + ", ".join(map(str, cfg.predictions))
    else:
        adapter = fine_tuned_adapter(cfg)
        dataset, where = eval_source(cfg.eval_dataset, configured=dm.eval_dataset, training=dm.dataset,
                                     on_training_data=cfg.on_training_data)
        source = f"{dataset} ({where})"
        examples = load_examples(dataset, dataset_dir=dm.dataset_dir, on_bad_record=dm.on_bad_record,
                                 max_samples=cfg.max_samples)  # once: base and fine-tuned predict the same list
        settings, precision = GenerationSettings.from_config(cfg), cfg.get("trainer.precision")
        for label, which in (("base", None), ("fine-tuned", adapter)):
            model, tokenizer = load_model(model_spec, adapter=which, dtype=cfg.dtype, precision=precision)
            rows = predict(model, tokenizer, examples, settings=settings, template=dm.template, system=cfg.system)
            del model  # the base is freed before the fine-tuned model loads: one model in memory at a time
            write_jsonl(rows, predictions_path(output_dir, which))
            results[label] = score_rows(rows)
        n = len(examples)
    print(format_table(results, n))
    print(f"scored: {source}")
    report = {"examples": n, "data": source, "scores": results, "change": change(results)}
    atomic_write_text(output_dir / "eval_results.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return 0
