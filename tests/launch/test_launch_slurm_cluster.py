"""launch/slurm/ on a real SLURM cluster: two slurmd nodes on this machine (the slurm_cluster
fixture), jobs submitted with launch/slurm/submit.sh, one rank per node over gloo. Checks what
the test doubles cannot: SLURM's own signals, requeues, time limits and cancellations."""

from __future__ import annotations

import re
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.launch.harness import REPO, latest, losses, metrics, run, tail, tiny, wait_until
from tests.launch.slurm_cluster import log_of

STEPS = 16
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
FOREVER = 100_000  # steps for jobs that are stopped from outside


def _logged_steps(run_dir) -> list[int]:
    return [m["step"] for m in metrics(run_dir) if "loss" in m]


def _no_stack_dumps(log: str) -> None:
    assert "frame #" not in log and "DistError" not in log, tail(log, 6000)


@pytest.fixture(scope="module")
def torchrun_losses(tmp_path_factory):
    """The same layout (2 ranks, expert parallel 2) on one machine with torchrun."""
    run_dir = tmp_path_factory.mktemp("torchrun") / "run"
    result = run([REPO / "launch" / "torchrun.sh", "--nproc", 2, "--run-dir", run_dir,
                  REPO / "configs" / "cpu_tiny.yaml", *tiny(STEPS)], timeout=180)
    assert result.returncode == 0, tail(result.stdout + result.stderr)
    return losses(run_dir)


@pytest.fixture(scope="module")
def completed_job(slurm_cluster, tmp_path_factory):
    """One uninterrupted SLURM run: the reference for the interrupted ones."""
    work = tmp_path_factory.mktemp("slurm_complete")
    job_id = slurm_cluster.submit(work, work / "run", STEPS)
    info = slurm_cluster.wait_state(job_id, ENDED, timeout=240)
    return info, work / "run"


def test_two_nodes_train_to_the_end_with_the_torchrun_losses(completed_job, torchrun_losses):
    info, run_dir = completed_job
    log = log_of(info)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", tail(log)
    assert "node.sh[0@n1]" in log and "node.sh[1@n2]" in log
    assert _logged_steps(run_dir) == list(range(1, STEPS + 1))
    assert losses(run_dir) == torchrun_losses
    assert latest(run_dir) == f"iter_{STEPS:07d}"
    _no_stack_dumps(log)


def test_preemption_warning_saves_requeues_and_resumes(slurm_cluster, completed_job, tmp_path):
    reference = losses(completed_job[1])
    run_dir = tmp_path / "run"
    job_id = slurm_cluster.submit(tmp_path, run_dir, STEPS)
    wait_until(lambda: len(metrics(run_dir)) >= 3, 180, "three logged steps")
    slurm_cluster.command("scancel", "--signal=USR1", "--batch", str(job_id))
    info = slurm_cluster.wait_state(job_id, ENDED, timeout=240)
    log = log_of(info)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) >= 1, tail(log)
    saved = re.search(r"saved checkpoint at step (\d+)\nstopping early", log)
    assert saved, tail(log)
    stopped_at = int(saved.group(1))
    assert 3 <= stopped_at < STEPS
    assert f"requeueing job {job_id}" in log
    assert f"resumed from {run_dir}/checkpoints/iter_{stopped_at:07d} at step {stopped_at}" in log
    assert _logged_steps(run_dir) == list(range(1, STEPS + 1))  # each step once
    assert losses(run_dir) == reference
    _no_stack_dumps(log)


def test_scontrol_requeue_resumes_from_the_last_checkpoint(slurm_cluster, completed_job,
                                                           tmp_path):
    reference = losses(completed_job[1])
    run_dir = tmp_path / "run"
    job_id = slurm_cluster.submit(tmp_path, run_dir, STEPS, "checkpoint.save_interval=4")
    wait_until(lambda: len(metrics(run_dir)) >= 6, 180, "six logged steps")
    slurm_cluster.command("scontrol", "requeue", str(job_id))
    wait_until(lambda: slurm_cluster.job(job_id)["JobState"] != "RUNNING"
               or int(slurm_cluster.job(job_id)["Restarts"]) >= 1, 60, "the requeue")
    last = latest(run_dir)
    assert last is not None and last >= "iter_0000004"
    info = slurm_cluster.wait_state(job_id, ENDED, timeout=240)
    log = log_of(info)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) >= 1, tail(log)
    # SLURM's SIGTERM at the requeue makes the ranks save too (after the step they were on),
    # so the resume is from that checkpoint or, had it been cut short, the periodic one.
    resumed = re.search(rf"resumed from {re.escape(str(run_dir))}/checkpoints/iter_\d+ "
                        rf"at step (\d+)", log)
    assert resumed and int(resumed.group(1)) >= int(last.split("_")[1]), tail(log)
    assert losses(run_dir) == reference  # the steps after the checkpoint, run again, match
    _no_stack_dumps(log)
    assert _logged_steps(run_dir) == list(range(1, STEPS + 1))  # each step once


