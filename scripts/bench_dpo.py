"""DPO benchmark (scenario ``dpo``): litft's ``model.method: dpo`` vs TRL's ``DPOTrainer`` on the same pairs.

SmolLM2-135M-Instruct (the plain fp32 copy of the GGUF that litft caches, as in scenario C1), LoRA r=16 / alpha 32
on every linear layer, the first ``--pairs`` pairs of LLaMA-Factory's dpo_en_demo.json (sharegpt ranking) whose
chosen and rejected rows fit in ``--cutoff`` tokens (no truncation: the same pairs and tokens for both; one TRL-format
file that both read), ``--batch`` pairs per optimizer step, DPO sigmoid with beta 0.1, AdamW at a constant
learning rate, the same number of optimizer steps for every runner. The reference model is the base with the
adapters off in both (litft always; TRL: ``ref_model=None`` with a PEFT model). Each (runner, repeat) is its own
subprocess, runners alternate (A B A B ...) so a change in machine load hits all of them alike.

Reported per runner: median real tokens/s over the timed optimizer steps (the first step is untimed), where real
tokens are the non-padding tokens (attention-mask ones) of the step's chosen and rejected rows, counted the same way
for both; time to first step; peak RSS of the process; for the precompute runners the seconds spent computing the
reference log-probabilities before training (outside the timed steps) and the rate with that time spread over the
pairs it covered (``amortized``); the whole run's rate (all real tokens over every step's time plus the precompute).
The last lines compare litft's best runner with TRL's best on each of the three rates.

    python scripts/bench.py dpo --threads 1 --steps 4 --repeats 2 --cutoff 256 --batch 2   # docs/benchmarks.md
    python scripts/bench.py dpo --threads 1 --runners litft-precompute,trl-precompute-grouped,trl-precompute,litft \
        --steps 4 --repeats 2 --cutoff 256 --batch 2 --keep-going --json docs/bench/dpo_precompute.json
    python scripts/bench.py dpo --report-from docs/bench/dpo_precompute.json     # its report again
    python scripts/bench_dpo.py --runners litft,trl-precompute --steps 3 --repeats 1 --cutoff 256

Runners (``--runners``):
    litft            python -m litft fit (LitFTCLI in-process), model.method: dpo, group_by_length batches
    litft-random     the same with random batches (no length grouping)
    litft-precompute the same as litft with model.dpo.precompute_reference: true (the reference log-probabilities of
                     every pair scored once before training; the bench makes every run score them, never reading a
                     table an earlier run cached, and counts that time, model hashing included, like TRL's)
    litft-random-precompute  litft-random with model.dpo.precompute_reference: true
    litft-shared     litft with data.share_prompt: true (one row per pair, the prompt computed once; real tokens
                     counted as the pair's two rows, like every runner)
    litft-shared-precompute  litft-precompute with data.share_prompt: true
    trl              DPOTrainer, reference forward in every step (adapters off), gradient checkpointing off, fp32
    trl-precompute   the same with precompute_ref_log_probs=True (its documented fastest setting: the reference
                     log-probabilities of every pair computed once before training, batch precompute_ref_batch_size)
    trl-grouped      trl with length grouping, as trl-precompute-grouped (next)
    trl-precompute-grouped  trl-precompute with length grouping (train_sampling_strategy="group_by_length"). DPO's
                     tokenized rows have no input_ids and TRL drops columns outside its signature before the sampler,
                     so transformers cannot infer lengths (ValueError, checked on TRL 1.16 / transformers 5.25); the runner adds a "length" column (the longer
                     of the pair's two rows, tokens) and sets remove_unused_columns=False (its collator ignores the
                     other columns)

TRL 1.16's ``padding_free`` warns and falls back to padding ("temporarily unavailable"), and it has no
``use_logits_to_keep``: its log-probabilities already come from a fused head on completion tokens only
(``fused_lm_head=True``); both are therefore left at their defaults.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402  (shared helpers: model path, timing summary, RSS, real tokens, machine/versions)
from bench_data import alternate, load_average  # noqa: E402

REPO = bench.REPO
RUNNERS = ("litft", "litft-random", "litft-precompute", "litft-random-precompute", "litft-shared",
           "litft-shared-precompute", "trl", "trl-precompute",
           "trl-grouped", "trl-precompute-grouped")
TRL_RUNNERS = ("trl", "trl-precompute", "trl-grouped", "trl-precompute-grouped")
DATASET = "dpo_en_demo"
ROLES = {"human": "user", "gpt": "assistant", "system": "system", "observation": "user"}


def dpo_pairs() -> list[dict]:
    """dpo_en_demo as TRL conversational preference records (prompt messages, chosen / rejected reply)."""
    records = json.loads((bench.data_dir() / f"{DATASET}.json").read_text(encoding="utf-8"))
    return [{"prompt": [{"role": ROLES[m["from"]], "content": m["value"]} for m in r["conversations"]],
             "chosen": [{"role": "assistant", "content": r["chosen"]["value"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]["value"]}]} for r in records]


def fitting_pairs(path: Path, cutoff: int, count: int) -> dict:
    """The first ``count`` pairs of dpo_en_demo whose chosen and rejected conversations (the tokenizer's chat
    template) both fit in ``cutoff`` tokens, written to ``path`` as a TRL-format file that both runners read: no row is
    truncated by either (TRL keeps the start and drops pairs whose prompt fills max_length, litft keeps the prompt's
    end), so both train on the same pairs and the same tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bench.plain_model_path())

    def length(messages):
        ids = tokenizer.apply_chat_template(messages, tokenize=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

    chosen, skipped = [], 0
    for record in dpo_pairs():
        if len(chosen) == count:
            break
        if max(length(record["prompt"] + record["chosen"]), length(record["prompt"] + record["rejected"])) <= cutoff:
            chosen.append(record)
        else:
            skipped += 1
    if len(chosen) < count:
        sys.exit(f"bench_dpo.py: only {len(chosen)} pairs of {DATASET} fit in {cutoff} tokens; lower --steps/--batch")
    path.write_text(json.dumps(chosen), encoding="utf-8")
    return {"pairs": len(chosen), "skipped_longer_than_cutoff": skipped, "file": path.name}


# ---------------------------------------------------------------------------------------------- litft
def run_litft(args, *, grouped: bool, precompute: bool = False, share: bool = False) -> dict:
    sys.path.insert(0, str(REPO))
    import litft.trainer as litft_trainer
    from litft.cli import run
    from litft.methods import precompute as litft_precompute

    state = {"precompute_s": 0.0, "precomputed_pairs": 0, "model_key_s": 0.0}
    if precompute:
        litft_precompute.read_table = lambda path, pairs: None  # score in every run, as TRL does (no cached table)
        table_fn, key_fn = litft_precompute.reference_table, litft_precompute.model_key

        def timed_table(**kw):
            t0 = time.perf_counter()
            table = table_fn(**kw)
            state["precompute_s"] += time.perf_counter() - t0
            state["precomputed_pairs"] += int(table.shape[0])
            return table

        def timed_key(*a, **kw):
            t0 = time.perf_counter()
            key = key_fn(*a, **kw)
            state["model_key_s"] += time.perf_counter() - t0
            return key

        litft_precompute.reference_table, litft_precompute.model_key = timed_table, timed_key

    timer = bench._litft_step_timer()
    original = litft_trainer.default_callbacks
    litft_trainer.default_callbacks = lambda *a, **k: original(*a, **k) + [timer]  # the CLI builds the trainer
    out = tempfile.mkdtemp(prefix="litft-bench-dpo-")
    config = {
        "output_dir": out,
        "seed_everything": 42,
        "model": {
            "name_or_path": bench.MODEL,
            "gguf_file": bench.GGUF,
            "dtype": "float32",
            "attn_implementation": args.attn,
            "method": "dpo",
            "dpo": {"beta": args.beta, "loss_type": "sigmoid", "precompute_reference": precompute},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all"},
            "optimizer": {"lr": args.lr},
            "scheduler": {"name": "constant"},
        },
        "data": {
            "dataset": args.data,
            "cutoff_len": args.cutoff,
            "batch_size": args.batch,
            "group_by_length": grouped,
            "share_prompt": share,
            "num_workers": 0,
        },
        "trainer": bench.cpu_trainer(args.steps),
    }
    cfg = bench.write_config(config, out)
    if args.profile:
        return _profiled(lambda: run(["fit", "--config", str(cfg)]), timer, args.profile)
    rc = run(["fit", "--config", str(cfg)])
    if rc:
        raise SystemExit(f"litft fit failed with exit code {rc}")
    res = bench.summary(timer.ends, timer.tokens, timer.start)
    if precompute:
        res["model_key_s"] = round(state["model_key_s"], 3)
    return _amortized(res, state, args)


def _amortized(res: dict, state: dict, args) -> dict:
    """The precompute's seconds and pairs, and (when it ran) the rate with its time per pair added to every timed
    step's pairs: the rate the steps cost in all (one epoch)."""
    res["precompute_s"] = round(state["precompute_s"], 3)
    res["precomputed_pairs"] = state["precomputed_pairs"]
    if res["median_step_s"] and state["precomputed_pairs"]:
        per_pair = state["precompute_s"] / state["precomputed_pairs"]
        res["amortized_tok_s"] = res["median_tokens_per_step"] / (res["median_step_s"] + per_pair * args.batch)
    return res


def _profiled(fit, timer, path: str) -> dict:
    """The litft run under cProfile; the profile (pstats) goes to ``path``."""
    import cProfile

    profiler = cProfile.Profile()
    rc = profiler.runcall(fit)
    profiler.dump_stats(path)
    if rc:
        raise SystemExit(f"litft fit failed with exit code {rc}")
    return bench.summary(timer.ends, timer.tokens, timer.start)


# ---------------------------------------------------------------------------------------------- TRL
def run_trl(args, *, precompute: bool, grouped: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    ends: list[float] = []
    tokens: list[int] = []
    state = {"start": None, "precompute_s": 0.0, "precomputed_pairs": 0}

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            state["start"] = time.perf_counter()

        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())
            bench.mark_cpu()

    class TimedDPOTrainer(DPOTrainer):
        def training_step(self, model, inputs, *rest, **kw):
            tokens.append(bench.real_tokens(inputs, self.processing_class.pad_token_id))
            return super().training_step(model, inputs, *rest, **kw)

        def _precompute_ref_logps(self, dataset, *a, **kw):
            t0 = time.perf_counter()
            out = super()._precompute_ref_logps(dataset, *a, **kw)
            state["precompute_s"] += time.perf_counter() - t0
            state["precomputed_pairs"] += len(dataset)
            return out

    path = bench.plain_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=args.attn)
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-dpo-"),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        beta=args.beta,
        loss_type=["sigmoid"],
        max_length=args.cutoff,
        precompute_ref_log_probs=precompute,
        precompute_ref_batch_size=args.batch if precompute else None,
        gradient_checkpointing=False,  # DPOConfig turns it on by default; it only costs time here
        bf16=False,  # DPOConfig's default bf16 is 25x slower on these CPUs (field notes)
        fp16=False,
        use_cpu=True,
        seed=42,
        data_seed=42,
        **({"train_sampling_strategy": "group_by_length", "remove_unused_columns": False} if grouped else {}),
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=bench.LORA_TARGETS,
                             task_type="CAUSAL_LM")
    records = json.loads(Path(args.data).read_text(encoding="utf-8"))
    dataset = Dataset.from_list(records)
    if grouped:  # LengthGroupedSampler's lengths: the longer row of each pair (prompt + reply, chat template)
        def row(messages):
            ids = tokenizer.apply_chat_template(messages, tokenize=True)
            return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

        dataset = dataset.add_column("length", [max(row(r["prompt"] + r["chosen"]), row(r["prompt"] + r["rejected"]))
                                                for r in records])
    trainer = TimedDPOTrainer(
        model=model,
        ref_model=None,  # with a PEFT model: the reference is the base with the adapters off, as in litft
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Timer()],
    )
    trainer.train()
    return _amortized(bench.summary(ends, tokens, state["start"]), state, args)


