"""SLURM without a cluster: sbatch rendering, `litft slurm` (dry run, submission, refusal), allocation check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from litft.errors import LitFTError
from litft.slurm import SbatchSpec, check_allocation, device_count, render_sbatch, template_spec

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- allocation check
def _job(**env) -> dict[str, str]:
    """The environment of a task started by srun in `sbatch --nodes=2 --ntasks-per-node=1`, plus changes."""
    base = {
        "SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "litft", "SLURM_NTASKS": "2", "SLURM_NNODES": "2",
        "SLURM_NTASKS_PER_NODE": "1", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
    }
    base.update(env)
    return {k: v for k, v in base.items() if v is not None}


def _refusal(num_nodes, devices, env) -> str:
    with pytest.raises(LitFTError) as err:
        check_allocation(num_nodes, devices, env)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_allocation_that_matches_passes():
    check_allocation(2, 1, _job())
    check_allocation(2, "1", _job())
    check_allocation(1, 4, _job(SLURM_NNODES="1", SLURM_NTASKS="4", SLURM_NTASKS_PER_NODE="4"))
    check_allocation(1, [0, 1], _job(SLURM_NNODES="1", SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2"))


def test_outside_slurm_and_interactive_allocations_are_not_checked():
    check_allocation(1, 8, {})
    check_allocation(1, 8, _job(SLURM_JOB_NAME="bash", SLURM_STEP_ID=None))
    check_allocation(1, 8, _job(SLURM_JOB_NAME="interactive"))


def test_refuses_nodes_mismatch():
    assert _refusal(1, 1, _job()) == (
        "SLURM job 77 does not match the trainer: --nodes=2 but trainer.num_nodes=1"
    )


def test_refuses_tasks_per_node_mismatch():
    env = _job(SLURM_NTASKS="8", SLURM_NTASKS_PER_NODE="4")
    assert _refusal(2, 2, env) == (
        "SLURM job 77 does not match the trainer: --ntasks-per-node=4 but trainer.devices=2"
    )
    both = _refusal(4, "2", env)
    assert both == ("SLURM job 77 does not match the trainer: --nodes=2 but trainer.num_nodes=4; "
                    "--ntasks-per-node=4 but trainer.devices=2")


def test_refuses_ntasks_without_ntasks_per_node():
    env = _job(SLURM_NTASKS_PER_NODE=None, SLURM_NTASKS="4")
    assert _refusal(2, 2, env) == (
        "SLURM job 77 does not match the trainer: --ntasks=4 without --ntasks-per-node "
        "(use --ntasks-per-node=trainer.devices)"
    )


def test_refuses_srun_with_fewer_tasks_than_the_trainer_expects():
    env = _job(SLURM_NTASKS="1")  # `srun -n1` inside a 2 x 1 allocation
    assert _refusal(2, 1, env) == (
        "SLURM job 77 does not match the trainer: srun started 1 tasks but trainer.num_nodes x trainer.devices = 2"
    )


def test_refuses_a_program_not_started_with_srun():
    env = _job(SLURM_STEP_ID=None)  # the batch script itself
    assert _refusal(2, 1, env) == (
        "SLURM job 77: litft was not started with srun (one process per device); "
        "run `srun python -m litft fit --config ...` in the batch script"
    )


def test_auto_devices_still_checks_nodes():
    check_allocation(2, "auto", _job())
    assert "trainer.num_nodes=1" in _refusal(1, "auto", _job())


@pytest.mark.parametrize(
    "devices, count",
    [(1, 1), (4, 4), ("4", 4), ([0, 1, 2], 3), ("0,1", 2), ("3,", 1), ("auto", None), (-1, None), ("-1", None)],
)
def test_device_count(devices, count):
    assert device_count(devices) == count


def test_trainer_refuses_mismatch_before_lightning(monkeypatch):
    from litft.trainer import LitFTTrainer

    for key, value in _job(SLURM_NTASKS="4", SLURM_NTASKS_PER_NODE="2").items():
        monkeypatch.setenv(key, value)
    with pytest.raises(LitFTError, match=r"^SLURM job 77 does not match the trainer: --ntasks-per-node=2 but "
                                         r"trainer.devices=1$"):
        LitFTTrainer(accelerator="cpu", devices=1, num_nodes=2, logger=False)


def test_trainer_in_slurm_turns_lightnings_requeue_off_and_records_signals(monkeypatch):
    """Inside a job step: SLURMEnvironment(auto_requeue=False) (no save inside Lightning's signal handler), and
    litft's recording handlers from the Trainer's construction on (a signal during data preparation is kept)."""
    import signal

    from lightning.fabric.plugins.environments import SLURMEnvironment

    from litft.callbacks.preemption import Preemption
    from litft.trainer import LitFTTrainer

    for key, value in _job(SLURM_NODEID="0").items():
        monkeypatch.setenv(key, value)
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    trainer = LitFTTrainer(accelerator="cpu", devices=1, num_nodes=2, strategy="ddp", logger=False)
    [pre] = [c for c in trainer.callbacks if isinstance(c, Preemption)]
    try:
        env = trainer.strategy.cluster_environment
        assert isinstance(env, SLURMEnvironment) and env.auto_requeue is False
        os.kill(os.getpid(), signal.SIGUSR1)
        assert pre.requested == signal.SIGUSR1
    finally:
        pre.restore()
    assert {s: signal.getsignal(s) for s in before} == before


def test_dist_timeout_is_bounded_and_configurable(monkeypatch):
    from datetime import timedelta

    from litft.strategies import LitFTDDPStrategy
    from litft.strategies.timeout import dist_timeout

    monkeypatch.delenv("LITFT_DIST_TIMEOUT", raising=False)
    # bounded after the first optimizer step (before it: LITFT_DIST_STARTUP_TIMEOUT, tests/test_timeouts.py)
    assert dist_timeout() == timedelta(seconds=300) and LitFTDDPStrategy()._phase_timeouts[1] == timedelta(seconds=300)
    monkeypatch.setenv("LITFT_DIST_TIMEOUT", "42")
    assert LitFTDDPStrategy()._phase_timeouts[1] == timedelta(seconds=42)
    assert LitFTDDPStrategy(timeout=timedelta(seconds=7))._timeout == timedelta(seconds=7)
    monkeypatch.setenv("LITFT_DIST_TIMEOUT", "soon")
    with pytest.raises(LitFTError, match=r"^LITFT_DIST_TIMEOUT='soon': expected a number of seconds > 0$"):
        dist_timeout()


def test_rank_logs_rank0_console_others_to_their_file(tmp_path):
    """Rank 1's whole output goes to <dir>/rank1.log; rank 0 keeps the console and logs litft's lines to rank0.log."""
    code = ("import logging, sys, warnings; from litft.slurm import setup_rank_logs; "
            "log = logging.getLogger('litft'); log.addHandler(logging.StreamHandler()); log.setLevel('INFO'); "
            "print(setup_rank_logs(log)); log.info('hello'); print('out'); warnings.warn('careful')")
    outputs = {}
    for rank in ("0", "1"):
        env = {**os.environ, **_job(SLURM_PROCID=rank), "LITFT_LOG_DIR": str(tmp_path / "logs"),
               "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outputs[rank] = done.stdout + done.stderr
    assert "hello" in outputs["0"] and "out" in outputs["0"] and outputs["1"] == ""
    rank1 = (tmp_path / "logs" / "rank1.log").read_text()
    assert "hello" in rank1 and "out" in rank1 and "careful" in rank1
    assert (tmp_path / "logs" / "rank0.log").read_text().endswith("[litft] hello\n")


# --------------------------------------------------------------------------- rendering
def _directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_shipped_templates_are_the_rendered_template():
    for variant in ("gpu", "npu"):
        shipped = (REPO / "slurm" / f"{variant}.sbatch").read_text()
        assert shipped == render_sbatch(template_spec(variant)), (
            f"slurm/{variant}.sbatch is stale: python -c \"from litft.slurm import *; "
            f"open('slurm/{variant}.sbatch','w').write(render_sbatch(template_spec('{variant}')))\""
        )


@pytest.mark.parametrize("variant", ["cpu", "gpu", "npu"])
def test_rendered_scripts_are_valid_bash(variant, tmp_path):
    spec = SbatchSpec(variant=variant, nodes=2, devices=4, config="/x/a b.yaml", partition="p", time="1:00:00",
                      log_dir="/logs", workdir="/w", python="/venv/bin/python", fit_args=["--trainer.devices", "4"])
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(spec))
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = script.read_text()
    assert "CONFIG=${1:-'/x/a b.yaml'}" in text
    assert text.rstrip().endswith('srun --kill-on-bad-exit=1 "$PYTHON" -m litft fit --config "$CONFIG" '
                                  "--trainer.devices 4")


def _collective_block(script: str) -> str:
    start = script.index("# Collective timeouts")
    return script[start:script.index("\n\n", start)]


def _env_after(block: str, **env: str) -> dict[str, str]:
    """The environment a task started after `block` sees (srun passes the script's environment on)."""
    done = subprocess.run(["bash", "-c", f"set -euo pipefail\n{block}\nenv -0"], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], **env})
    assert done.returncode == 0, done.stderr
    return dict(item.split("=", 1) for item in done.stdout.split("\0") if "=" in item)


