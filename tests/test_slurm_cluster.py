"""On a real SLURM cluster: a 2-node DDP fine-tune from the sbatch template, and preempted jobs that resume exactly.

The module fixture starts a two-node cluster on this machine with scripts/slurm_cluster.sh (munged,
slurmctld, slurmd n1 + n2 on loopback, in a private folder and on free ports) and stops its daemons by
pid afterwards. Needs root and Debian's slurm-wlm + munge (.ci/run installs them). Outside CI
(CI != true) the tests are skipped when those are missing; in CI they fail.

Jobs are submitted with `python -m litft slurm --config X.yaml` (the same template as slurm/*.sbatch,
cpu variant) and train a tiny Llama with LoRA over gloo, one task on each of n1 and n2. The preemption
soak is scripts/soak_preempt.py (3 trials here).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as L
import pytest
import yaml

from tests.helpers import write_alpaca

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_cluster.sh"

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.distributed]


class StepProbe(L.Callback):
    """Test observer run inside the SLURM job: prints where training starts and each step's loss."""

    def on_train_start(self, trainer, pl_module):
        print(f"probe: start rank={trainer.global_rank} world={trainer.world_size} "
              f"step={trainer.global_step} restart={os.environ.get('SLURM_RESTART_COUNT', '0')}", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        print(f"probe: rank={trainer.global_rank} step={trainer.global_step} loss={float(loss):.6f}", flush=True)


def _free_ports(n: int) -> list[int]:
    return _soak_module()._free_ports(n)  # one helper, in the soak script


def _unavailable() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return "SLURM tests need root (slurmd runs jobs as their owner)"
    missing = [exe for exe in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch") if shutil.which(exe) is None]
    if missing:
        return f"SLURM not installed ({', '.join(missing)} missing): apt-get install -y slurm-wlm munge"
    return None


class Cluster:
    def __init__(self, folder: Path, env: dict[str, str]):
        self.folder, self.env = folder, env

    def slurm(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def state(self, job: str) -> str:
        """Job state from squeue ('' once the job has left the queue)."""
        return self.slurm("squeue", "-h", "-j", job, "-o", "%T", check=False).strip()

    def wait_gone(self, job: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while self.state(job):
            if time.monotonic() > end:
                self.slurm("scancel", job, check=False)
                raise AssertionError(f"job {job} still {self.state(job) or 'queued'} after {timeout:.0f} s")
            time.sleep(1)

    def exit_code(self, job: str) -> str:
        out = self.slurm("scontrol", "show", "job", job, check=False)
        m = re.search(r"\bExitCode=(\S+)", out)
        return m.group(1) if m else "?"


@pytest.fixture(scope="module")
def cluster():
    reason = _unavailable()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: the SLURM tests must run; .ci/run installs slurm-wlm and munge)")
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="litft-slurm-", dir="/tmp"))  # short path: munge socket
    ctld, n1, n2 = _free_ports(3)
    env = {
        **os.environ,
        "LITFT_SLURM_DIR": str(folder),
        "LITFT_SLURM_PORT": str(ctld),
        "LITFT_SLURM_NODE_PORTS": f"{n1},{n2}",
        "SLURM_CONF": str(folder / "slurm.conf"),
        # Jobs inherit this environment (sbatch --export=ALL): the project's interpreter and code.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    started = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=180)
    try:
        if started.returncode != 0:
            logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((folder / "log").glob("*")))
            pytest.fail(f"SLURM cluster did not start: {started.stderr}{logs}")
        yield Cluster(folder, env)
    finally:
        stopped = subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr


def _config(folder: Path, model: str, data: str, *, max_steps: int) -> Path:
    config = {
        "output_dir": str(folder / "out"),
        "seed_everything": 0,
        "model": {"name_or_path": model, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                  "optimizer": {"lr": 1e-2}, "scheduler": {"name": "constant"}},
        "data": {"dataset": data, "cutoff_len": 64, "batch_size": 2, "val_size": 0},
        "trainer": {
            "accelerator": "cpu", "devices": 1, "num_nodes": 2, "strategy": "ddp",
            "max_steps": max_steps, "enable_checkpointing": False, "enable_progress_bar": False,
            "logger": False, "log_every_n_steps": 1,
            "callbacks": [{"class_path": "tests.test_slurm_cluster.StepProbe"}],
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def jobs(cluster, tiny_llama, tmp_path_factory):
    """The job 'plain' (4 steps), submitted with `litft slurm`."""
    root = tmp_path_factory.mktemp("slurm-jobs")
    data = str(write_alpaca(root / "alpaca.json", n=64))
    configs = {"plain": _config(root / "plain", tiny_llama, data, max_steps=4)}
    # Each job gets its own rendezvous port (free now): another test session's cluster on this machine
    # numbers its jobs from 1 too, and Lightning's default port derives from the job id. Submitted from
    # this process (Lightning is imported already); sbatch hands this environment to the job.
    from litft.cli import main

    submitted = {}
    for (name, config), port in zip(configs.items(), _free_ports(len(configs))):
        out = io.StringIO()
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
            for key, value in {**cluster.env, "MASTER_PORT": str(port)}.items():
                mp.setenv(key, value)
            mp.chdir(REPO)
            with pytest.raises(SystemExit) as done:
                main(["slurm", "--config", str(config), "--nodes", "2", "--devices", "1", "--job_name", name])
        assert done.value.code == 0, out.getvalue()
        m = re.search(r"Submitted batch job (\d+)", out.getvalue())
        assert m, out.getvalue()
        job = m.group(1)
        submitted[name] = (job, config.parent / "out", config.parent / "out" / "slurm" / f"{name}-{job}.out")
    yield submitted
    for job, _, _ in submitted.values():
        cluster.slurm("scancel", job, check=False)


def _probe(log: str):
    starts = [dict(re.findall(r"(\w+)=(\S+)", line)) for line in log.splitlines() if line.startswith("probe: start")]
    steps = [
        (int(rank), int(step), float(loss))
        for rank, step, loss in re.findall(r"^probe: rank=(\d+) step=(\d+) loss=(\S+)$", log, flags=re.M)
    ]
    return starts, steps


def _read(path: Path) -> str:
    """The job log (rank 0) followed by the other ranks' logs (<job log without .out>/rank<N>.log)."""
    text = path.read_text(errors="replace") if path.exists() else ""
    ranks = sorted(path.with_suffix("").glob("rank*.log"))
    return text + "".join(r.read_text(errors="replace") for r in ranks if r.name != "rank0.log")


def test_two_node_ddp_job_fine_tunes(cluster, jobs):
    job, out, log_file = jobs["plain"]
    cluster.wait_gone(job, timeout=300)
    log = _read(log_file)
    assert cluster.exit_code(job) == "0:0", log[-4000:]
    assert re.match(r"litft: \S+ job \d+ \(restart 0\) on n\[1-2\], main 127.0.0.1,", log), log[:300]
    starts, steps = _probe(log)
    # Both ranks joined one process group of two, one task on each node.
    assert sorted((s["rank"], s["world"]) for s in starts) == [("0", "2"), ("1", "2")], log[-4000:]
    assert "distributed_backend=gloo" in log and "Starting with 2 processes" in log
    assert sorted({(r, s) for r, s, _ in steps}) == [(r, s) for r in (0, 1) for s in (1, 2, 3, 4)]
    assert all(math.isfinite(loss) for _, _, loss in steps)
    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    from safetensors.torch import load_file

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert weights and all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in weights)


_CHECK = "import sys; from litft.slurm import check_allocation; check_allocation(int(sys.argv[1]), int(sys.argv[2])); print('ok')"


def _srun_check(cluster: Cluster, num_nodes: int, devices: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["srun", "-N2", "--ntasks-per-node=1", sys.executable, "-c", _CHECK, str(num_nodes), str(devices)],
        env=cluster.env, capture_output=True, text=True, timeout=120,
    )


def test_allocation_check_in_real_job_steps(cluster, jobs, tmp_path):
    """The SLURM variables litft reads are the ones a real srun / batch step sets (runs once the plain
    job has freed its CPUs)."""
    cluster.wait_gone(jobs["plain"][0], timeout=300)
    ok = _srun_check(cluster, 2, 1)
    assert (ok.returncode, ok.stdout) == (0, "ok\nok\n"), ok.stderr
    bad = _srun_check(cluster, 2, 2)
    assert bad.returncode != 0 and "ok" not in bad.stdout
    assert bad.stderr.count("LitFTError: SLURM job ") == 2, bad.stderr
    assert "does not match the trainer: --ntasks-per-node=1 but trainer.devices=2" in bad.stderr
    # Through the real command line: each task stops at once with one line (exit 2), no rendezvous hang.
    config = jobs["plain"][1].parent / "config.yaml"
    fit = subprocess.run(
        ["srun", "-N2", "--ntasks-per-node=1", "-J", "litft", sys.executable, "-m", "litft", "fit", "--config",
         str(config), "--trainer.num_nodes", "1", "--output_dir", str(tmp_path / "mismatch")],
        env=cluster.env, capture_output=True, text=True, timeout=300,
    )
    errors = [line for line in fit.stdout.splitlines() + fit.stderr.splitlines() if line.startswith("litft: error:")]
    assert errors == ["litft: error: SLURM job " + errors[0].split()[4] + " does not match the trainer: "
                      "--nodes=2 but trainer.num_nodes=1"] * 2, fit.stderr[-3000:]
    assert "exit code 2" in fit.stderr and "Traceback" not in fit.stderr
    # The batch script itself is not a step started by srun.
    log = tmp_path / "batch.out"
    cluster.slurm("sbatch", "--wait", "-N2", "--ntasks-per-node=1", f"--output={log}",
                  f"--wrap={sys.executable} -c \"{_CHECK}\" 2 1", check=False)
    assert "litft was not started with srun" in log.read_text(), log.read_text()


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak_preempt", REPO / "scripts" / "soak_preempt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preemption_soak_usr1_term_and_kill_end_on_the_uninterrupted_adapter(cluster, jobs, tmp_path):
    """scripts/soak_preempt.py, 3 trials: SIGUSR1 and SIGTERM at random moments of a 2-node DDP job, and kill -9 of
    one rank. Every job requeues (or, killed, ends within the bound and is requeued), resumes from its newest
    checkpoint and ends on the uninterrupted run's adapter bytes."""
    cluster.wait_gone(jobs["plain"][0], timeout=300)  # both CPUs of each node for the soak's jobs
    soak = _soak_module()
    env = {**cluster.env, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1"}
    results = soak.run(3, "ddp", ["usr1", "term", "kill"], seed=1, steps=10, bound=120, root=tmp_path, env=env,
                       training_only=True, parallel=2)
    assert [r.get("equal") for r in results] == [True] * 3, results
    assert all(r["restarts"] == 1 for r in results), results  # each was interrupted and came back once
    assert results[2]["ended_after_kill_s"] < 60, results  # not gloo's/NCCL's default timeout
