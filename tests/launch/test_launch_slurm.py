"""launch/slurm/ under a simulated SLURM: srun, scontrol and sbatch are test doubles on PATH
(tests/launch/doubles) that record their arguments. Only what a local cluster cannot show
lives here (GPU requests, pyxis/enroot and apptainer flags, the exact arguments passed on);
runs, preemption, requeues and failures are tested on a real one (test_launch_slurm_cluster)."""

from __future__ import annotations

import json
import socket

from tests.launch.harness import CONFIG, DOUBLES, REPO, run

SBATCH = REPO / "launch" / "slurm" / "train.sbatch"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_env(tmp_path, **extra) -> dict:
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "csmoe", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "127.0.0.[1-2]", "SLURM_SUBMIT_DIR": str(REPO),
           "SLURM_DOUBLE_LOG": str(tmp_path / "calls.jsonl"),
           "CSMOE_RDZV_PORT": str(_free_port()), "CSMOE_NPROC_PER_NODE": "1",
           "SLURM_CPUS_PER_TASK": ""}  # empty: unset, even when the tests run in a SLURM job
    from tests.launch.harness import launch_env

    env["PATH"] = f"{DOUBLES}:{launch_env()['PATH']}"
    env.update(extra)
    return env


def _calls(tmp_path, tool: str) -> list[dict]:
    log = tmp_path / "calls.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return [c for c in map(json.loads, lines) if c["tool"] == tool]


def test_batch_script_runs_one_torchrun_per_node_at_the_first_node(tmp_path):
    env = _slurm_env(tmp_path, SRUN_DOUBLE_EXEC="1", TORCHRUN_DOUBLE_EXEC="0",
                     CSMOE_RDZV_PORT="29555", CSMOE_NPROC_PER_NODE="", CUDA_VISIBLE_DEVICES="")
    env.pop("CSMOE_NPROC_PER_NODE")
    result = run(["bash", SBATCH, CONFIG, "train.steps=5"], timeout=30, **env)
    assert result.returncode == 0, result.stderr
    assert _calls(tmp_path, "scontrol")[0]["args"] == ["show", "hostnames", "127.0.0.[1-2]"]
    (srun,) = _calls(tmp_path, "srun")
    assert srun["options"] == ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                               "--kill-on-bad-exit=1"]
    assert srun["command"] == ["bash", f"{REPO}/launch/slurm/node.sh", str(CONFIG), "train.steps=5"]
    per_node = sorted(_calls(tmp_path, "torchrun"), key=lambda c: c["node"])
    assert [c["node"] for c in per_node] == ["0", "1"]
    for node, call in enumerate(per_node):
        assert call["args"] == [
            "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "2",
            "--max-restarts", "0", "--rdzv-backend", "static",
            "--rdzv-endpoint", "127.0.0.1:29555", "--rdzv-id", "csmoe-4242",
            "-m", "csmoe_megatron.train", "--config", str(CONFIG), "train.steps=5"]


def test_containers_are_selected_by_environment(tmp_path):
    pyxis = run(["bash", SBATCH, CONFIG], timeout=30,
                **_slurm_env(tmp_path, CSMOE_CONTAINER_IMAGE="nvcr.io#org/csmoe:0.1.0"))
    assert pyxis.returncode == 0, pyxis.stderr
    options = _calls(tmp_path, "srun")[-1]["options"]
    assert "--container-image=nvcr.io#org/csmoe:0.1.0" in options
    assert f"--container-mounts={REPO}:{REPO}" in options
    apptainer = run(["bash", SBATCH, CONFIG], timeout=30,
                    **_slurm_env(tmp_path, CSMOE_CONTAINER_IMAGE="/images/csmoe.sif",
                                 CSMOE_CONTAINER_RUNTIME="apptainer"))
    assert apptainer.returncode == 0, apptainer.stderr
    command = _calls(tmp_path, "srun")[-1]["command"]
    assert command[:3] == ["apptainer", "exec", "--nv"] and "/images/csmoe.sif" in command
    assert command[-2:] == ["/opt/csmoe/launch/slurm/node.sh", str(CONFIG)]


def test_submit_fills_the_sbatch_options(tmp_path):
    result = run([REPO / "launch" / "slurm" / "submit.sh", "--nodes", "4", "--gpus-per-node", "8",
                  "--time", "02:00:00", "--partition", "gpu", "--account", "proj",
                  "--image", "img.sqsh", "--warn-seconds", "600", CONFIG, "train.steps=9"],
                 timeout=30, **_slurm_env(tmp_path))
    assert result.returncode == 0, result.stderr
    (call,) = _calls(tmp_path, "sbatch")
    assert call["args"] == [
        "--nodes=4", "--gpus-per-node=8", "--time=02:00:00", "--partition=gpu",
        "--account=proj", "--signal=B:USR1@600",
        f"--export=ALL,CSMOE_ROOT={REPO},CSMOE_CONTAINER_IMAGE=img.sqsh",
        str(SBATCH), str(CONFIG), "train.steps=9"]
    header = SBATCH.read_text()
    for line in ("#SBATCH --requeue", "#SBATCH --signal=B:USR1@", "#SBATCH --output=%x-%j.out"):
        assert line in header