# ---------------------------------------------------------------------------------------------- driver
RUNNER_SETTINGS: dict[str, tuple] = {
    "litft": (run_litft, {"grouped": True}),
    "litft-random": (run_litft, {"grouped": False}),
    "litft-precompute": (run_litft, {"grouped": True, "precompute": True}),
    "litft-random-precompute": (run_litft, {"grouped": False, "precompute": True}),
    "litft-shared": (run_litft, {"grouped": True, "share": True}),
    "litft-shared-precompute": (run_litft, {"grouped": True, "precompute": True, "share": True}),
    "trl": (run_trl, {"precompute": False}),
    "trl-precompute": (run_trl, {"precompute": True}),
    "trl-grouped": (run_trl, {"precompute": False, "grouped": True}),
    "trl-precompute-grouped": (run_trl, {"precompute": True, "grouped": True}),
}
"""Each runner: its function and settings (the RUNNERS docstring above says what they mean)."""


def one(runner: str, args) -> dict:
    if runner not in RUNNER_SETTINGS:
        raise SystemExit(f"unknown runner {runner}; choose from {', '.join(RUNNERS)}")
    run, settings = RUNNER_SETTINGS[runner]
    return run(args, **settings)


def spawn(runner: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_one", runner, "--steps", str(args.steps),
           "--batch", str(args.batch), "--cutoff", str(args.cutoff), "--pairs", str(args.pairs),
           "--lr", str(args.lr), "--beta", str(args.beta), "--attn", args.attn, "--data", args.data]
    if args.profile:
        cmd += ["--profile", args.profile]
    if runner.startswith("trl") and importlib.util.find_spec("trl") is None:
        import bench_data

        cmd[0] = str(bench_data.trl_python())  # TRL in its own venv (created once), as bench.py's c1 runners
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        if not args.keep_going:
            raise SystemExit(f"{runner} failed (exit {proc.returncode})")
        return {"failed": proc.returncode, "stderr_tail": proc.stderr[-2000:]}
    result = json.loads(lines[-1][len("BENCH_RESULT "):])
    result["wall_s"] = time.perf_counter() - t0
    return result


