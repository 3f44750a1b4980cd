"""The entry point a SLURM job runs (through ``submitit``): the training of one run folder.

Imported only where submitit is installed (``engine.launchers.Slurm.start`` and the job itself).
Every task of the job (one per device; several nodes with ``SCWB_SLURM_NODES``) calls
``SlurmRun()(run_dir)``; Lightning reads the ranks from SLURM's environment. Rank 0 records the
run's host, pid and job id, beats the heartbeat and ends the job ``CANCELLED`` in the scheduler
after a graceful cancel (the run folder then holds ``cancelled`` with its best weights).
Preemption: submitit calls ``checkpoint``, which puts the run back to ``queued`` and requeues
the same entry point.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import submitit

from engine import procs, queue, runs, settings


class SlurmRun(submitit.helpers.Checkpointable):
    def __call__(self, run_dir: str) -> int:
        from engine import worker

        run_dir = Path(run_dir)
        env = submitit.JobEnvironment()
        rank = env.global_rank
        job_id = str(env.job_id)
        beat = None
        # for the Trainer: nodes of this job (Lightning's num_nodes; devices = tasks per node)
        os.environ["SCWB_NUM_NODES"] = str(env.num_nodes)
        if rank == 0:
            runs.clean_tmp(run_dir)
            runs.reserve_end(run_dir)
            queue.unqueue(run_dir)
            if (run_dir / "cancel").exists():
                runs.record_end(run_dir, state="cancelled")
                self._end_cancelled(job_id)
                return 0
            runs.update_status(
                run_dir,
                state="running",
                host=settings.get().host,
                launcher="slurm",
                job_id=job_id,
                pid=os.getpid(),
                nodes=env.num_nodes,
                tasks=env.num_tasks,
                started=runs.read_status(run_dir).get("started") or runs.now(),
            )
            beat = procs.Heartbeat(run_dir / "heartbeat").__enter__()
        try:
            rc = worker.run_training(run_dir)
        finally:
            if beat:
                beat.__exit__()
        if rank != 0:
            return rc
        st = runs.read_status(run_dir)
        if st.get("state") == "cancelled":
            self._end_cancelled(job_id)
        if rc != 0:
            raise RuntimeError(st.get("error") or f"training exited with code {rc}")
        return rc

    @staticmethod
    def _end_cancelled(job_id: str) -> None:
        """End the job CANCELLED in the scheduler too (sacct then says what the user did)."""
        if procs.scancel(job_id):
            time.sleep(600)  # SLURM kills the job after KillWait; submitit ignores SIGTERM

    def checkpoint(self, run_dir: str) -> submitit.helpers.DelayedSubmission:
        """Preempted: back to ``queued`` (the job is requeued by submitit with this same call)."""
        run_dir = Path(run_dir)
        st = runs.read_status(run_dir)
        if st.get("state") in runs.ACTIVE:
            runs.update_status(
                run_dir,
                state="queued",
                requeued=int(st.get("requeued") or 0) + 1,
                pid=None,
                note="preempted by SLURM: requeued",
            )
        return submitit.helpers.DelayedSubmission(SlurmRun(), str(run_dir))
