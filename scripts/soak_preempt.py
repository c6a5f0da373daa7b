#!/usr/bin/env python
"""Preemption soak on a real two-node SLURM cluster: every preempted job requeues, finishes, and ends on the
adapter of an uninterrupted run, byte for byte.

    python scripts/soak_preempt.py --trials 20                          # 2 nodes x 1 task, DDP over gloo
    python scripts/soak_preempt.py --trials 5 --strategy deepspeed_stage_2
    python scripts/soak_preempt.py --trials 3 --kinds usr1,term,kill    # what `make test` runs (3 trials)

Each trial submits a tiny-Llama LoRA job with `litft slurm` (2 nodes x 1 task, checkpoint every 3 steps,
validation every 4) and interrupts it at a random moment after its job step started, by one of:

  usr1  `scancel --signal=USR1` (what `#SBATCH --signal=SIGUSR1@90` sends before the time limit)
  term  `scancel --signal=TERM` (what preemption with PreemptMode=REQUEUE sends)
  kill  SIGKILL to one rank's process (a node or process dies): the job must end within --bound seconds, and is
        then requeued with `scontrol requeue` (as a site's requeue-on-failure policy does)

then waits for the job to finish and compares `<output_dir>/adapter/adapter_model.safetensors` with the
uninterrupted run's. The moment hit (data/model set-up, forward/backward, checkpoint save, validation, ...)
is read from a per-rank phase file the job writes (:class:`PhaseLog`). Prints one line per trial and a summary;
exits 1 if any trial failed.

Needs root and Debian's slurm-wlm + munge: it starts its own cluster with scripts/slurm_cluster.sh (in a
temporary folder, free ports) and stops it at the end, unless --slurm-conf points at a running one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
KINDS = ("usr1", "term", "kill")

try:  # inside the job (class_path soak_preempt.PhaseLog): Lightning is there
    import lightning.pytorch as _pl

    _Callback = _pl.Callback
except ImportError:  # pragma: no cover
    _Callback = object


class PhaseLog(_Callback):
    """Writes ``<dir>/rank<N>.json`` = {"pid", "phase", "step"} at every phase change (read by the soak driver)."""

    def __init__(self, folder: str, pause_s: float = 0.0):
        self.folder, self.pause_s = Path(folder), pause_s
        # Only the job's ranks write: `litft slurm` builds this callback too when it checks the config on submit,
        # and a phase file from the submitting process would make the driver aim at a job that has not started.
        self.active = "SLURM_JOB_ID" in os.environ
        self.rank = int(os.environ.get("SLURM_PROCID", "0"))
        self._write("setup (data, model)", 0)

    def _write(self, phase: str, step: int) -> None:
        if not self.active:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".rank{self.rank}.json.tmp"
        tmp.write_text(json.dumps({"pid": os.getpid(), "phase": phase, "step": step,
                                   "restart": os.environ.get("SLURM_RESTART_COUNT", "0")}))
        os.replace(tmp, self.folder / f"rank{self.rank}.json")

    def on_train_start(self, trainer, pl_module):
        self._write("train start", trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # pause_s: a tiny model's step takes milliseconds; a pause makes the steps long enough to aim at
        self._write("forward + loss all-reduce", trainer.global_step)
        time.sleep(self.pause_s)

    def on_before_backward(self, trainer, pl_module, loss):
        self._write("backward", trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._write("step end", trainer.global_step)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._write("checkpoint save", trainer.global_step)
        time.sleep(self.pause_s)  # inside the save (after its RNG all-gather, before the file is written)

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._write("validation", trainer.global_step)
            time.sleep(self.pause_s)

    def on_train_end(self, trainer, pl_module):
        self._write("train end (adapter)", trainer.global_step)


# ------------------------------------------------------------------------------------------------ the driver
def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_SUBMIT = threading.Lock()


def _litft_slurm(args: list[str], env: dict[str, str]) -> str:
    """`python -m litft slurm ...` in this process (Lightning is imported once, not once per job), with ``env`` as
    the environment sbatch hands to the job; returns what it printed."""
    from litft.cli import main

    with _SUBMIT:
        saved, cwd, out = dict(os.environ), os.getcwd(), io.StringIO()
        os.environ.clear()
        os.environ.update(env)
        os.chdir(REPO)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                try:
                    main(args)
                except SystemExit:
                    pass
        finally:
            os.environ.clear()
            os.environ.update(saved)
            os.chdir(cwd)
        return out.getvalue()


class Soak:
    def __init__(self, root: Path, env: dict[str, str], strategy: str, steps: int, bound: float, log=print,
                 pause_s: float = 0.3):
        self.root, self.env, self.strategy, self.steps, self.bound, self.log = root, env, strategy, steps, bound, log
        self.pause_s = pause_s
        for path in (str(REPO), str(SCRIPTS)):  # litft from this checkout; soak_preempt.PhaseLog when parsed
            if path not in sys.path:
                sys.path.insert(0, path)
        from litft.testing import build_tiny_model, write_alpaca

        self.model = str(build_tiny_model("llama", root / "tiny-llama"))
        self.data = str(write_alpaca(root / "alpaca.json", n=48))

    # -- SLURM helpers -------------------------------------------------------------------------------------------
    def sh(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def job_info(self, job: str) -> dict[str, str]:
        out = self.sh("scontrol", "-o", "show", "job", job, check=False)
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def state(self, job: str) -> str:
        return self.job_info(job).get("JobState", "")

    def step_running(self, job: str) -> bool:
        """The job step that srun starts (``<job>.0``) runs: signals reach the ranks from now on (before, only the
        batch script exists, and scancel --signal does not signal it)."""
        steps = self.sh("squeue", "-h", "-s", "-j", job, "-o", "%i", check=False).split()
        return any(re.fullmatch(rf"{job}\.\d+", s) for s in steps)

    # -- jobs ----------------------------------------------------------------------------------------------------
    def submit(self, name: str) -> tuple[str, Path]:
        import yaml

        out = self.root / name
        config = {
            "output_dir": str(out), "seed_everything": 0,
            "model": {"name_or_path": self.model, "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
                      "optimizer": {"lr": 1e-2}, "scheduler": {"name": "cosine", "warmup_steps": 2}},
            "data": {"dataset": self.data, "cutoff_len": 48, "batch_size": 2, "val_size": 4},
            "trainer": {
                "accelerator": "cpu", "devices": 1, "num_nodes": 2, "strategy": self.strategy,
                "precision": "32-true", "max_steps": self.steps, "val_check_interval": 4, "logger": False,
                "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1,
                "callbacks": [
                    {"class_path": "litft.callbacks.checkpoint.LitFTCheckpoint",
                     "init_args": {"every_n_train_steps": 3}},
                    {"class_path": "soak_preempt.PhaseLog",
                     "init_args": {"folder": str(out / "phase"), "pause_s": self.pause_s}},
                ],
            },
        }
        out.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**self.env, "MASTER_PORT": str(_free_ports(1)[0]), "LITFT_CACHE": str(self.root / "cache"),
               "PYTHONPATH": f"{REPO}{os.pathsep}{SCRIPTS}", "LITFT_DIST_TIMEOUT": "60"}
        text = _litft_slurm(["slurm", "--config", str(path), "--job_name", name, "--time", "20:00"], env)
        m = re.search(r"Submitted batch job (\d+)", text)
        if not m:
            raise RuntimeError(f"litft slurm failed: {text[-3000:]}")
        return m.group(1), out

    def wait(self, job: str, until, timeout: float, what: str) -> float:
        start = time.monotonic()
        while not until():
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"job {job}: {what} not reached after {timeout:.0f} s (state {self.state(job)})")
            time.sleep(0.25)
        return time.monotonic() - start

    def finish(self, job: str, timeout: float = 600) -> None:
        self.wait(job, lambda: self.state(job) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", ""),
                  timeout, "the end")
        info = self.job_info(job)
        if info.get("JobState") != "COMPLETED" or info.get("ExitCode") != "0:0":
            raise RuntimeError(f"job {job} ended {info.get('JobState')} exit {info.get('ExitCode')}")

    def phases(self, out: Path) -> dict[int, dict]:
        found = {}
        for f in (out / "phase").glob("rank*.json"):
            try:
                found[int(f.stem[4:])] = json.loads(f.read_text())
            except (ValueError, OSError):
                pass
        return found

    def reference(self) -> tuple[bytes, float, float]:
        """The uninterrupted run: (adapter bytes, seconds from its job step's start to its first training step,
        to its last one)."""
        job, out = self.submit("reference")
        self.wait(job, lambda: self.step_running(job), 300, "a running step")
        started, first, last = time.monotonic(), None, None
        while self.state(job) in ("RUNNING", "COMPLETING", "CONFIGURING"):
            phase = self.phases(out).get(0) or {}
            if first is None and phase.get("phase", "").startswith("forward"):
                first = time.monotonic() - started
            if last is None and phase.get("step") == self.steps:
                last = time.monotonic() - started
            time.sleep(0.1)
        self.finish(job)
        end = time.monotonic() - started
        return (out / "adapter" / "adapter_model.safetensors").read_bytes(), first or 0.0, last or end

    def trial(self, i: int, kind: str, target: tuple[str, float]) -> dict:
        """One job interrupted once by ``kind`` at ``target``: ("setup", seconds after its job step started),
        ("step", n): as soon as rank 0 is in optimizer step n or later (forward, backward, checkpoint save,
        validation), ("save", n) / ("val", n): as soon as rank 0 is in a checkpoint save / a validation run at step
        n or later."""
        job, out = self.submit(f"trial{i}-{kind}")
        self.wait(job, lambda: self.step_running(job), 300, "a running step")
        if target[0] == "setup":
            time.sleep(target[1])
        else:
            step = int(target[1])
            wanted = {"save": "checkpoint save", "val": "validation"}.get(target[0])

            def in_step() -> bool:  # rank 0 trains (not still setting up) at optimizer step `step` or later
                phase = self.phases(out).get(0) or {}
                name = phase.get("phase", "")
                return phase.get("step", -1) >= step and not name.startswith("setup") and name == (wanted or name)

            self.wait(job, lambda: in_step() or self.state(job) != "RUNNING", 300, f"step {step}")
        hit = self.phases(out)
        moment = "; ".join(f"rank{r}: {p['phase']} @ step {p['step']}" for r, p in sorted(hit.items())) or \
            "python start-up (imports)"
        result = {"trial": i, "kind": kind, "job": job, "target": f"{target[0]} {target[1]:g}", "moment": moment}
        if self.state(job) != "RUNNING":  # the moment came after the job's end (a start-up timed on a slow reference)
            result["missed"] = f"the job was {self.state(job) or 'gone'} before the moment: not interrupted"
        elif kind in ("usr1", "term"):
            try:
                self.sh("scancel", f"--signal={kind.upper()}", job)
            except RuntimeError:
                if self.state(job) == "RUNNING":
                    raise
                result["missed"] = "the job ended while it was being signalled: not interrupted"
            # the job saves, requeues itself and comes back (restart 1) or, signalled at the very end, just completes
            self.wait(job, lambda: int(self.job_info(job).get("Restarts", "0")) > 0 or self.state(job) == "COMPLETED",
                      self.bound, "requeue (or completion)")
        else:
            self.wait(job, lambda: len(self.phases(out)) == 2 or self.state(job) != "RUNNING", 120, "both ranks")
            victim = self.phases(out).get(1) or self.phases(out).get(0)
            if self.state(job) == "RUNNING" and victim:
                try:
                    os.kill(int(victim["pid"]), signal.SIGKILL)
                except ProcessLookupError:
                    pass
                ended = self.wait(job, lambda: self.state(job) not in ("RUNNING", "COMPLETING"), self.bound,
                                  "the end after kill -9")
                result["ended_after_kill_s"] = round(ended, 1)
                if self.state(job) != "COMPLETED":
                    self.sh("scontrol", "requeue", job)
        self.finish(job)
        info = self.job_info(job)
        result["restarts"] = int(info.get("Restarts", "0"))
        result["adapter"] = str(out / "adapter" / "adapter_model.safetensors")
        return result


def start_cluster(folder: Path) -> dict[str, str]:
    ctld, n1, n2 = _free_ports(3)
    env = {**os.environ, "LITFT_SLURM_DIR": str(folder), "LITFT_SLURM_PORT": str(ctld),
           "LITFT_SLURM_NODE_PORTS": f"{n1},{n2}", "SLURM_CONF": str(folder / "slurm.conf"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    subprocess.run([str(SCRIPTS / "slurm_cluster.sh"), "start"], env=env, check=True, capture_output=True,
                   text=True, timeout=180)
    return env


def stop_cluster(env: dict[str, str]) -> None:
    subprocess.run([str(SCRIPTS / "slurm_cluster.sh"), "stop"], env=env, capture_output=True, text=True, timeout=120)


def run(trials: int, strategy: str, kinds: list[str], seed: int, steps: int, bound: float, root: Path,
        env: dict[str, str], log=print, training_only: bool = False, parallel: int = 1,
        setup_fraction: float = 0.2, targets: list[tuple[str, float]] | None = None) -> list[dict]:
    """``trials`` jobs, each interrupted once at a random moment: in ``setup_fraction`` of them (unless
    ``training_only``) during start-up (imports, data preparation, model loading: timed on the reference run),
    else at a random optimizer step before the last. ``parallel`` jobs at a time (the reference among them when
    ``training_only``). ``targets`` (cycled) replaces the random moments (see :meth:`Soak.trial`), to replay a
    failed trial or aim at a phase. Returns one dict per trial (``equal``: the final adapter has the reference's bytes)."""
    rng = random.Random(seed)
    soak = Soak(root, env, strategy, steps, bound, log)
    pool = ThreadPoolExecutor(max_workers=max(1, parallel))
    ref = pool.submit(soak.reference)
    first = 0.0
    if not training_only:
        _, first, last = ref.result()
        log(f"soak: reference job: first step {first:.1f} s, last step {last:.1f} s after its start")
    plans = []
    for i in range(trials):
        kind = kinds[i % len(kinds)]
        if targets:
            target = targets[i % len(targets)]
        elif not training_only and rng.random() < setup_fraction:  # python start-up, data preparation, model loading
            target = ("setup", round(rng.uniform(0, first), 1))
        else:  # a step well before the last one (a signal at the last step just lets the job finish)
            target = ("step", rng.randrange(0, max(1, steps - 3)))
        plans.append((i, kind, target))

    def one(plan):
        i, kind, target = plan
        try:
            return soak.trial(i, kind, target)
        except Exception as err:  # a hang, a failed job: the trial failed
            return {"trial": i, "kind": kind, "target": f"{target[0]} {target[1]:g}", "error": str(err)}

    results = list(pool.map(one, plans))
    reference = ref.result()[0]
    pool.shutdown()
    for result in results:
        adapter = Path(result.pop("adapter", "") or "/nonexistent")
        result["equal"] = "error" not in result and adapter.is_file() and adapter.read_bytes() == reference
        log("soak: " + json.dumps(result))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--strategy", default="ddp", help="ddp or deepspeed_stage_2")
    parser.add_argument("--kinds", default="usr1,term,kill", help=f"comma-separated, cycled: {', '.join(KINDS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=16, help="max_steps of each job")
    parser.add_argument("--bound", type=float, default=120, help="seconds a job may take to requeue or end")
    parser.add_argument("--parallel", type=int, default=1, help="jobs at a time (each takes 1 CPU on each node)")
    parser.add_argument("--setup_fraction", type=float, default=0.2,
                        help="share of trials interrupted during start-up (imports, data, model) instead of a step")
    parser.add_argument("--targets", default=None,
                        help="comma-separated moments instead of random ones, cycled: setup:SECONDS, step:N, save:N "
                             "(in a checkpoint save at step >= N) or val:N (in a validation run)")
    parser.add_argument("--slurm-conf", default=None, help="use this running cluster instead of starting one")
    parser.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if any(k not in KINDS for k in kinds):
        parser.error(f"--kinds: expected some of {', '.join(KINDS)}")
    targets = None
    if args.targets:
        try:
            targets = [(t.split(":")[0], float(t.split(":")[1])) for t in args.targets.split(",") if t.strip()]
        except (IndexError, ValueError):
            parser.error("--targets: expected setup:SECONDS, step:N, save:N or val:N, comma-separated")
        if any(kind not in ("step", "setup", "save", "val") for kind, _ in targets):
            parser.error("--targets: expected setup:SECONDS, step:N, save:N or val:N, comma-separated")
    root = Path(args.keep or tempfile.mkdtemp(prefix="litft-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    if args.slurm_conf:
        env = {**os.environ, "SLURM_CONF": args.slurm_conf}
        cluster_dir = None
    else:
        cluster_dir = Path(tempfile.mkdtemp(prefix="litft-slurm-", dir="/tmp"))
        env = start_cluster(cluster_dir)
    env = {**env, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1"}
    try:
        results = run(args.trials, args.strategy, kinds, args.seed, args.steps, args.bound, root, env,
                      parallel=args.parallel, setup_fraction=args.setup_fraction, targets=targets)
    finally:
        if cluster_dir is not None:
            stop_cluster(env)
            shutil.rmtree(cluster_dir, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    failed = [r for r in results if not r.get("equal")]
    missed = [r for r in results if r.get("missed")]
    moments = sorted({r.get("moment", "?").split(";")[0].split(": ", 1)[-1].split(" @")[0]
                      for r in results if not r.get("missed")})
    print(f"soak: {args.strategy}, {len(results)} trials, {len(failed)} failed, {len(missed)} missed (the job had "
          f"ended before its moment: not interrupted); kinds {','.join(kinds)}; moments hit: {', '.join(moments)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