@pytest.mark.parametrize("variant", ["cpu", "gpu", "npu"])
def test_collective_settings_default_and_pass_through(variant):
    """Every script exports litft's two collective timeouts, per backend its error handling / timeouts, and passes
    the site's network interface through (only when set); a value exported before sbatch wins."""
    script = render_sbatch(SbatchSpec(variant=variant, nodes=2, devices=8))
    block = _collective_block(script)
    defaults = {"LITFT_DIST_STARTUP_TIMEOUT": "3600", "LITFT_DIST_TIMEOUT": "300"}
    defaults.update({"gpu": {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "3", "NCCL_DEBUG": "WARN"},
                     "npu": {"HCCL_CONNECT_TIMEOUT": "1800", "HCCL_EXEC_TIMEOUT": "1800",
                             "HCCL_ASYNC_ERROR_HANDLING": "1"}}.get(variant, {}))
    ifnames = {"cpu": ["GLOO_SOCKET_IFNAME"], "gpu": ["NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"], "npu": []}[variant]
    env = _env_after(block, **{name: "" for name in ifnames})
    assert {k: env.get(k) for k in defaults} == defaults
    assert not any(name in env for name in ifnames), env  # an empty interface name never reaches the tasks
    site = {k: "7" for k in defaults} | {name: f"ib{i}" for i, name in enumerate(ifnames)}
    env = _env_after(block, **site)
    assert {k: env.get(k) for k in site} == site
    # HCCL's timeouts sit below litft's start-up one (torch_npu: the process group's must be the larger)
    if variant == "npu":
        assert int(defaults["HCCL_CONNECT_TIMEOUT"]) < 3600 and int(defaults["HCCL_EXEC_TIMEOUT"]) < 3600
    ifname = {"cpu": "GLOO_SOCKET_IFNAME", "gpu": "NCCL_SOCKET_IFNAME", "npu": "HCCL_SOCKET_IFNAME"}[variant]
    assert ('echo "litft: collective timeouts ${LITFT_DIST_STARTUP_TIMEOUT} s until the first optimizer step, then '
            f'${{LITFT_DIST_TIMEOUT}} s; {ifname}=${{{ifname}:-auto}}"') in script
    assert script.index("# Collective timeouts") < script.index("srun ")
    assert ("NCCL" in script) == (variant == "gpu") and ("HCCL_EXEC" in script) == (variant == "npu")


