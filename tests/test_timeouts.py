"""Collective timeouts: long until the first optimizer step, bounded after it (litft/strategies/timeout.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist
import yaml

from litft.errors import LitFTError

REPO = Path(__file__).resolve().parents[1]


def test_timeouts_from_the_environment(monkeypatch):
    from litft.strategies import LitFTDDPStrategy
    from litft.strategies.timeout import dist_timeout, startup_timeout

    monkeypatch.delenv("LITFT_DIST_TIMEOUT", raising=False)
    monkeypatch.delenv("LITFT_DIST_STARTUP_TIMEOUT", raising=False)
    assert (startup_timeout(), dist_timeout()) == (timedelta(seconds=3600), timedelta(seconds=300))
    strategy = LitFTDDPStrategy()
    assert strategy._timeout == timedelta(seconds=3600)  # the process group is created with the start-up one
    assert strategy._phase_timeouts == (timedelta(seconds=3600), timedelta(seconds=300))
    monkeypatch.setenv("LITFT_DIST_TIMEOUT", "42")
    monkeypatch.setenv("LITFT_DIST_STARTUP_TIMEOUT", "600.5")
    assert LitFTDDPStrategy()._phase_timeouts == (timedelta(seconds=600.5), timedelta(seconds=42))
    explicit = LitFTDDPStrategy(timeout=timedelta(seconds=7))  # a strategy's own timeout serves both phases
    assert explicit._timeout == timedelta(seconds=7) and explicit._phase_timeouts == (timedelta(seconds=7),) * 2
    for env, bad in (("LITFT_DIST_TIMEOUT", "soon"), ("LITFT_DIST_STARTUP_TIMEOUT", "0")):
        monkeypatch.setenv(env, bad)
        with pytest.raises(LitFTError, match=rf"^{env}='{bad}': expected a number of seconds > 0$"):
            LitFTDDPStrategy()
        monkeypatch.delenv(env)


def test_deepspeed_strategy_starts_with_the_startup_timeout(monkeypatch):
    pytest.importorskip("deepspeed")
    from litft.strategies import LitFTDeepSpeedStrategy

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("LITFT_DIST_STARTUP_TIMEOUT", "1234")
    monkeypatch.setenv("LITFT_DIST_TIMEOUT", "56")
    strategy = LitFTDeepSpeedStrategy(stage=2)
    assert strategy._timeout == timedelta(seconds=1234)
    assert strategy._phase_timeouts == (timedelta(seconds=1234), timedelta(seconds=56))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_switch_reaches_every_group_after_the_first_optimizer_step(monkeypatch):
    """In one process over gloo: the default group and one made during set-up (as DeepSpeed makes its own, with
    torch's 30 min default) get the start-up timeout after set-up and the bounded one after the first step, once."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    from litft.shims.torch import group_timeout
    from litft.strategies.timeout import StartupTimeout

    class Lightning:  # stands for Lightning's strategy: set-up makes a group, a step returns its output
        def setup(self, trainer):
            self.extra = dist.new_group([0])

        def optimizer_step(self, *args, **kwargs):
            return "stepped"

    class Strategy(StartupTimeout, Lightning):
        def __init__(self):
            self._timeout = self._startup_timeout_for(None)

    monkeypatch.setenv("LITFT_DIST_STARTUP_TIMEOUT", "900")
    monkeypatch.setenv("LITFT_DIST_TIMEOUT", "3")
    strategy = Strategy()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                            timeout=strategy._timeout)
    try:
        default = dist.group.WORLD
        strategy.setup(None)
        assert group_timeout(strategy.extra) == timedelta(seconds=900) == group_timeout(default)
        assert strategy.optimizer_step() == "stepped"
        assert group_timeout(strategy.extra) == timedelta(seconds=3) == group_timeout(default)
        strategy._phase_timeouts = (timedelta(seconds=900), timedelta(seconds=77))
        strategy.optimizer_step()  # later steps change nothing
        assert group_timeout(default) == timedelta(seconds=3)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- for real, 2 processes over gloo
