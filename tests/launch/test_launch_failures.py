"""Failures for real: NaN gradients (train.on_nan stop / skip, injected with
train.debug_inject_nan_at_step), a rank killed or hung mid-run (the job ends instead of
hanging), and damaged checkpoint directories on restart."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time

import pytest

from tests.launch.harness import (CONFIG, REPO, kill_tree, latest, losses, metrics, run, start,
                                  tail, tiny, wait_until, workers)

LAUNCHER = REPO / "launch" / "torchrun.sh"


def _single(run_dir, steps, *extra, timeout=60, **env):
    """One process without torchrun: the quickest real run."""
    return run([sys.executable, "-m", "csmoe_megatron.train", "--config", CONFIG,
                *tiny(steps, "parallel.expert=1", f"run.dir={run_dir}", *extra)], timeout=timeout,
               **env)


def test_nan_with_stop_exits_nonzero_and_keeps_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "stop"
    result = run([LAUNCHER, "--nproc", 2, "--run-dir", run_dir, CONFIG,
                  *tiny(6, "checkpoint.save_interval=2", "train.debug_inject_nan_at_step=4",
                        "train.on_nan=stop")], timeout=90)
    out = result.stdout + result.stderr
    assert result.returncode != 0, tail(out)
    assert "non-finite loss or gradient at step 4" in out
    assert "last good checkpoint" in out
    assert latest(run_dir) == "iter_0000002"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["iter_0000002", "latest"]
    assert sorted(losses(run_dir)) == [1, 2, 3]


def test_nan_with_skip_skips_that_step_and_finishes(tmp_path):
    result = _single(tmp_path, 5, "train.debug_inject_nan_at_step=3", "train.on_nan=skip")
    assert result.returncode == 0, tail(result.stdout + result.stderr)
    logged = {m["step"]: m for m in metrics(tmp_path)}
    assert sorted(logged) == [1, 2, 3, 4, 5]
    assert logged[3].get("skipped_step") == 1.0 and "loss" not in logged[3]
    assert all("loss" in logged[s] for s in (1, 2, 4, 5))
    assert latest(tmp_path) == "iter_0000005"


def _running_job(tmp_path, timeout_s, **env):
    run_dir = tmp_path / "run"
    job = start([LAUNCHER, "--nproc", 2, "--run-dir", run_dir, CONFIG,
                 *tiny(2000, f"parallel.collective_timeout_s={timeout_s}")],
                tmp_path / "job.out", **env)
    wait_until(lambda: len(metrics(run_dir)) >= 1, 60, "the first logged step")
    wait_until(lambda: len(workers(job)) == 2, 10, "both ranks")
    return job


def test_killed_rank_ends_the_job(tmp_path):
    # Liveness, not timing: with a 900 s collective timeout, a job that ends within 300 s was
    # torn down by torchrun, not by the timeout (it takes seconds; the bound is far above noise).
    job = _running_job(tmp_path, timeout_s=900)
    try:
        workers(job)[1].send_signal(signal.SIGKILL)
        rc = job.wait(timeout=300)
    finally:
        kill_tree(job)
    assert rc != 0, tail((tmp_path / "job.out").read_text())


def test_hung_rank_ends_the_job_after_the_collective_timeout(tmp_path):
    # A stopped rank never answers: the other rank's collective times out after
    # parallel.collective_timeout_s and it exits non-zero; torchrun then stops the group and
    # kills the stopped rank after its grace period (30 s, fixed for a failed worker group).
    # Liveness bounds only (the waits below, far above the seconds it takes): that the healthy
    # rank ended by the collective timeout is what its error log says.
    timeout_s = 5
    job = _running_job(tmp_path, timeout_s)
    try:
        ranks = workers(job)
        ranks[1].send_signal(signal.SIGSTOP)
        ranks[0].wait(timeout=300)
        rc = job.wait(timeout=300)
    finally:
        kill_tree(job)
    out = (tmp_path / "job.out").read_text()
    assert rc != 0, tail(out)
    error = (tmp_path / "run" / "error_rank0.log").read_text()
    assert "timed out" in error.lower(), tail(error)


@pytest.fixture(scope="module")
def stopped_at_step_2(tmp_path_factory):
    """A 4-step run stopped after step 2 (checkpoint iter_0000002); each test gets a copy."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    first = _single(run_dir, 4, "train.exit_after_steps=2")
    assert first.returncode == 0, tail(first.stdout + first.stderr)
    return run_dir


def test_restart_ignores_an_interrupted_save(stopped_at_step_2, tmp_path):
    shutil.copytree(stopped_at_step_2, tmp_path, dirs_exist_ok=True)
    ckpts = tmp_path / "checkpoints"
    # What a save killed midway leaves: a partial directory, newer than the last good one.
    partial = ckpts / "iter_0000004.partial"
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"truncated")
    again = _single(tmp_path, 4, PYTHONWARNINGS="default")
    out = again.stdout + again.stderr
    assert again.returncode == 0, tail(out)
    assert f"resumed from {ckpts}/iter_0000002 at step 2" in out
    assert sorted(losses(tmp_path)) == [1, 2, 3, 4] and latest(tmp_path) == "iter_0000004"
    assert not partial.exists()
    # A resume warns of nothing from this project or from loading the checkpoint (torch and
    # megatron print DeprecationWarnings of their own at every start).
    warned = [line for line in out.splitlines() if "Warning:" in line
              and ("/csmoe_megatron/" in line or "FutureWarning" in line)]
    assert not warned, warned  # replaced by the complete save of step 4