def report(results: dict[str, list[dict]]) -> str:
    agg = {}
    for runner, runs in results.items():
        runs = [r for r in runs if not r.get("failed")]
        if not runs:
            continue
        rates = [r["median_tok_s"] for r in runs if r["median_tok_s"]]
        amortized = [r["amortized_tok_s"] for r in runs if r.get("amortized_tok_s")]
        agg[runner] = {
            "tok_s": statistics.median(rates) if rates else None,
            "cpu": statistics.median([r["median_tok_per_cpu_s"] for r in runs if r.get("median_tok_per_cpu_s")] or [0]),
            "runs": [round(x, 1) for x in rates],
            "amortized": statistics.median(amortized) if amortized else None,
            "step_s": statistics.median(r["median_step_s"] for r in runs if r["median_step_s"]),
            "tokens": statistics.median(r["median_tokens_per_step"] for r in runs if r["median_tokens_per_step"]),
            "first": statistics.median(r["time_to_first_step_s"] for r in runs),
            "precompute": statistics.median(r.get("precompute_s", 0.0) for r in runs),
            "rss": max(r["peak_rss_mib"] for r in runs),
            "rss_runs": [round(r["peak_rss_mib"]) for r in runs],
            # every step (the first too) and the precompute: all the run's real tokens over the time they cost
            "run": statistics.median(sum(r["step_tokens"]) / (sum(r["step_s"]) + r.get("precompute_s", 0.0)) for r in runs),
        }
    lead = agg.get("litft") or next((a for r, a in agg.items() if r.startswith("litft")), {})
    rows = ["| runner | real tok/s (median) | per run | real tok/CPU-s | s/step | real tok/step | ref precompute s | amortized tok/s | "
            "whole run tok/s | first step s | peak RSS MiB (max; per run) | litft / runner (speed) | runner / litft (RSS) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for runner, a in agg.items():
        speed = lead["tok_s"] / a["tok_s"] if lead.get("tok_s") and a["tok_s"] else None
        rss = a["rss"] / lead["rss"] if lead.get("rss") else None
        rows.append(f"| {runner} | {bench._fmt(a['tok_s'])} | {a['runs']} | {bench._fmt(a['cpu'])} | {bench._fmt(a['step_s'], '.2f')} | "
                    f"{bench._fmt(a['tokens'], '.0f')} | {bench._fmt(a['precompute'])} | {bench._fmt(a['amortized'])} | "
                    f"{bench._fmt(a['run'])} | {bench._fmt(a['first'])} | {bench._fmt(a['rss'], '.0f')}; {a['rss_runs']} | {bench._fmt(speed, '.2f')} | "
                    f"{bench._fmt(rss, '.2f')} |")
    # a runner's rate counting its reference precompute (amortized) where it has one: the like-for-like figure
    total = {r: (a["amortized"] or a["tok_s"]) for r, a in agg.items() if a["tok_s"]}
    for label, rate in (("timed steps only", {r: a["tok_s"] for r, a in agg.items() if a["tok_s"]}),
                        ("precompute counted", total), ("whole run", {r: a["run"] for r, a in agg.items()})):
        trl = {r: v for r, v in rate.items() if r in TRL_RUNNERS}
        ours = {r: v for r, v in rate.items() if r.startswith("litft")}
        if trl and ours:
            best, mine = max(trl, key=trl.get), max(ours, key=ours.get)
            rows.append(f"\n{label}: litft's best ({mine}) / TRL's best ({best}, among {', '.join(trl)}): "
                        f"{rate[mine]:.1f} / {rate[best]:.1f} = {rate[mine] / rate[best]:.2f}x real tokens/s; peak RSS "
                        f"{agg[mine]['rss']:.0f} vs {agg[best]['rss']:.0f} MiB ({agg[mine]['rss'] / agg[best]['rss']:.2f}x)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runners", default="litft,trl,trl-precompute")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is untimed)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per runner, alternating runners")
    parser.add_argument("--batch", type=int, default=2, help="pairs per optimizer step (2 rows each)")
    parser.add_argument("--cutoff", type=int, default=512, help="tokens per row (litft cutoff_len, TRL max_length)")
    parser.add_argument("--pairs", type=int, default=None,
                        help="the first N pairs of dpo_en_demo that fit in --cutoff (default: steps x batch, one epoch)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the runs (0 = torch default)")
    parser.add_argument("--profile", help="litft runners: write a cProfile of the run (pstats) to this file")
    parser.add_argument("--json", help="write all results to this JSON file (rewritten after every run)")
    parser.add_argument("--keep-going", action="store_true", help="record a failed run and go on with the others")
    parser.add_argument("--report-from", help="print the report of a --json file written earlier, run nothing")
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)  # (internal) the pairs file fitting_pairs wrote
    args = parser.parse_args(argv)
    if args.pairs is None:
        args.pairs = args.steps * args.batch
    if args.report_from:  # the report of a saved --json file
        print(report(json.loads(Path(args.report_from).read_text(encoding="utf-8"))["results"]))
        return 0
    if args._one:
        print("BENCH_RESULT " + json.dumps(one(args._one, args)), flush=True)
        return 0

    bench.plain_model_path()  # convert the GGUF once, outside the timed runs
    args.data = str(Path(tempfile.mkdtemp(prefix="bench-dpo-data-")) / "pairs.json")
    data = fitting_pairs(Path(args.data), args.cutoff, args.pairs)
    header = {"data": data, "machine": bench.machine(), "versions": bench.versions(), "load_before": load_average(),
              "args": {k: (os.path.basename(v) if k in ("json", "profile", "data") and v else v) for k, v in vars(args).items()}}
    print(json.dumps(header), flush=True)
    runners = [r.strip() for r in args.runners.split(",") if r.strip()]
    keys = ("median_tok_s", "median_tok_per_cpu_s", "median_tokens_per_step", "time_to_first_step_s", "peak_rss_mib",
            "step_s", "precompute_s", "amortized_tok_s", "wall_s", "load_after")
    results = alternate(runners, args.repeats, lambda runner: spawn(runner, args), header=header, json_path=args.json,
                        brief=lambda res: {k: res.get(k) for k in keys})
    print(report(results))
    print(f"load average before {header['load_before']}, after {header['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
