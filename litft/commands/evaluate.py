"""``python -m litft evaluate --config X.yaml [--adapter DIR] [--eval_dataset D]`` or ``--predictions A.jsonl B.jsonl``

Scores predictions against references with ROUGE-1/2/L (F-measure × 100, Google's ``rouge-score`` package,
Porter stemming) and prints the models side by side. Without ``--predictions`` it first predicts with the
base model and with base + adapter (default ``<output_dir>/adapter``), writing both JSONL files to output_dir.
Results are also written to ``<output_dir>/eval_results.json``.
Note: rouge-score's tokenizer keeps only ASCII letters and digits, so it does not score CJK text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from litft.commands.predict import add_prediction_arguments, default_path, predict, write_jsonl
from litft.errors import DataError, LitFTError
from litft.inference import _get
from litft.io import atomic_write_text

NEEDS_TRAINER = False
METRICS = ("rouge1", "rouge2", "rougeL")


def add_arguments(parser) -> None:
    add_prediction_arguments(parser, adapter_help="PEFT adapter of the fine-tuned model (default: <output_dir>/adapter).")
    parser.add_argument("--predictions", type=str, nargs="+", default=None,
                        help="JSONL files with prediction and reference fields to score (skips generation).")
    parser.add_argument("--labels", type=str, nargs="+", default=None, help="Column names for --predictions files.")


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure × 100 over the pairs."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise LitFTError("evaluate needs the rouge-score package: pip install 'litft[eval]'") from None
    if not predictions:
        raise LitFTError("evaluate: no predictions to score")
    scorer = rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)
    totals = dict.fromkeys(METRICS, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # (target, prediction)
        for m in METRICS:
            totals[m] += scores[m].fmeasure
    return {m: 100.0 * totals[m] / len(predictions) for m in METRICS}


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


def score_rows(rows: list[dict]) -> dict[str, float]:
    return rouge([r["prediction"] for r in rows], [r["reference"] for r in rows])


def format_table(results: dict[str, dict[str, float]], n: int) -> str:
    names = list(results)
    width = max(12, *(len(x) + 2 for x in names))
    lines = [f"{'metric':<10}" + "".join(f"{name:>{width}}" for name in names)]
    for m in METRICS:
        lines.append(f"{m:<10}" + "".join(f"{results[name][m]:>{width}.2f}" for name in names))
    lines.append(f"({n} examples; ROUGE F-measure x 100)")
    return "\n".join(lines)


def run(cli) -> int:
    cfg = cli.config
    output_dir = Path(_get(cfg, "output_dir"))
    files = _get(cfg, "predictions")
    results: dict[str, dict[str, float]] = {}
    if files:
        labels = _get(cfg, "labels") or [Path(f).stem for f in files]
        if len(labels) != len(files):
            raise LitFTError("--labels: give one label per --predictions file")
        counts = set()
        for label, f in zip(labels, files):
            rows = read_predictions(f)
            counts.add(len(rows))
            results[label] = score_rows(rows)
        n = max(counts)
    else:
        adapter = _get(cfg, "adapter") or str(output_dir / "adapter")
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise LitFTError(f"evaluate: no adapter at {adapter} (train first, or give --adapter or --predictions)")
        for label, which in (("base", None), ("fine-tuned", adapter)):
            rows = predict(cfg, which)
            write_jsonl(rows, default_path(str(output_dir), which))
            results[label] = score_rows(rows)
        n = len(rows)
    print(format_table(results, n))
    atomic_write_text(output_dir / "eval_results.json", json.dumps({"examples": n, "rouge": results}, indent=1) + "\n")
    return 0