def test_latest_naming_an_incomplete_checkpoint_falls_back(stopped_at_step_2, tmp_path):
    shutil.copytree(stopped_at_step_2, tmp_path, dirs_exist_ok=True)
    ckpts = tmp_path / "checkpoints"
    (ckpts / "iter_0000003.partial").mkdir()
    (ckpts / "latest").write_text("iter_0000003.partial\n")  # damaged by hand
    again = _single(tmp_path, 4)
    out = again.stdout + again.stderr
    assert again.returncode == 0, tail(out)
    assert "resuming from iter_0000002, the newest checkpoint that verifies" in out, tail(out)
    assert f"resumed from {ckpts}/iter_0000002 at step 2" in out
    assert sorted(losses(tmp_path)) == [1, 2, 3, 4] and latest(tmp_path) == "iter_0000004"

# Stop signals: each one ends in a complete checkpoint that resumes exactly. One small model
# (seconds a run; startup dominates), trained through a chain of interrupted runs and compared
# step by step with one uninterrupted run. CompeteSMoE routing with a high rate, so that the
# cumulative competition rate is checked across the resumes too.
SMALL = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128",
         "model.moe.ffn_hidden_size=64", "model.seq_length=32", "train.global_batch_size=8",
         "train.micro_batch_size=2", "model.moe.router=competesmoe",
         "model.moe.competesmoe.rate=0.5", "model.moe.competesmoe.warmup_fraction=0",
         "checkpoint.save_interval=2", "checkpoint.keep_last=2"]
SIGNAL_STEPS = 30
RATE = "moe/competition_rate_cumulative"


def _small_args(run_dir) -> list:
    return [CONFIG, *tiny(SIGNAL_STEPS, *SMALL, f"run.dir={run_dir}")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run([LAUNCHER, "--nproc", 2, *_small_args(run_dir)], timeout=300)
    assert result.returncode == 0, tail(result.stdout + result.stderr)
    return {m["step"]: m for m in metrics(run_dir)}


def _saved_step(run_dir) -> int:
    name = latest(run_dir)
    return int(name.split("_")[1]) if name else 0


def _stopped_by(cmd, run_dir, log, send, **env) -> int:
    """Start `cmd`, wait for a checkpoint saved by this run (so that megatron's checkpoint
    writer helper is running), `send(job)` a stop signal; the run must save and exit 0.
    Returns the step it stopped at."""
    before = _saved_step(run_dir)
    job = start(cmd, log, **env)
    try:
        wait_until(lambda: _saved_step(run_dir) > before, 240, "a checkpoint saved by this run")
        send(job)
        rc = job.wait(timeout=240)
    finally:
        kill_tree(job)
    out = log.read_text()
    assert rc == 0, tail(out)
    stopped = _saved_step(run_dir)
    assert "stopping early" in out and f"checkpoint saved at step {stopped}" in out, tail(out)
    assert before < stopped < SIGNAL_STEPS, "the run ended before the signal reached it"
    assert not list((run_dir / "checkpoints").glob("*.partial")), tail(out)
    if before:
        assert f"resumed from {run_dir}/checkpoints/iter_{before:07d} at step {before}" in out
    return stopped


def _signal_group(sig):
    """The launcher's whole process group: the launcher script and torchrun itself, as a
    supervisor or a terminal would (the workers are in sessions of their own)."""
    return lambda job: os.killpg(job.pid, sig)


def _signal_rank_group(rank, sig):
    """One worker's process group (torchrun starts each worker in a session of its own), as
    torchrun and SLURM signal it: it holds megatron's checkpoint-writer helper process too."""
    return lambda job: os.killpg(workers(job)[rank].pid, sig)


def _assert_same_as_uninterrupted(run_dir, uninterrupted) -> None:
    logged = metrics(run_dir)
    assert [m["step"] for m in logged] == list(range(1, SIGNAL_STEPS + 1))  # each step once
    for m in logged:
        reference = uninterrupted[m["step"]]
        assert (m["loss"], m[RATE]) == (reference["loss"], reference[RATE]), m["step"]


def test_stop_signals_to_launcher_torchrun_and_a_worker_save_and_resume_exactly(
        uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [LAUNCHER, "--nproc", 2, *_small_args(run_dir)]
    steps = [_stopped_by(cmd, run_dir, tmp_path / "usr1.out",
                         lambda job: job.send_signal(signal.SIGUSR1)),
             # Reaches torchrun directly and through the launcher: torchrun must neither tear
             # the workers down nor die before they saved.
             _stopped_by(cmd, run_dir, tmp_path / "term_group.out", _signal_group(signal.SIGTERM)),
             # One rank only: the ranks agree on it at the step boundary.
             _stopped_by(cmd, run_dir, tmp_path / "term_rank1.out",
                         _signal_rank_group(1, signal.SIGTERM))]
    assert steps == sorted(set(steps))
    last = run(cmd, timeout=300)
    assert last.returncode == 0, tail(last.stdout + last.stderr)
    _assert_same_as_uninterrupted(run_dir, uninterrupted)


def test_sigterm_to_the_batch_script_saves_through_srun_and_resumes_exactly(
        uninterrupted, tmp_path):
    from tests.launch.test_launch_slurm import _calls, _free_port, _slurm_env

    run_dir = tmp_path / "run"
    cmd = ["bash", REPO / "launch" / "slurm" / "train.sbatch", *_small_args(run_dir)]
    env = _slurm_env(tmp_path, SRUN_DOUBLE_EXEC="1")
    _stopped_by(cmd, run_dir, tmp_path / "job1.out", lambda job: job.send_signal(signal.SIGTERM),
                **env)
    assert not [c for c in _calls(tmp_path, "scontrol") if c["args"][0] == "requeue"]
    again = run(cmd, timeout=300, **{**env, "CSMOE_RDZV_PORT": str(_free_port())})
    assert again.returncode == 0, tail(again.stdout + again.stderr)
    _assert_same_as_uninterrupted(run_dir, uninterrupted)