def _submit(tmp_path, *options: str) -> list[str]:
    """submit.sh with these options (sbatch double on PATH): the arguments sbatch got. Two
    processes per node, so that the check before sbatch finds cpu_tiny's EP=2 layout."""
    result = run([REPO / "launch" / "slurm" / "submit.sh", *options, CONFIG], timeout=30,
                 **_slurm_env(tmp_path, CSMOE_NPROC_PER_NODE="2"))
    assert result.returncode == 0, result.stderr
    return _calls(tmp_path, "sbatch")[-1]["args"]


def test_submit_requests_gpus_only_when_asked(tmp_path):
    cpu = _submit(tmp_path, "--nodes", "2")
    assert not [a for a in cpu if a.startswith(("--gpus", "--gres", "--gpu"))], cpu
    dry = run([REPO / "launch" / "slurm" / "submit.sh", "--dry-run", CONFIG], timeout=30,
              **_slurm_env(tmp_path))
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("sbatch ") and "--gpus" not in dry.stdout
    assert "--gres" not in dry.stdout
    assert len(_calls(tmp_path, "sbatch")) == 1  # a dry run submits nothing
    assert "--gpus-per-node=4" in _submit(tmp_path, "--gpus-per-node", "4")
    assert "--gres=gpu:h100:8" in _submit(tmp_path, "--gres", "gpu:h100:8")
    dry = run([REPO / "launch" / "slurm" / "submit.sh", "--dry-run", "--gres", "gpu:8", CONFIG],
              timeout=30, **_slurm_env(tmp_path))
    assert "--gres=gpu:8" in dry.stdout.split()


def test_submit_passes_exclusive_cpus_and_gres(tmp_path):
    args = _submit(tmp_path, "--nodes", "2", "--exclusive", "--cpus-per-task", "96",
                   "--gres", "gpu:8", "--job-name", "smoke")
    assert args[:5] == ["--nodes=2", "--exclusive", "--cpus-per-task=96", "--gres=gpu:8",
                        "--job-name=smoke"]
    assert args[-2:] == [str(SBATCH), str(CONFIG)]
    bad = run([REPO / "launch" / "slurm" / "submit.sh", "--cpus-per-task", "all", CONFIG],
              timeout=30, **_slurm_env(tmp_path))
    assert bad.returncode == 2 and "--cpus-per-task must be a positive integer" in bad.stderr
    unknown = run([REPO / "launch" / "slurm" / "submit.sh", "--gpus", "8", CONFIG], timeout=30,
                  **_slurm_env(tmp_path))
    assert unknown.returncode == 2 and "unknown option --gpus" in unknown.stderr


def test_batch_header_takes_whole_node_resources_and_no_gpu():
    directives = [line.split()[1] for line in SBATCH.read_text().splitlines()
                  if line.startswith("#SBATCH")]
    assert "--mem=0" in directives
    (cpus,) = [d for d in directives if d.startswith("--cpus-per-task=")]
    assert int(cpus.split("=")[1]) >= 1
    assert not [d for d in directives if d.startswith(("--gpus", "--gres", "--gpu"))], directives


def test_batch_script_gives_the_node_task_the_job_cpus(tmp_path):
    result = run(["bash", SBATCH, CONFIG], timeout=30,
                 **_slurm_env(tmp_path, SLURM_CPUS_PER_TASK="48"))
    assert result.returncode == 0, result.stderr
    assert "--cpus-per-task=48" in _calls(tmp_path, "srun")[-1]["options"]


def test_submit_refuses_a_warning_as_long_as_the_time_limit(tmp_path):
    submit = REPO / "launch" / "slurm" / "submit.sh"
    bad = run([submit, "--time", "5", CONFIG], timeout=30, **_slurm_env(tmp_path))
    assert bad.returncode == 2
    assert "time limit (5, 300s) must be longer than --warn-seconds (300)" in bad.stderr
    assert _calls(tmp_path, "sbatch") == []  # refused before submitting
    ok = _submit(tmp_path, "--time", "1-00:00", "--warn-seconds", "600")
    assert "--time=1-00:00" in ok and "--signal=B:USR1@600" in ok
    assert "--signal=B:USR1@50" in _submit(tmp_path, "--time", "1", "--warn-seconds", "50")
