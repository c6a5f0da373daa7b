"""``python -m litft predict --config X.yaml [--adapter DIR] [--eval_dataset NAME|FILE] [--predictions OUT.jsonl]``

Generates a completion for every record of the evaluation data (any format the data pipeline reads; the last
assistant turn is the reference) and writes JSONL lines ``{"prompt", "prediction", "reference"}`` atomically.
The data is ``--eval_dataset``, else ``data.eval_dataset``; scoring the training data (``data.dataset``) needs
``--on_training_data`` and is said so. litft's predict is this command (Lightning's own ``predict`` subcommand
is not used: it would need a prediction loader and a writer callback for what is plain batched generation).
The work is done by ``litft/inference.py``.
"""

from __future__ import annotations

from typing import Optional

from litft.inference import (
    GenerationSettings, add_eval_data_arguments, add_inference_arguments, eval_source, load_examples, load_model,
    predict, predictions_path, write_jsonl,
)


def add_arguments(parser) -> None:
    add_inference_arguments(parser)
    add_eval_data_arguments(parser)
    parser.add_argument("--predictions", type=Optional[str], default=None,
                        help="Output JSONL (default: <output_dir>/predictions.jsonl, or predictions-base.jsonl without --adapter).")


def run(cli) -> int:
    cfg, model_spec, dm = cli.config, cli.model.spec, cli.datamodule
    dataset, source = eval_source(cfg.eval_dataset, configured=dm.eval_dataset, training=dm.dataset,
                                  on_training_data=cfg.on_training_data)
    print(f"predict: scoring {dataset} ({source})")
    path = cfg.predictions or predictions_path(cfg.output_dir, cfg.adapter)
    examples = load_examples(dataset, dataset_dir=dm.dataset_dir, on_bad_record=dm.on_bad_record,
                             max_samples=cfg.max_samples)
    model, tokenizer = load_model(model_spec, adapter=cfg.adapter, dtype=cfg.dtype, precision=cfg.get("trainer.precision"))
    rows = predict(model, tokenizer, examples, settings=GenerationSettings.from_config(cfg), template=dm.template,
                   system=cfg.system)
    write_jsonl(rows, path)
    print(f"{len(rows)} predictions written to {path}")
    return 0
