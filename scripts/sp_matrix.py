"""Sequence parallelism with more than one data-parallel group: 4 CPU processes = 2 data-parallel groups x 2
sequence-parallel ranks (``LitFTDeepSpeedStrategy(sequence_parallel_size=2)``) vs 1 process with the same global
batch. Too slow for ``make test`` on 2 cores (4 processes, each importing torch/DeepSpeed/transformers), so it is
run by hand and its result recorded in docs/benchmarks.md.

Both runs train a tiny random Llama with LoRA for 4 optimizer steps (plain SGD at lr 1.0 and gradient clipping at
1.0, so a wrong loss scale shows; rows of unequal reply lengths; 20 rows = 3 global batches per epoch, so the steps
cross an epoch end). The 4-process run has micro-batch 4 per group (global 8), the 1-process run micro-batch 8.
Checked, each a failure when it does not hold:

- per-step loss and gradient norm within 1e-4 relative of the 1-process run, the final adapter within 1e-4
  relative to its largest weight (the distributed tests' tolerances);
- the loader (``data_rank_world``): the two ranks of a group train on the same rows at every step, the two groups
  on disjoint rows, and together on exactly the 1-process run's rows of that step;
- the loss scale: the trained-token count each rank contributes to the step's all-reduced count (what
  ``sequence_parallel.shard`` leaves in ``num_target_tokens``) is the group's count on its first rank and 0 on
  the other, and the 4 contributions sum to the 1-process run's trained tokens of the step.

    python scripts/sp_matrix.py --out /tmp/sp_matrix            # ZeRO-2, accumulation 1
    python scripts/sp_matrix.py --out /tmp/sp_matrix --stage 3 --accumulate 2

Exit status 0 when every check holds; the per-step numbers are printed and written to ``<out>/result.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl

REPO = Path(__file__).resolve().parents[1]
ROWS, STEPS, LR, CLIP = 20, 4, 1.0, 1.0
RTOL = 1e-4


class GroupRecorder(pl.Callback):
    """Per micro-batch, one JSON line in ``<path>.rank<global rank>``: the step, the unpadded token ids of the rows
    this rank got from the loader, and the trained-token count it contributes to the step's all-reduced count."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        from litft.strategies import sequence_parallel  # heavy: only inside the training processes

        ids, mask = batch["input_ids"], batch["attention_mask"]
        rows = [ids[i, : int(mask[i].sum())].tolist() for i in range(ids.shape[0])]
        contributed = sequence_parallel.shard(trainer.strategy, dict(batch))["num_target_tokens"]
        line = {"step": trainer.global_step + 1, "batch": batch_idx, "rows": rows, "contributed": int(contributed)}
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as f:
            f.write(json.dumps(line) + "\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(out: Path, model: str, data: str, *, devices: int, batch: int, stage: int, accumulate: int) -> Path:
    strategy = "auto" if devices == 1 else {
        "class_path": "litft.strategies.LitFTDeepSpeedStrategy",
        "init_args": {"stage": stage, "sequence_parallel_size": 2}}
    config = {
        "output_dir": str(out), "seed_everything": 0,
        "model": {"name_or_path": model, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                  "optimizer": {"name": "sgd", "lr": LR}, "scheduler": {"name": "constant"}},
        "data": {"dataset": data, "cutoff_len": 48, "batch_size": batch},
        "trainer": {
            "accelerator": "cpu", "devices": devices, "strategy": strategy, "max_steps": STEPS,
            "accumulate_grad_batches": accumulate, "gradient_clip_val": CLIP, "log_every_n_steps": 1,
            "enable_progress_bar": False, "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(out), "name": "", "version": "logs"}},
            "callbacks": [{"class_path": "sp_matrix.GroupRecorder", "init_args": {"path": str(out / "rows")}}],
        },
    }
    path = out.parent / f"{out.name}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


def _fit(config: Path, out: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"))}
    env.update(PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'scripts'}", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), DS_ACCELERATOR="cpu",
               LITFT_CACHE=str(out / "cache"))
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "litft", "fit", "--config", str(config)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3600)
    (out / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"{config}: exit {proc.returncode}\n{proc.stderr[-4000:]}")
    return time.time() - start


def _metric(out: Path, name: str) -> list[float]:
    with open(out / "logs" / "metrics.csv") as f:
        rows = sorted((r for r in csv.DictReader(f) if r.get(name)), key=lambda r: int(r["step"]))
    return [float(r[name]) for r in rows]


def _records(out: Path, rank: int) -> dict[int, dict]:
    """step -> {"rows": the rows of the step's micro-batches, "contributed": the count for the step}."""
    steps: dict[int, dict] = {}
    for line in Path(f"{out / 'rows'}.rank{rank}").read_text().splitlines():
        rec = json.loads(line)
        step = steps.setdefault(rec["step"], {"rows": [], "contributed": 0})
        step["rows"] += [tuple(r) for r in rec["rows"]]
        step["contributed"] = rec["contributed"]  # every micro-batch carries its accumulation group's count
    return steps


