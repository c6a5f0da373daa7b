"""On a real SLURM cluster: a 2-node DDP fine-tune from the sbatch template, and a preempted job that resumes.

The module fixture starts a two-node cluster on this machine with scripts/slurm_cluster.sh (munged,
slurmctld, slurmd n1 + n2 on loopback, in a private folder and on free ports) and stops its daemons by
pid afterwards. Needs root and Debian's slurm-wlm + munge (.ci/run installs them). Outside CI
(CI != true) the tests are skipped when those are missing; in CI they fail.

Jobs are submitted with `python -m litft slurm --config X.yaml` (the same template as slurm/*.sbatch,
cpu variant) and train a tiny Llama with LoRA over gloo, one task on each of n1 and n2.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as L
import pytest
import yaml

from tests.helpers import build_tiny_model, write_alpaca

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_cluster.sh"

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.distributed]


class StepProbe(L.Callback):
    """Test observer run inside the SLURM job: prints where training starts and each step's loss,
    and slows steps down so that the test can signal the job while it trains."""

    def __init__(self, sleep: float = 0.0):
        self.sleep = sleep

    def on_train_start(self, trainer, pl_module):
        print(f"probe: start rank={trainer.global_rank} world={trainer.world_size} "
              f"step={trainer.global_step} restart={os.environ.get('SLURM_RESTART_COUNT', '0')}", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        print(f"probe: rank={trainer.global_rank} step={trainer.global_step} loss={float(loss):.6f}", flush=True)
        if self.sleep:
            time.sleep(self.sleep)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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
    ctld, n1, n2, master = _free_ports(4)
    env = {
        **os.environ,
        "LITFT_SLURM_DIR": str(folder),
        "LITFT_SLURM_PORT": str(ctld),
        "LITFT_SLURM_NODE_PORTS": f"{n1},{n2}",
        "SLURM_CONF": str(folder / "slurm.conf"),
        # Jobs inherit this environment: the project's interpreter and code, a rendezvous port that
        # no other test session on this machine uses.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "MASTER_PORT": str(master),
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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm-data")
    return str(build_tiny_model("llama", root / "model")), str(write_alpaca(root / "alpaca.json", n=64))


def _config(tmp_path: Path, tiny, *, max_steps: int, sleep: float) -> Path:
    model, data = tiny
    config = {
        "output_dir": str(tmp_path / "out"),
        "seed_everything": 0,
        "model": {"name_or_path": model, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                  "optimizer": {"lr": 1e-2}, "scheduler": {"name": "constant"}},
        "data": {"dataset": data, "cutoff_len": 64, "batch_size": 2, "val_size": 0},
        "trainer": {
            "accelerator": "cpu", "devices": 1, "num_nodes": 2, "strategy": "ddp",
            "max_steps": max_steps, "enable_checkpointing": False, "enable_progress_bar": False,
            "logger": False, "log_every_n_steps": 1,
            "callbacks": [{"class_path": "tests.test_slurm_cluster.StepProbe", "init_args": {"sleep": sleep}}],
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _submit(cluster: Cluster, config: Path) -> tuple[str, Path]:
    done = subprocess.run(
        [sys.executable, "-m", "litft", "slurm", "--config", str(config), "--nodes", "2", "--devices", "1",
         "--job_name", "tiny"],
        cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    m = re.search(r"Submitted batch job (\d+)", done.stdout)
    assert m, done.stdout
    job = m.group(1)
    return job, config.parent / "out" / "slurm" / f"tiny-{job}.out"


def _probe(log: str):
    starts = [dict(re.findall(r"(\w+)=(\S+)", line)) for line in log.splitlines() if line.startswith("probe: start")]
    steps = [
        (int(rank), int(step), float(loss))
        for rank, step, loss in re.findall(r"^probe: rank=(\d+) step=(\d+) loss=(\S+)$", log, flags=re.M)
    ]
    return starts, steps


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_two_node_ddp_job_fine_tunes(cluster, tiny, tmp_path):
    config = _config(tmp_path, tiny, max_steps=4, sleep=0.0)
    job, log_file = _submit(cluster, config)
    cluster.wait_gone(job, timeout=240)
    log = _read(log_file)
    assert cluster.exit_code(job) == "0:0", log[-4000:]
    starts, steps = _probe(log)
    # Both ranks joined one process group of two, one task on each node.
    assert sorted((s["rank"], s["world"]) for s in starts) == [("0", "2"), ("1", "2")], log[-4000:]
    assert "distributed_backend=gloo" in log and "Starting with 2 processes" in log
    assert sorted({(r, s) for r, s, _ in steps}) == [(r, s) for r in (0, 1) for s in (1, 2, 3, 4)]
    assert all(math.isfinite(loss) for _, _, loss in steps)
    adapter = tmp_path / "out" / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").stat().st_size > 0
    from safetensors.torch import load_file

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert weights and all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in weights)


def test_preempted_job_is_requeued_and_resumes(cluster, tiny, tmp_path):
    max_steps = 24
    config = _config(tmp_path, tiny, max_steps=max_steps, sleep=0.4)
    job, log_file = _submit(cluster, config)
    # Preempt once training is under way, as SLURM does 90 s before the time limit (--signal=SIGUSR1@90):
    # SIGUSR1 to the job's tasks (not the batch shell).
    end = time.monotonic() + 240
    while not any(step >= 4 for _, step, _ in _probe(_read(log_file))[1]):
        assert cluster.state(job), f"job {job} ended before it could be preempted:\n{_read(log_file)[-4000:]}"
        assert time.monotonic() < end, f"job {job} did not reach step 4:\n{_read(log_file)[-4000:]}"
        time.sleep(0.5)
    cluster.slurm("scancel", "--signal=USR1", job)
    cluster.wait_gone(job, timeout=300)
    log = _read(log_file)
    assert cluster.exit_code(job) == "0:0", log[-4000:]
    starts, steps = _probe(log)
    assert [s["restart"] for s in starts] == ["0", "0", "1", "1"], log[-4000:]
    first, second = starts[:2], starts[2:]
    assert {s["step"] for s in first} == {"0"}
    resumed = int(second[0]["step"])
    assert {s["step"] for s in second} == {str(resumed)} and 4 <= resumed < max_steps, log[-4000:]
    assert "Requeued SLURM job" in log
    assert (tmp_path / "out" / f"hpc_ckpt_1.ckpt").is_file()
    # Every step up to max_steps ran on both ranks; after the requeue they continued from the checkpoint.
    ran = {(r, s) for r, s, _ in steps}
    assert ran == {(r, s) for r in (0, 1) for s in range(1, max_steps + 1)}
    assert max(s for _, s, _ in steps) == max_steps
    assert all(math.isfinite(loss) for _, _, loss in steps)
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
