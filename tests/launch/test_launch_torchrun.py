"""launch/torchrun.sh for real on CPU: 2 and 4 processes, same losses on a rerun, and an
interrupted-then-resumed run that matches an uninterrupted one step for step."""

from __future__ import annotations

import pytest

from tests.launch.harness import CONFIG, REPO, latest, losses, metrics, run, run_info, tail, tiny

LAUNCHER = REPO / "launch" / "torchrun.sh"


def _launch(run_dir, nproc, steps, *extra, timeout=90):
    return run([LAUNCHER, "--nproc", nproc, "--run-dir", run_dir, CONFIG, *tiny(steps, *extra)],
               timeout=timeout)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("torchrun") / "np2"
    result = _launch(run_dir, 2, 6)
    return run_dir, result


def test_two_processes_train_to_the_end(two_process_run):
    run_dir, result = two_process_run
    assert result.returncode == 0, tail(result.stdout + result.stderr)
    assert "--standalone --nproc-per-node 2 -m csmoe_megatron.train" in result.stderr
    assert sorted(losses(run_dir)) == [1, 2, 3, 4, 5, 6]
    assert latest(run_dir) == "iter_0000006"
    assert (run_dir / "config.yaml").is_file()
    info = run_info(run_dir)
    assert len(info) == 1 and info[0]["env"]["WORLD_SIZE"] == "2"
    assert info[0]["libraries"]["megatron-core"] == "0.16.1"


def test_four_processes_train_to_the_end(tmp_path):
    result = _launch(tmp_path / "np4", 4, 3, "parallel.expert=4")
    assert result.returncode == 0, tail(result.stdout + result.stderr)
    assert sorted(losses(tmp_path / "np4")) == [1, 2, 3]
    assert run_info(tmp_path / "np4")[0]["env"]["WORLD_SIZE"] == "4"


def test_same_config_and_seed_reproduce_the_losses(two_process_run, tmp_path):
    first_dir, first = two_process_run
    assert first.returncode == 0
    again = _launch(tmp_path / "again", 2, 6)
    assert again.returncode == 0, tail(again.stdout + again.stderr)
    assert losses(tmp_path / "again") == losses(first_dir)


def test_interrupted_and_resumed_run_matches_the_uninterrupted_one(two_process_run, tmp_path):
    first_dir, first = two_process_run
    assert first.returncode == 0
    run_dir = tmp_path / "resumed"
    part = _launch(run_dir, 2, 6, "train.exit_after_steps=3")
    assert part.returncode == 0, tail(part.stdout + part.stderr)
    assert latest(run_dir) == "iter_0000003" and sorted(losses(run_dir)) == [1, 2, 3]
    rest = _launch(run_dir, 2, 6)  # the same command again
    assert rest.returncode == 0, tail(rest.stdout + rest.stderr)
    assert "resumed from" in rest.stdout + rest.stderr
    assert [m["step"] for m in metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert losses(run_dir) == losses(first_dir)
    launches = run_info(run_dir)
    assert [entry["resume_checkpoint"] for entry in launches] == [None, "iter_0000003"]


@pytest.mark.parametrize("visible, expected", [("", 2), ("0,1,2", 3)])
def test_process_count_follows_the_visible_gpus(tmp_path, visible, expected):
    # --dry-run only prints the torchrun command: no GPU is needed to check the choice.
    result = run([LAUNCHER, "--dry-run", CONFIG], timeout=30, CUDA_VISIBLE_DEVICES=visible)
    assert result.returncode == 0, result.stderr
    assert f"--nproc-per-node {expected} -m csmoe_megatron.train" in result.stderr


def test_bad_arguments_are_refused_with_usage(tmp_path):
    assert run([LAUNCHER, "--nproc", "0", CONFIG], timeout=30).returncode == 2
    missing = run([LAUNCHER, tmp_path / "nope.yaml"], timeout=30)
    assert missing.returncode == 2 and "config file not found" in missing.stderr
