"""Preemption as a flag: a signal only records the request; the ranks act on it together at a step boundary.

SLURM announces the end of a job with a signal: ``SIGUSR1`` 90 s before the time limit (``--signal=SIGUSR1@90``),
``SIGTERM`` when the job is preempted (``PreemptMode=REQUEUE``) or cancelled, or whatever ``scancel --signal``
sends. Lightning's own SLURM handler saves the checkpoint *inside* the signal handler, at whatever line each rank
happens to be executing (a collective of the save can then meet a collective of the training step on another
rank: a deadlock), and its SIGTERM handler broadcasts inside the handler too. litft turns both off
(``SLURMEnvironment(auto_requeue=False)``, see :func:`slurm_plugins`) and uses :class:`Preemption` instead:

1. the handler sets a flag and returns (nothing else: no I/O, no collective, no lock);
2. at every optimizer-step boundary (and once when training starts) every rank contributes its flag to one
   all-reduce (MAX), so all ranks take the same decision at the same point of the program;
3. when any rank was signalled: the checkpoint is written through the normal (atomic) checkpoint path, rank 0
   asks SLURM to requeue the job (``scontrol requeue``, inside a SLURM batch job) and training stops cleanly
   (no validation, no final adapter: the requeued job resumes from the checkpoint and writes it).

A signal that arrives while the model loads or the data is prepared is kept until training starts and honoured
there. Handlers are installed when the LitFTTrainer is built inside a SLURM job (before ``prepare_data``;
elsewhere at the callbacks' ``setup``, before the model loads) and the previous ones are restored at teardown; the
LitFTTrainer keeps Lightning from installing its own (:func:`litft.shims.lightning.leave_signals_alone`).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment

from litft.callbacks.checkpoint import save_now
from litft.signals import early_request

log = logging.getLogger("litft")

DEFAULT_SIGNALS = ("SIGUSR1", "SIGTERM")


def slurm_plugins(plugins: Any) -> Any:
    """``plugins`` plus ``SLURMEnvironment(auto_requeue=False)`` inside a SLURM job, unless a cluster environment is
    given already: Lightning then neither saves nor requeues inside its signal handler (:class:`Preemption` does)."""
    if not SLURMEnvironment.detect():
        return plugins
    listed = [] if plugins is None else (list(plugins) if isinstance(plugins, (list, tuple)) else [plugins])
    if any(isinstance(p, ClusterEnvironment) for p in listed):
        return plugins
    return listed + [SLURMEnvironment(auto_requeue=False)]


def _signum(sig: Any) -> signal.Signals:
    if isinstance(sig, str):
        name = sig.upper()
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    return signal.Signals(sig)


def slurm_job_id(env=os.environ) -> Optional[str]:
    """The id ``scontrol requeue`` takes (``<array job>_<task>`` for array jobs); None outside a SLURM batch job."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    else:
        job = env.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9_]+", job) else None


class Preemption(pl.Callback):
    """Save and requeue (or stop) at the first step boundary after ``SIGUSR1`` / ``SIGTERM``, on all ranks together.

    Args:
        signals: the signals that request preemption (names or numbers).
        requeue: inside a SLURM batch job, rank 0 runs ``scontrol requeue <job>`` after the checkpoint is written
            (the job must allow it: ``#SBATCH --requeue``). Outside SLURM the run saves and stops.
    """

    def __init__(self, signals: Sequence[Any] = DEFAULT_SIGNALS, requeue: bool = True):
        self.signals = [_signum(s) for s in signals]
        self.requeue = requeue
        self.requested: Optional[int] = None  # the signal number received (set by the handler only)
        self.preempted = False  # the ranks agreed and acted on it
        self._previous: dict[int, Any] = {}
        self._seen_step: Optional[int] = None

    # -- the handler: record, nothing else -------------------------------------------------------------------------
    def _handler(self, signum, frame) -> None:
        if self.requested is None:
            self.requested = signum

    def install(self) -> None:
        """(Re)install the recording handler for each signal (main thread only; a no-op elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            return
        if self.requested is None and early_request() in [int(s) for s in self.signals]:
            self.requested = early_request()  # arrived while Python was still importing (python -m litft)
        for sig in self.signals:
            current = signal.getsignal(sig)
            if current == self._handler:
                continue
            self._previous.setdefault(int(sig), current)
            signal.signal(sig, self._handler)

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self._previous.items():
            if signal.getsignal(sig) == self._handler:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    # -- the decision: one all-reduce at each step boundary --------------------------------------------------------
    def _agreed(self, trainer: "pl.Trainer") -> bool:
        flag = 1 if self.requested is not None else 0
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([flag], dtype=torch.int32, device=trainer.strategy.root_device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = int(t.item())
        return flag > 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.install()

    def on_train_start(self, trainer, pl_module) -> None:
        self._seen_step = trainer.global_step
        # A signal during model loading or data preparation: honoured now that every rank is here.
        if self._agreed(trainer):
            self._preempt(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._seen_step:
            return  # a micro-batch inside an accumulation group: not a step boundary
        self._seen_step = trainer.global_step
        if not self.preempted and self._agreed(trainer):
            if 0 < trainer.max_steps <= trainer.global_step:
                return  # the last step: finishing (checkpoint, adapter) is quicker than a requeue
            self._preempt(trainer)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.restore()

    # -- the action: save through the normal checkpoint path, requeue, stop ---------------------------------------
    def _preempt(self, trainer: "pl.Trainer") -> None:
        self.preempted = True
        name = signal.Signals(self.requested).name if self.requested else "a signal on another rank"
        if trainer.is_global_zero:
            log.info("Preemption (%s) at step %d", name, trainer.global_step)
        # Step 0 (signalled before the first step of a fresh run): nothing to save, the requeued job starts from
        # step 0 exactly as this one did (a step-0 checkpoint would hold the RNG state from before the data
        # loader's iterator was created, which a resumed run restores after creating its own).
        path = save_now(trainer) if trainer.global_step > 0 else None
        trainer.strategy.barrier("litft-preemption-saved")
        if trainer.is_global_zero:
            if path:
                log.info("Checkpoint at step %d: %s", trainer.global_step, path)
            job = slurm_job_id()
            if self.requeue and job is not None and SLURMEnvironment.detect():
                self._requeue(job)
        trainer.limit_val_batches = 0  # no validation on the way out (Lightning validates when asked to stop)
        trainer.should_stop = True

    @staticmethod
    def _requeue(job: str) -> None:
        try:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            log.warning("Requeuing SLURM job %s failed: %s", job, err)
            return
        if done.returncode == 0:
            log.info("Requeued SLURM job %s", job)
        else:
            log.warning("Requeuing SLURM job %s failed (exit %d): %s", job, done.returncode, done.stderr.strip())


def find(trainer: "pl.Trainer") -> Optional[Preemption]:
    return next((c for c in trainer.callbacks if isinstance(c, Preemption)), None)
