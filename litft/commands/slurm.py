"""``python -m litft slurm --config X.yaml``: write an sbatch script that agrees with the config, submit it.

The script asks SLURM for ``trainer.num_nodes`` nodes and ``trainer.devices`` tasks per node and runs
``srun python -m litft fit --config X.yaml`` (see litft/slurm.py and slurm/README.md). ``--nodes`` and
``--devices`` must agree with the config; the command stops before submission when they do not. Runs on
a login node: no Trainer, no GPU, no model weights are loaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from litft.errors import LitFTError
from litft.slurm import SbatchSpec, config_devices, render_sbatch, variant_for

NEEDS_TRAINER = False


def add_arguments(parser) -> None:
    parser.add_argument("--nodes", type=Optional[int], default=None,
                        help="Nodes to ask for; must equal trainer.num_nodes (default: trainer.num_nodes).")
    parser.add_argument("--devices", type=Optional[int], default=None,
                        help="Tasks (devices) per node; must equal trainer.devices (required when it is 'auto').")
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


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def build_spec(cfg) -> SbatchSpec:
    """The sbatch spec for a parsed config plus this command's flags; LitFTError when they disagree."""
    config = _config_path(cfg)
    trainer = cfg.trainer
    num_nodes = int(trainer.num_nodes)
    if cfg.nodes is not None and cfg.nodes != num_nodes:
        raise LitFTError(
            f"{config}: --nodes {cfg.nodes} disagrees with trainer.num_nodes={num_nodes}; change one of them"
        )
    devices, fit_args = config_devices(trainer.devices, cfg.devices, config)
    log_dir = Path(os.path.abspath(cfg.output_dir)) / "slurm"
    return SbatchSpec(
        variant=variant_for(trainer.accelerator),
        nodes=num_nodes,
        devices=devices,
        config=config,
        job_name=cfg.job_name,
        partition=cfg.partition,
        time=cfg.time,
        log_dir=str(log_dir),
        workdir=os.getcwd(),
        python=sys.executable,
        fit_args=fit_args,
    )


def run(cli) -> int:
    cfg = cli.config
    spec = build_spec(cfg)
    text = render_sbatch(spec)
    script = Path(cfg.script) if cfg.script else Path(spec.log_dir) / f"{spec.job_name}.sbatch"
    Path(spec.log_dir).mkdir(parents=True, exist_ok=True)  # SLURM does not create the log folder
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