def _rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (model, data, both runs)")
    parser.add_argument("--stage", type=int, default=2, choices=(2, 3))
    parser.add_argument("--accumulate", type=int, default=1)
    args = parser.parse_args()

    from safetensors.torch import load_file  # heavy: after the arguments parse

    from litft.testing import build_tiny_model

    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    model = root / "tiny-llama"
    if not (model / "config.json").is_file():
        build_tiny_model("llama", model)
    data = root / "rows.json"
    # short prompts, replies of 12-22 numbers cut at cutoff_len 48: a sequence's halves hold unequal trained tokens
    data.write_text(json.dumps([{"instruction": f"Double {i}.", "input": "",
                                 "output": " ".join([str(2 * i)] * (12 + (7 * i) % 11))} for i in range(ROWS)]))
    tag = f"zero{args.stage}-a{args.accumulate}"
    single, four = root / f"single-a{args.accumulate}", root / f"dp2xsp2-{tag}"
    common = dict(stage=args.stage, accumulate=args.accumulate)
    seconds = {"single": _fit(_config(single, str(model), str(data), devices=1, batch=8, **common), single),
               "dp2xsp2": _fit(_config(four, str(model), str(data), devices=4, batch=4, **common), four)}
    log = (four / "log.txt").read_text()
    failures: list[str] = []
    if "sequence parallelism: 2 ranks per sequence (Ulysses, sdpa), 2 data-parallel groups" not in log:
        failures.append("the 4-process run did not report 2 data-parallel groups of 2")

    losses, ref_losses = _metric(four, "train/loss"), _metric(single, "train/loss")
    norms, ref_norms = _metric(four, "train/grad_norm"), _metric(single, "train/grad_norm")
    if not len(losses) == len(ref_losses) == len(norms) == len(ref_norms) == STEPS:
        failures.append(f"expected {STEPS} logged steps: {losses} {ref_losses} {norms} {ref_norms}")
    if max(ref_norms) <= CLIP:
        failures.append(f"gradient norms {ref_norms} never reach gradient_clip_val={CLIP}: nothing clips")
    loss_rel, norm_rel = _rel(losses, ref_losses), _rel(norms, ref_norms)
    adapter, ref_adapter = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (four, single))
    if sorted(adapter) != sorted(ref_adapter) or not ref_adapter:
        failures.append("the adapters hold different weights")
    adapter_abs = max((adapter[k] - ref_adapter[k]).abs().max().item() for k in ref_adapter)
    adapter_rel = adapter_abs / max(v.abs().max().item() for v in ref_adapter.values())
    for name, value in (("loss", loss_rel), ("grad norm", norm_rel), ("adapter", adapter_rel)):
        if not value <= RTOL:
            failures.append(f"{name}: max relative difference {value:.2e} > {RTOL}")

    ranks = [_records(four, r) for r in range(4)]
    reference = _records(single, 0)
    targets = {}  # the 1-process run's trained tokens per step = its own contributed count
    for step, ref in sorted(reference.items()):
        targets[step] = ref["contributed"]
        group = [sorted(ranks[r][step]["rows"]) for r in range(4)]
        if group[0] != group[1] or group[2] != group[3]:
            failures.append(f"step {step}: the ranks of a sequence-parallel group got different rows")
        if set(group[0]) & set(group[2]):
            failures.append(f"step {step}: the two data-parallel groups share rows")
        if sorted(group[0] + group[2]) != sorted(ref["rows"]):
            failures.append(f"step {step}: the groups' rows are not the 1-process run's rows")
        contributed = [ranks[r][step]["contributed"] for r in range(4)]
        if contributed[1] or contributed[3] or sum(contributed) != ref["contributed"]:
            failures.append(f"step {step}: trained tokens contributed {contributed}, 1 process {ref['contributed']}")

    result = {"stage": args.stage, "accumulate": args.accumulate, "losses": losses, "ref_losses": ref_losses,
              "grad_norms": norms, "ref_grad_norms": ref_norms, "max_rel": {"loss": loss_rel, "grad_norm": norm_rel,
              "adapter": adapter_rel}, "adapter_max_abs": adapter_abs, "trained_tokens_per_step": targets,
              "seconds": seconds, "failures": failures}
    (root / f"result-{tag}.json").write_text(json.dumps(result, indent=1))
    print(f"4 processes (2 data-parallel x 2 sequence-parallel, ZeRO-{args.stage}, A={args.accumulate}) vs 1 process")
    for step in range(len(losses)):
        print(f"  step {step + 1}: loss {losses[step]:.7f} vs {ref_losses[step]:.7f}, grad norm {norms[step]:.7f} vs "
              f"{ref_norms[step]:.7f}, trained tokens {targets.get(step + 1)}")
    print(f"  max relative difference: loss {loss_rel:.2e}, grad norm {norm_rel:.2e}, adapter {adapter_rel:.2e} "
          f"(max abs {adapter_abs:.2e}); wall {seconds['single']:.0f} s + {seconds['dp2xsp2']:.0f} s")
    print("\n".join(f"FAIL: {f}" for f in failures) or "all checks hold")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