def test_killed_rank_ends_the_job_and_names_its_node(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    job_id = slurm_cluster.submit(tmp_path, run_dir, FOREVER)
    wait_until(lambda: len(metrics(run_dir)) >= 2 and len(slurm_cluster.trainers(job_id)) == 2,
               180, "two logged steps on both ranks")
    (victim,) = [p for p in slurm_cluster.trainers(job_id)
                 if p.environ().get("SLURMD_NODENAME") == "n2"]
    victim.send_signal(signal.SIGKILL)
    info = slurm_cluster.wait_state(job_id, ENDED, timeout=90)  # not the collective timeout
    log = log_of(info)
    assert info["JobState"] == "FAILED", tail(log)
    assert "node.sh[1@n2]: torchrun exited with 1" in log, tail(log)
    assert "srun: error: n2: task 1: Exited with exit code 1" in log
    wait_until(lambda: not slurm_cluster.processes(job_id), 60, "the job's processes to end")


def _time_limit_then_scancel(cluster, work):
    """A job with a two-minute limit and a 100 s warning: SLURM signals it, it saves and
    requeues itself; once the requeued run has resumed and trained a step, scancel (which must
    not requeue it, even while a warning's save is under way)."""
    run_dir = work / "run"
    job_id = cluster.submit(work, run_dir, FOREVER, "checkpoint.save_interval=0",
                            options=("--time", "2", "--warn-seconds", "100"))
    wait_until(lambda: int(cluster.job(job_id)["Restarts"]) >= 1, 240, "the requeue")
    # The requeued run would get the same warning again; give it time to be cancelled instead.
    cluster.command("scontrol", "update", f"JobId={job_id}", "TimeLimit=30")
    wait_until(lambda: "resumed from" in log_of(cluster.job(job_id)), 180, "the resume")
    resumed_at = len(metrics(run_dir))
    wait_until(lambda: len(metrics(run_dir)) > resumed_at, 120, "a step after the resume")
    cluster.command("scancel", str(job_id))
    info = cluster.wait_state(job_id, ENDED, timeout=90)
    wait_until(lambda: not cluster.processes(job_id), 60, "the job's processes to end")
    return info, run_dir


@pytest.fixture(scope="module", autouse=True)
def _time_limited_job(slurm_cluster, tmp_path_factory):
    """Runs beside the other tests of this module (it mostly waits for SLURM's clock)."""
    work = tmp_path_factory.mktemp("slurm_time_limit")
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(_time_limit_then_scancel, slurm_cluster, work)


@pytest.fixture
def time_limited_job(_time_limited_job):
    return _time_limited_job.result(timeout=600)


def test_time_limit_saves_a_checkpoint_before_the_kill(time_limited_job):
    info, run_dir = time_limited_job
    log = log_of(info)
    assert "train.sbatch: SIGUSR1, saving a checkpoint" in log, tail(log)
    saved = re.search(r"saved checkpoint at step (\d+)\nstopping early", log)
    assert saved, tail(log)
    step = int(saved.group(1))
    assert f"resumed from {run_dir}/checkpoints/iter_{step:07d} at step {step}" in log
    assert "DUE TO TIME LIMIT" not in log  # the warning came first; the limit never struck


def test_scancel_ends_the_job_cleanly(time_limited_job):
    info, _ = time_limited_job
    log = log_of(info)
    assert info["JobState"] == "CANCELLED", tail(log)
    assert "CANCELLED AT" in log
    assert "(restart 2)" not in log
    _no_stack_dumps(log)