STARTUP_S, BOUNDED_S = 40, 3
STALL_BEFORE_S = 8
"""Rank 1 stalls before the first step longer than the bounded timeout, well inside the start-up one."""
STALL_AFTER_S = 60
"""... and again at step 2, longer than both timeouts: rank 0 must end about BOUNDED_S after it starts (the test then
kills the stalled rank, as srun --kill-on-bad-exit does, so the stall's length costs nothing)."""


@pytest.mark.slow
@pytest.mark.distributed
def test_startup_stall_survives_and_a_later_stall_ends_the_job(tmp_path, tiny_llama, alpaca_file):
    """Two ranks as two processes (two "nodes" on loopback, as srun starts them), LoRA over gloo with tiny timeouts:
    rank 1 stalls before the first step (the job goes on) and at step 2 (rank 0 ends within the bounded timeout)."""
    record = tmp_path / "record"
    record.mkdir()
    config = {
        "output_dir": str(tmp_path / "out"),
        "model": {"name_or_path": tiny_llama, "lora": {"r": 4, "alpha": 8}},
        "data": {"dataset": alpaca_file, "cutoff_len": 32, "batch_size": 2},
        "trainer": {
            "accelerator": "cpu", "devices": 1, "num_nodes": 2, "strategy": "ddp", "max_steps": 6, "logger": False,
            "enable_progress_bar": False, "enable_checkpointing": False,
            "callbacks": [{"class_path": "tests.timeout_probe.Stall",
                           "init_args": {"record_dir": str(record), "rank": 1, "before_first_s": STALL_BEFORE_S,
                                         "at_step": 2, "stall_s": STALL_AFTER_S}}],
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"))}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), LITFT_CACHE=str(tmp_path / "cache"),
               LITFT_DIST_STARTUP_TIMEOUT=str(STARTUP_S), LITFT_DIST_TIMEOUT=str(BOUNDED_S))
    procs, started = [], time.time()
    for rank in (0, 1):
        out = open(tmp_path / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "litft", "fit", "--config", str(path)], cwd=REPO,
                                      env={**env, "NODE_RANK": str(rank)}, stdout=out, stderr=subprocess.STDOUT))
    try:
        code0 = procs[0].wait(timeout=600)
        ended = time.time()
    finally:
        for proc in procs:  # what srun --kill-on-bad-exit does to the stalled rank
            proc.kill()
            proc.wait()
    log = (tmp_path / "rank0.log").read_text()[-6000:]
    events = {rank: [json.loads(line) for line in (record / f"rank{rank}.jsonl").read_text().splitlines()]
              for rank in (0, 1)}
    stalls = [e for e in events[1] if e["event"] == "stall"]
    # The start-up stall (longer than the bounded timeout) did not end the job: both ranks reached step 2 ...
    assert [e["step"] for e in stalls] == [0, 2], (stalls, log)
    assert {e["step"] for e in events[0] if e["event"] == "batch"} >= {0, 1, 2}, log
    # ... with every process group on the start-up timeout before the first step and the bounded one after it.
    for rank, entries in events.items():
        before = [e["timeouts"] for e in entries if e["event"] == "batch" and e["step"] == 0]
        after = [e["timeouts"] for e in entries if e["event"] == "batch" and e["step"] >= 1]
        assert before and all(t and set(t) == {STARTUP_S} for t in before), (rank, before)
        assert after and all(t and set(t) == {BOUNDED_S} for t in after), (rank, after)
    # The stall at step 2 ended rank 0 through the bounded timeout, long before the stalled rank woke up.
    took = ended - stalls[1]["time"]
    print(f"\nfirst batch {events[0][0]['time'] - started:.1f} s after start; rank 0 ended {took:.1f} s after the "
          f"step-2 stall began (bounded timeout {BOUNDED_S} s, stall {STALL_AFTER_S} s)")
    assert code0 != 0 and "Timed out waiting 3000ms" in log, log
    assert took < STARTUP_S - 10, f"rank 0 ended {took:.1f} s after the stall began\n{log}"
