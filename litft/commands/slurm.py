"""``python -m litft slurm --config X.yaml``: write an sbatch script that agrees with the config, submit it.

The script asks SLURM for ``--nodes`` nodes (default ``trainer.num_nodes``) and ``--devices`` tasks per node
(default ``trainer.devices``) and runs ``srun python -m litft fit --config <job>.yaml``: the resolved config (the
file, every command-line override and that topology) written next to the script, so the job trains with exactly
what was asked for (see litft/slurm.py and slurm/README.md). Runs on a login node: no Trainer, no GPU, no model
weights are loaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import yaml

from litft.errors import LitFTError
from litft.io import atomic_write
from litft.slurm import SbatchSpec, device_count, render_sbatch, variant_for


# This command's own flags: not part of the config the job trains with.
COMMAND_KEYS = ("config", "nodes", "devices", "cpus_per_task", "mem", "partition", "time", "job_name", "script",
                "dry_run")


def add_arguments(parser) -> None:
    parser.add_argument("--nodes", type=Optional[int], default=None,
                        help="Nodes to ask for; the job trains with trainer.num_nodes = this (default: trainer.num_nodes).")
    parser.add_argument("--devices", type=Optional[int], default=None,
                        help="Tasks (devices) per node; the job trains with trainer.devices = this (required when it "
                             "is 'auto').")
    parser.add_argument("--cpus_per_task", type=Optional[int], default=None,
                        help="#SBATCH --cpus-per-task (default: 8 for gpu/npu, none for cpu; data loading and "
                             "tokenization run on them).")
    parser.add_argument("--mem", type=Optional[str], default=None,
                        help="#SBATCH --mem per node, e.g. 200G (default: 0 = all of the node's memory for gpu/npu).")
    parser.add_argument("--partition", type=Optional[str], default=None, help="SLURM partition (default: the cluster's).")
    parser.add_argument("--time", type=Optional[str], default=None, help="Time limit, e.g. 1-00:00:00.")
    parser.add_argument("--job_name", type=str, default="litft", help="SLURM job name (names the log file too).")
    parser.add_argument("--script", type=Optional[str], default=None,
                        help="Where to write the sbatch script (default: <output_dir>/slurm/<job_name>.sbatch).")
    parser.add_argument("--dry-run", action="store_true", help="Write and print the script, do not submit it.")


def _config_path(cfg) -> str:
    paths = [p for p in (cfg.get("config") or []) if p is not None]
    if len(paths) != 1:
        raise LitFTError("litft slurm: give exactly one --config CONFIG.yaml (the job runs `litft fit` with it)")
    p = paths[0]
    return os.path.abspath(getattr(p, "absolute", None) or str(p))


def _write_atomic(path: Path, text: str, mode: int = 0o755) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)

    atomic_write(path, write)


def build_spec(cfg) -> SbatchSpec:
    """The sbatch spec for a parsed config plus this command's flags: ``--nodes``/``--devices`` set the topology
    (default: trainer.num_nodes / trainer.devices); the job runs the resolved config (see :func:`resolved_config`)."""
    config = _config_path(cfg)
    trainer = cfg.trainer
    nodes = int(cfg.nodes) if cfg.nodes is not None else int(trainer.num_nodes)
    if nodes < 1:
        raise LitFTError(f"{config}: --nodes must be >= 1, got {nodes}")
    devices = cfg.devices if cfg.devices is not None else device_count(trainer.devices)
    if devices is None:
        raise LitFTError(f"{config}: trainer.devices is {trainer.devices!r}; give --devices N (tasks per node)")
    log_dir = Path(os.path.abspath(cfg.output_dir)) / "slurm"
    return SbatchSpec(
        variant=variant_for(trainer.accelerator),
        nodes=nodes,
        devices=int(devices),
        config=str(log_dir / f"{cfg.job_name}.yaml"),
        job_name=cfg.job_name,
        partition=cfg.partition,
        time=cfg.time,
        cpus_per_task=cfg.cpus_per_task,
        mem=cfg.mem,
        log_dir=str(log_dir),
        workdir=os.getcwd(),
        python=sys.executable,
    )


def resolved_config(dumped: str, spec: SbatchSpec) -> str:
    """The config the job trains with, as YAML: ``dumped`` (the parsed config as the CLI's parser dumps it: the file
    and the command-line overrides) with the topology of the sbatch script (trainer.num_nodes = --nodes,
    trainer.devices = --devices) and without this command's own flags."""
    data = yaml.safe_load(dumped)
    for key in COMMAND_KEYS:
        data.pop(key, None)
    data.setdefault("trainer", {})
    data["trainer"]["num_nodes"] = spec.nodes
    data["trainer"]["devices"] = spec.devices
    return f"# Written by `litft slurm` for {spec.job_name}.sbatch: the config the job trains with.\n" + yaml.safe_dump(
        data, sort_keys=False
    )


def run(cli) -> int:
    cfg, dumped = cli.config, cli.parser.dump(cli.config, skip_none=False)
    spec = build_spec(cfg)
    script = Path(cfg.script) if cfg.script else Path(spec.log_dir) / f"{spec.job_name}.sbatch"
    spec.config = str(script.with_suffix(".yaml").absolute())  # next to the script
    text = render_sbatch(spec)
    Path(spec.log_dir).mkdir(parents=True, exist_ok=True)  # SLURM does not create the log folder
    _write_atomic(Path(spec.config), resolved_config(dumped, spec), mode=0o644)
    _write_atomic(script, text)
    if cfg.dry_run:
        sys.stdout.write(text)
        print(f"litft: wrote {script}; submit it with: sbatch {script}", file=sys.stderr)
        return 0
    if shutil.which("sbatch") is None:
        raise LitFTError(f"sbatch not found (not a SLURM login node?); the script is in {script}")
    done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise LitFTError(f"sbatch {script} failed: {reason}")
    job = done.stdout.strip().split(";")[0]
    print(f"Submitted batch job {job}: logs in {spec.log_dir}/{spec.job_name}-{job}.out")
    return 0