def test_template_without_config_demands_one():
    script = render_sbatch(template_spec("gpu"))
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert done.returncode != 0
    assert "usage: sbatch [--nodes=N --ntasks-per-node=D ...] slurm/gpu.sbatch CONFIG.yaml" in done.stderr


def test_rendering_rejects_nonsense():
    with pytest.raises(LitFTError, match="unknown SLURM variant 'tpu'"):
        render_sbatch(SbatchSpec(variant="tpu"))
    with pytest.raises(LitFTError, match="nodes and devices must be >= 1"):
        render_sbatch(SbatchSpec(nodes=0))


# --------------------------------------------------------------------------- the command
def _config(tmp_path: Path, model: str, data: str, **trainer) -> Path:
    config = {
        "output_dir": str(tmp_path / "out"),
        "model": {"name_or_path": model},
        "data": {"dataset": data, "cutoff_len": 64, "batch_size": 2},
        "trainer": {"max_steps": 10, **trainer},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An `sbatch` first in PATH that records its arguments and answers like SLURM's (job 4242)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "sbatch-calls"
    (bindir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho "4242;litft"\n')
    (bindir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return calls


def _run_main(args, capsys) -> tuple[int, str, str]:
    from litft.cli import main

    with pytest.raises(SystemExit) as done:
        main(args)
    out = capsys.readouterr()
    # stderr may hold library warnings first; litft's own error is its last line.
    last = (out.err.strip().splitlines() or [""])[-1]
    return done.value.code, out.out, last


def test_dry_run_gpu_config(tmp_path, tiny_llama, alpaca_file, fake_sbatch):
    config = _config(tmp_path, tiny_llama, alpaca_file, accelerator="gpu", devices=4, num_nodes=2)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "litft", "slurm", "--config", str(config), "--dry-run", "--partition", "a100",
         "--time", "02:00:00"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    assert _directives(done.stdout) == [
        "--job-name=litft", "--nodes=2", "--ntasks-per-node=4", "--gres=gpu:4", "--cpus-per-task=8", "--mem=0",
        "--partition=a100", "--time=02:00:00", f"--output={out}/slurm/%x-%j.out", "--open-mode=append",
        f"--chdir={tmp_path}", "--signal=SIGUSR1@90", "--requeue",
    ]
    # The job trains with the resolved config written next to the script.
    assert f"CONFIG=${{1:-{out}/slurm/litft.yaml}}" in done.stdout
    resolved = yaml.safe_load((out / "slurm" / "litft.yaml").read_text())
    assert resolved["trainer"]["num_nodes"] == 2 and resolved["trainer"]["devices"] == 4
    assert resolved["model"]["name_or_path"] == tiny_llama and "dry_run" not in resolved
    assert f'export LITFT_LOG_DIR=${{LITFT_LOG_DIR:-"{out}/slurm/${{SLURM_JOB_NAME}}-${{SLURM_JOB_ID}}"}}' in done.stdout
    assert f"PYTHON=${{PYTHON:-{sys.executable}}}" in done.stdout
    assert 'MAIN_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)' in done.stdout
    assert done.stdout.rstrip().endswith('srun --kill-on-bad-exit=1 "$PYTHON" -m litft fit --config "$CONFIG"')
    assert "ASCEND" not in done.stdout
    # the collectives of a multi-node job: litft's timeouts, NCCL's error handling (litft.slurm.collective_env)
    for line in ("export LITFT_DIST_STARTUP_TIMEOUT=${LITFT_DIST_STARTUP_TIMEOUT:-3600}",
                 "export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-3}",
                 "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}", "for var in NCCL_SOCKET_IFNAME GLOO_SOCKET_IFNAME; do"):
        assert line in done.stdout, line
    # The script is written (what was printed), and nothing was submitted.
    assert (out / "slurm" / "litft.sbatch").read_text() == done.stdout
    assert os.access(out / "slurm" / "litft.sbatch", os.X_OK)
    assert not fake_sbatch.exists()


def test_dry_run_npu_config(tmp_path, tiny_llama, alpaca_file, fake_sbatch, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, tiny_llama, alpaca_file, accelerator="npu", devices=8, num_nodes=4)
    code, out, err = _run_main(["slurm", "--config", str(config), "--dry-run", "--job_name", "ascend"], capsys)
    assert code == 0, err
    assert _directives(out)[:4] == ["--job-name=ascend", "--nodes=4", "--ntasks-per-node=8", "--gres=npu:8"]
    assert "--signal=SIGUSR1@90" in _directives(out) and "--requeue" in _directives(out)
    assert 'source "${ASCEND_TOOLKIT_HOME:-/usr/local/Ascend/ascend-toolkit}/set_env.sh"' in out
    assert "export HCCL_EXEC_TIMEOUT=${HCCL_EXEC_TIMEOUT:-1800}" in out  # litft's, unless exported (collective_env)
    assert "export HCCL_CONNECT_TIMEOUT=${HCCL_CONNECT_TIMEOUT:-1800}" in out
    assert "export ASCEND_PROCESS_LOG_PATH=${ASCEND_PROCESS_LOG_PATH:-$LITFT_LOG_DIR/ascend}" in out
    assert out.index("set_env.sh") < out.index("srun ")
    assert (tmp_path / "out" / "slurm" / "ascend.sbatch").read_text() == out
    assert not fake_sbatch.exists()
    # The cards: the site's ASCEND_RT_VISIBLE_DEVICES, else the ids SLURM allocated, else unset (all cards).
    block = out[out.index("NPU_IDS="):out.index("# CANN's device logs")]
    for env, expected in [({"ASCEND_RT_VISIBLE_DEVICES": "2,3"}, "2,3"), ({"SLURM_JOB_GPUS": "4,5"}, "4,5"),
                          ({}, "unset")]:
        visible = subprocess.run(["bash", "-c", f"set -u\n{block}\necho ${{ASCEND_RT_VISIBLE_DEVICES:-unset}} "
                                  "${HCCL_SOCKET_IFNAME+ifname}"],
                                 env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True)
        assert visible.stdout.split()[0] == expected, visible.stderr


def test_submits_with_sbatch(tmp_path, tiny_llama, alpaca_file, fake_sbatch, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, tiny_llama, alpaca_file, accelerator="cpu", devices=1, num_nodes=2)
    code, out, err = _run_main(["slurm", "--config", str(config), "--nodes", "2", "--devices", "1"], capsys)
    assert code == 0, err
    script = tmp_path / "out" / "slurm" / "litft.sbatch"
    assert fake_sbatch.read_text() == f"--parsable {script}\n"
    assert out == f"Submitted batch job 4242: logs in {tmp_path}/out/slurm/litft-4242.out\n"
    assert "--gres" not in script.read_text()  # cpu variant


def test_auto_devices_need_devices_flag(tmp_path, tiny_llama, alpaca_file, fake_sbatch, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, tiny_llama, alpaca_file, accelerator="gpu", devices="auto")
    code, _, err = _run_main(["slurm", "--config", str(config), "--dry-run"], capsys)
    assert (code, err) == (
        2, f"litft: error: {config}: trainer.devices is 'auto'; give --devices N (tasks per node)"
    )
    code, out, err = _run_main(["slurm", "--config", str(config), "--dry-run", "--devices", "2"], capsys)
    assert code == 0, err
    assert "--ntasks-per-node=2" in _directives(out)
    assert out.rstrip().endswith('fit --config "$CONFIG"')
    assert yaml.safe_load((tmp_path / "out" / "slurm" / "litft.yaml").read_text())["trainer"]["devices"] == 2


@pytest.mark.parametrize(
    "flags, nodes, devices",
    [
        (["--nodes", "4"], 4, 1),
        (["--devices", "8"], 2, 8),
        (["--trainer.num_nodes", "3", "--trainer.devices", "4"], 3, 4),
    ],
)
def test_flags_and_overrides_are_the_jobs_settings(flags, nodes, devices, tmp_path, tiny_llama, alpaca_file,
                                                   fake_sbatch, capsys, monkeypatch):
    """--nodes/--devices set the topology; every override reaches the job through the resolved config."""
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, tiny_llama, alpaca_file, accelerator="cpu", devices=1, num_nodes=2)
    code, out, err = _run_main(["slurm", "--config", str(config), *flags, "--trainer.max_steps", "7",
                                "--model.lora.r", "4", "--dry-run"], capsys)
    assert code == 0, err
    assert _directives(out)[1:3] == [f"--nodes={nodes}", f"--ntasks-per-node={devices}"]
    resolved = tmp_path / "out" / "slurm" / "litft.yaml"
    assert out.rstrip().endswith('fit --config "$CONFIG"') and f"CONFIG=${{1:-{resolved}}}" in out
    # `litft fit --config <resolved>` parses to exactly these settings (and the allocation check agrees).
    from litft.cli import LitFTCLI

    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    parsed = LitFTCLI(args=["--config", str(resolved)], run=False).config
    assert (parsed.trainer.num_nodes, parsed.trainer.devices, parsed.trainer.max_steps, parsed.model.lora.r) == (
        nodes, devices, 7, 4)
    assert parsed.data.dataset == alpaca_file and parsed.output_dir == str(tmp_path / "out")
    assert not fake_sbatch.exists()
