"""``python -m litft prepare --config X.yaml [--preview N]``: run the data pipeline only.

Tokenizes (and packs) the configured datasets, writes the cache that ``fit`` will reuse, and prints the
figures: records, samples, rows, tokens, trained tokens, truncated, dropped, skipped, packing efficiency.

This is the way to prepare a large corpus before a multi-node job: run it once (on a login node or one node,
with ``--data.preprocessing_num_workers N`` to tokenize in N processes) against the cache folder the job will
see (``LITFT_CACHE``); every rank of the job then finds the cache and only loads it (memory-mapped Arrow).
``--preview N`` prints N rendered training samples with the trained spans between « and »: for preference data
each pair's chosen and rejected rows, for feedback data each example with its label.
"""

from __future__ import annotations

import time

from litft.labels import IGNORE_INDEX

OPEN, CLOSE = "«", "»"


def add_arguments(parser) -> None:
    parser.add_argument("--preview", type=int, default=0, help="Print this many rendered samples with the trained spans marked «like this».")


def render_marked(tokenizer, input_ids, labels) -> str:
    """The decoded sample with every run of trained tokens wrapped in « »."""
    out, run, trained = [], [], None
    for tok, lab in zip(input_ids, labels):
        is_trained = lab != IGNORE_INDEX
        if trained is not None and is_trained != trained:
            text = tokenizer.decode(run)
            out.append(f"{OPEN}{text}{CLOSE}" if trained else text)
            run = []
        run.append(tok)
        trained = is_trained
    if run:
        text = tokenizer.decode(run)
        out.append(f"{OPEN}{text}{CLOSE}" if trained else text)
    return "".join(out)


def _samples(row):
    """The samples of a row (several when packed: split where position_ids restart at 0)."""
    ids, labels = list(row["input_ids"]), list(row["labels"])
    pos = row.get("position_ids")
    if pos is None:
        return [(ids, labels)]
    starts = [i for i, p in enumerate(pos) if p == 0] + [len(ids)]
    return [(ids[a:b], labels[a:b]) for a, b in zip(starts, starts[1:])]


def report(dm, preview: int = 0) -> None:
    """Run the data module's pipeline (``setup("fit")``: tokenize or reuse the cache) and print its figures and
    ``preview`` rendered samples."""
    t0 = time.perf_counter()
    dm.setup("fit")
    s, path = dm.stats, dm.cache_dir
    workers = f", {dm.preprocessing_num_workers or 1} worker process(es)" if not dm.cache_hit else ""
    print(f"cache: {'reused' if dm.cache_hit else 'wrote'} {path} ({time.perf_counter() - t0:.1f} s{workers})")
    for name, n in s.per_dataset.items():
        print(f"dataset {name}: {n} records")
    lines = [
        ("kind", s.kind),
        ("records", s.records),
        ("skipped (bad records)", s.skipped),
        ({"preference": "pairs", "feedback": "examples"}.get(s.kind, "samples"), s.samples),
        ("rows", s.rows),
        ("validation rows", len(dm.val_rows)),
        ("tokens", s.tokens),
        ("trained tokens", s.trained_tokens),
        ("truncated", s.truncated),
        ("chunked (long text)", s.chunked),
        ("dropped", s.dropped),
    ]
    if s.kind == "preference":
        lines.append(("identical (chosen == rejected, dropped)", s.identical))
    if s.kind == "feedback":
        lines += [("desirable", s.desirable), ("undesirable", s.samples - s.desirable)]
    for label, value in lines:
        print(f"{label}: {value}")
    if s.packing_efficiency is not None:
        print(f"packing efficiency: {s.packing_efficiency:.1%} (real tokens / rows x cutoff_len {dm.cutoff_len})")
    if s.kind == "sft":
        _preview_samples(dm.tokenizer, dm.train_rows, preview)
    else:
        for k in range(min(preview, len(dm.train_rows))):
            _preview_row(dm.tokenizer, k, dm.train_rows[k])


def run(cli) -> int:
    report(cli.datamodule, cli.config.preview)
    return 0


def _preview_samples(tokenizer, rows, n: int) -> None:
    """The first ``n`` SFT samples (the samples of packed rows one by one), trained spans marked."""
    shown = 0
    for i in range(len(rows)):
        for ids, labels in _samples(rows[i]):
            if shown >= n:
                return
            print(f"\n--- sample {shown} ({_counts(ids, labels)}) ---")
            print(render_marked(tokenizer, ids, labels))
            shown += 1


def _counts(ids, labels) -> str:
    return f"{len(ids)} tokens, {sum(x != IGNORE_INDEX for x in labels)} trained"


def _preview_row(tokenizer, k: int, row) -> None:
    """One preference pair (chosen, then rejected) or one feedback example, trained spans marked."""
    if "chosen_input_ids" in row:
        print(f"\n--- pair {k} ---")
        for side in ("chosen", "rejected"):
            ids, labels = row[f"{side}_input_ids"], row[f"{side}_labels"]
            print(f"[{side}] ({_counts(ids, labels)})")
            print(render_marked(tokenizer, ids, labels))
    else:
        label = "desirable" if row["label"] else "undesirable"
        print(f"\n--- example {k} ({label}; {_counts(row['input_ids'], row['labels'])}) ---")
        print(render_marked(tokenizer, row["input_ids"], row["labels"]))
