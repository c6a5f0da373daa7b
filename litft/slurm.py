"""SLURM: sbatch scripts rendered from a config, and the allocation check run inside a job.

One template serves three variants (cpu, gpu, npu); `slurm/gpu.sbatch` and `slurm/npu.sbatch` are this
template rendered with :func:`template_spec` (a test keeps them in sync). Rendezvous and requeue are
Lightning's (`SLURMEnvironment`): every task started by `srun` reads its rank from SLURM, the main
address comes from `MASTER_ADDR` (the template sets it to the first node of the allocation), the port is
15000 + the last 4 digits of the job id unless `MASTER_PORT` is set. Lightning's own requeue handler is
off (litft/callbacks/preemption.py): `SIGUSR1` (sent 90 s before the time limit by `--signal=SIGUSR1@90`, or
by `scancel --signal=USR1 JOBID`) and `SIGTERM` only set a flag; at the next step boundary the ranks agree,
save `<output_dir>/checkpoints/last.ckpt`, rank 0 runs `scontrol requeue`, and the requeued job resumes from
the newest checkpoint in the output folder (litft/resume.py).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from litft.errors import LitFTError
from litft.strategies.timeout import DEFAULT_STARTUP_TIMEOUT_S, DEFAULT_TIMEOUT_S, STARTUP_ENV
from litft.strategies.timeout import ENV as TIMEOUT_ENV

VARIANTS = ("cpu", "gpu", "npu")
DEFAULT_CPUS_PER_TASK = 8
"""CPUs per task (per device) on gpu/npu nodes when none is given: data loading and tokenization run on them."""

# Job names with which Lightning deliberately ignores SLURM (interactive allocations).
_INTERACTIVE_JOB_NAMES = ("bash", "interactive")


@dataclass
class SbatchSpec:
    """What an sbatch script needs to know; everything else lives in the config file."""

    variant: str = "gpu"
    """cpu, gpu (CUDA) or npu (Ascend: sources CANN's set_env.sh, exports ASCEND_RT_VISIBLE_DEVICES, hccl)."""
    nodes: int = 1
    """#SBATCH --nodes: must equal trainer.num_nodes."""
    devices: int = 1
    """#SBATCH --ntasks-per-node (one task per device): must equal trainer.devices."""
    config: str | None = None
    """Config path run by `srun python -m litft fit --config`; None: the script's first argument (required)."""
    job_name: str = "litft"
    """#SBATCH --job-name (also names the log file)."""
    partition: str | None = None
    """#SBATCH --partition; None: the cluster's default partition."""
    time: str | None = None
    """#SBATCH --time, e.g. 1-00:00:00; None: the partition's default limit."""
    cpus_per_task: int | None = None
    """#SBATCH --cpus-per-task (data loading, tokenization); None: 8 for gpu/npu, none asked for cpu."""
    mem: str | None = None
    """#SBATCH --mem per node, e.g. 200G; None: 0 (all of the node's memory) for gpu/npu, none asked for cpu."""
    log_dir: str | None = None
    """Folder of the per-job log <job_name>-<job id>.out (must exist); None: the submission folder."""
    workdir: str | None = None
    """#SBATCH --chdir: relative paths in the config resolve from here; None: the submission folder."""
    python: str = "python"
    """Default interpreter of the job (the PYTHON environment variable overrides it at run time)."""
    fit_args: list[str] = field(default_factory=list)
    """Extra arguments after `fit --config CONFIG`, e.g. ["--trainer.devices", "4"]."""


def template_spec(variant: str) -> SbatchSpec:
    """The spec of the shipped template slurm/<variant>.sbatch: one node, one device, config as $1."""
    return SbatchSpec(variant=variant)


def render_sbatch(spec: SbatchSpec) -> str:
    """The sbatch script for `spec`: nodes/ntasks-per-node from the spec, srun, SIGUSR1@90, requeue."""
    if spec.variant not in VARIANTS:
        raise LitFTError(f"unknown SLURM variant {spec.variant!r}: expected one of {', '.join(VARIANTS)}")
    if spec.nodes < 1 or spec.devices < 1:
        raise LitFTError(f"nodes and devices must be >= 1, got nodes={spec.nodes} devices={spec.devices}")
    q = shlex.quote
    sb = [
        f"--job-name={spec.job_name}",
        f"--nodes={spec.nodes}",
        f"--ntasks-per-node={spec.devices}",
    ]
    if spec.variant == "gpu":
        sb.append(f"--gres=gpu:{spec.devices}")
    elif spec.variant == "npu":
        sb.append(f"--gres=npu:{spec.devices}")
    accel = spec.variant in ("gpu", "npu")
    cpus = spec.cpus_per_task if spec.cpus_per_task is not None else (DEFAULT_CPUS_PER_TASK if accel else None)
    mem = spec.mem if spec.mem is not None else ("0" if accel else None)
    if cpus is not None:
        sb.append(f"--cpus-per-task={cpus}")
    if mem is not None:
        sb.append(f"--mem={mem}")
    if spec.partition:
        sb.append(f"--partition={spec.partition}")
    if spec.time:
        sb.append(f"--time={spec.time}")
    log = f"{spec.log_dir.rstrip('/')}/%x-%j.out" if spec.log_dir else "%x-%j.out"
    sb.append(f"--output={log}")
    sb.append("--open-mode=append")  # a requeued job appends to the same log
    if spec.workdir:
        sb.append(f"--chdir={spec.workdir}")
    sb += ["--signal=SIGUSR1@90", "--requeue"]

    usage = f"usage: sbatch [--nodes=N --ntasks-per-node=D ...] slurm/{spec.variant}.sbatch CONFIG.yaml"
    config_line = (
        f"CONFIG=${{1:-{q(spec.config)}}}" if spec.config else f'CONFIG=${{1:?"{usage}"}}'
    )
    rank_logs = f"{spec.log_dir.rstrip('/')}/%x-%j" if spec.log_dir else "%x-%j"
    rank_logs = rank_logs.replace("%x", "${SLURM_JOB_NAME}").replace("%j", "${SLURM_JOB_ID}")
    lines = [
        "#!/bin/bash",
        f"# litft on SLURM ({spec.variant}): one task per device, started by srun.",
        "# --nodes must equal trainer.num_nodes and --ntasks-per-node trainer.devices (litft checks both).",
        "# SIGUSR1 90 s before the time limit (or SIGTERM): at the next step boundary litft saves checkpoints/",
        "# last.ckpt and requeues the job, which resumes from the newest checkpoint. A rank that dies ends the",
        "# job at once (--kill-on-bad-exit); --cpus-per-task and --mem: see slurm/README.md.",
        *(f"#SBATCH {s}" for s in sb),
        "set -euo pipefail",
        "",
        config_line,
        f"PYTHON=${{PYTHON:-{q(spec.python)}}}",
        "# One log per rank in this folder (rank<N>.log); the job log above shows rank 0 only.",
        f'export LITFT_LOG_DIR=${{LITFT_LOG_DIR:-"{rank_logs}"}}',
        'mkdir -p "$LITFT_LOG_DIR"',
        "",
        *collective_env(spec.variant),
    ]
    if spec.variant == "npu":
        lines += [
            "# Ascend CANN: runtime, compiler and HCCL libraries (ASCEND_TOOLKIT_HOME overrides the path).",
            "set +u",
            'source "${ASCEND_TOOLKIT_HOME:-/usr/local/Ascend/ascend-toolkit}/set_env.sh"',
            "set -u",
            "# The cards SLURM allocated: the site's ASCEND_RT_VISIBLE_DEVICES, else the ids SLURM gives for the",
            "# gres (sites that declare NPUs as gpu gres), else all cards of the node; task i uses the i-th (SLURM_LOCALID).",
            'NPU_IDS=${ASCEND_RT_VISIBLE_DEVICES:-${SLURM_STEP_GPUS:-${SLURM_JOB_GPUS:-}}}',
            'if [[ -n $NPU_IDS ]]; then export ASCEND_RT_VISIBLE_DEVICES=$NPU_IDS; fi',
            "# HCCL's host network: the interface of the default route unless HCCL_SOCKET_IFNAME is exported.",
            "if [[ -z ${HCCL_SOCKET_IFNAME:-} ]]; then",
            "  IFACE=$(ip -o -4 route show to default 2>/dev/null | awk '{print $5; exit}' || true)",
            '  if [[ -n $IFACE ]]; then export HCCL_SOCKET_IFNAME=$IFACE; fi',
            "fi",
            "# CANN's device logs (plog) next to the job's logs, not in $HOME/ascend/log.",
            'export ASCEND_PROCESS_LOG_PATH=${ASCEND_PROCESS_LOG_PATH:-$LITFT_LOG_DIR/ascend}',
            "",
        ]
    lines += [
        "# Rendezvous on the first node of the allocation, by the address SLURM itself uses for it.",
        'MAIN_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
        "MAIN_ADDR=$(scontrol show node \"$MAIN_NODE\" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2 || true)",
        'export MASTER_ADDR=${MASTER_ADDR:-${MAIN_ADDR:-$MAIN_NODE}}',
        "",
        'echo "litft: $(date -u +%FT%TZ) job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST,'
        ' main $MASTER_ADDR, config $CONFIG"',
        'echo "litft: collective timeouts ${LITFT_DIST_STARTUP_TIMEOUT} s until the first optimizer step, then'
        f' ${{LITFT_DIST_TIMEOUT}} s; {_IFNAMES[spec.variant]}=${{{_IFNAMES[spec.variant]}:-auto}}"',
        'srun --kill-on-bad-exit=1 "$PYTHON" -m litft fit --config "$CONFIG"'
        + "".join(f" {q(a)}" for a in spec.fit_args),
        "",
    ]
    return "\n".join(lines)


_IFNAMES = {"cpu": "GLOO_SOCKET_IFNAME", "gpu": "NCCL_SOCKET_IFNAME", "npu": "HCCL_SOCKET_IFNAME"}
"""The network interface variable the job log names per variant."""


def collective_env(variant: str) -> list[str]:
    """Script lines for the collectives of a multi-node job: litft's two timeouts (litft/strategies/timeout.py), and
    per backend NCCL's error handling and log level, HCCL's timeouts and error handling, the network interfaces.
    Each value an exported variable already holds wins (``${VAR:-default}``)."""
    lines = [
        "# Collective timeouts (litft/strategies/timeout.py): long until the first optimizer step (model loading,",
        "# data, DeepSpeed set-up, first collectives), bounded after it (a hung or dead rank ends the job).",
        f"export {STARTUP_ENV}=${{{STARTUP_ENV}:-{DEFAULT_STARTUP_TIMEOUT_S:g}}}",
        f"export {TIMEOUT_ENV}=${{{TIMEOUT_ENV}:-{DEFAULT_TIMEOUT_S:g}}}",
    ]
    if variant == "gpu":
        lines += [
            "# NCCL: a collective past its timeout ends the process (3: torch's default since 2.2, kept explicit);",
            "# NCCL's warnings in the logs (NCCL_DEBUG=INFO shows the interfaces and transports it picked).",
            "export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-3}",
            "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}",
        ]
    if variant in ("gpu", "cpu"):
        names, who, example = (("NCCL_SOCKET_IFNAME GLOO_SOCKET_IFNAME", "NCCL and gloo",
                                 "NCCL_SOCKET_IFNAME=ib0 or =^docker0,lo, GLOO_SOCKET_IFNAME=eth0")
                                if variant == "gpu" else ("GLOO_SOCKET_IFNAME", "gloo", "GLOO_SOCKET_IFNAME=eth0"))
        lines += [
            f"# Network interface: {who} pick one unless the site exports one before sbatch (nodes with several",
            f"# networks: {example}); a value reaches every task, an empty one none.",
            f"for var in {names}; do",
            '  if [[ -n ${!var:-} ]]; then export "$var"; else unset "$var"; fi',
            "done",
        ]
    if variant == "npu":
        lines += [
            "# HCCL, consistent with litft's timeouts (torch_npu: keep the process-group timeout above both): link",
            "# set-up in each group's first collective waits for ranks still loading (CANN's default 120 s would end",
            "# a job whose ranks load minutes apart; 120-7200), a collective waits for its peers up to",
            "# HCCL_EXEC_TIMEOUT (CANN's default 1836 s, 600 s in old CANN). Keep both below",
            f"# {STARTUP_ENV}. A collective past its timeout ends the process (torch_npu's default 1).",
            "export HCCL_CONNECT_TIMEOUT=${HCCL_CONNECT_TIMEOUT:-1800}",
            "export HCCL_EXEC_TIMEOUT=${HCCL_EXEC_TIMEOUT:-1800}",
            "export HCCL_ASYNC_ERROR_HANDLING=${HCCL_ASYNC_ERROR_HANDLING:-1}",
        ]
    return [*lines, ""]


def device_count(devices: object) -> int | None:
    """The number of devices per node that Lightning's `devices` means; None when it depends on the
    machine ("auto", -1)."""
    if isinstance(devices, bool):
        raise LitFTError(f"trainer.devices: expected a number or a list of device ids, got {devices!r}")
    if isinstance(devices, int):
        return None if devices == -1 else devices
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        s = devices.strip()
        if s in ("auto", "-1"):
            return None
        if "," in s:
            return len([d for d in s.split(",") if d.strip()])
        if s.isdigit():
            return int(s)
    raise LitFTError(f"trainer.devices: expected a number or a list of device ids, got {devices!r}")


def check_allocation(num_nodes: int, devices: object, env: Mapping[str, str] | None = None) -> None:
    """Inside a SLURM job, raise LitFTError (one line) when the allocation and the trainer disagree.

    Does nothing outside SLURM (no SLURM_NTASKS) and in interactive allocations (job name bash or
    interactive, which Lightning ignores too). Otherwise the process must have been started by srun,
    the job's node count must equal `num_nodes`, its tasks per node the devices per node, and the number
    of tasks num_nodes x devices. Without this check a mismatch hangs at the rendezvous.
    """
    env = os.environ if env is None else env
    if "SLURM_NTASKS" not in env or env.get("SLURM_JOB_NAME") in _INTERACTIVE_JOB_NAMES:
        return
    job = env.get("SLURM_JOB_ID", "?")
    if "SLURM_STEP_ID" not in env and "SLURM_STEPID" not in env:
        raise LitFTError(
            f"SLURM job {job}: litft was not started with srun (one process per device); "
            "run `srun python -m litft fit --config ...` in the batch script"
        )
    per_node = device_count(devices)
    ntasks = int(env["SLURM_NTASKS"])
    nnodes = int(env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES") or 1)
    tasks_per_node = env.get("SLURM_NTASKS_PER_NODE")
    problems = []
    if nnodes != num_nodes:
        problems.append(f"--nodes={nnodes} but trainer.num_nodes={num_nodes}")
    if tasks_per_node is None:
        if ntasks > 1:
            problems.append(f"--ntasks={ntasks} without --ntasks-per-node (use --ntasks-per-node=trainer.devices)")
    elif per_node is not None and int(tasks_per_node) != per_node:
        problems.append(f"--ntasks-per-node={tasks_per_node} but trainer.devices={devices}")
    if per_node is not None and not problems and ntasks != num_nodes * per_node:
        problems.append(f"srun started {ntasks} tasks but trainer.num_nodes x trainer.devices = {num_nodes * per_node}")
    if problems:
        raise LitFTError(f"SLURM job {job} does not match the trainer: {'; '.join(problems)}")


def variant_for(accelerator: object) -> str:
    """The sbatch variant for trainer.accelerator: npu, cpu, or gpu (cuda, gpu, auto)."""
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__
    name = name.lower()
    if "npu" in name:
        return "npu"
    if name == "cpu" or name.startswith("cpuaccelerator"):
        return "cpu"
    return "gpu"



def setup_rank_logs(logger, env: Mapping[str, str] | None = None) -> str | None:
    """Per-rank logs inside a SLURM task when ``LITFT_LOG_DIR`` is set (the sbatch template sets it).

    Rank 0 keeps the console (the job log) and also writes litft's messages to ``<dir>/rank0.log``; every other
    rank's whole output (stdout and stderr: logs, warnings, tracebacks) goes to ``<dir>/rank<N>.log`` instead of
    the console, so the job log shows each INFO line once. Returns the rank's log path (None: nothing done).
    """
    env = os.environ if env is None else env
    folder, rank = env.get("LITFT_LOG_DIR"), env.get("SLURM_PROCID")
    if not folder or rank is None or ("SLURM_STEP_ID" not in env and "SLURM_STEPID" not in env):
        return None
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"rank{rank}.log")
    if rank == "0":
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s [litft] %(message)s"))
        logger.addHandler(handler)
        return path
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return path
