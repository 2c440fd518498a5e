"""<run.dir>/run_info.json: what produced this run, one entry per launch (resumes append).

Enough to rebuild the environment and the command: package version and git commit, library
versions, the command line and launcher environment, host and time. Written by rank 0 only,
replaced atomically so a crash never leaves half a file.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

RUN_INFO = "run_info.json"
_LIBRARIES = ("torch", "megatron-core", "sentencepiece", "numpy", "transformer-engine", "apex")
# The launcher's and scheduler's view of the job; nothing secret is in these.
_LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "GROUP_WORLD_SIZE",
               "ROLE_WORLD_SIZE", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID",
               "SLURM_JOB_NAME", "SLURM_NNODES", "SLURM_JOB_NODELIST", "SLURM_RESTART_COUNT",
               "CSMOE_CONTAINER_IMAGE")
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def _version(dist_name: str) -> str | None:
    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_PACKAGE_ROOT), *args], capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def source_revision() -> dict:
    """Git commit and dirty flag of the checkout the package runs from. Outside a checkout
    (an installed wheel, the container) the image's build argument CSMOE_GIT_COMMIT is used."""
    commit = _git("rev-parse", "HEAD") if (_PACKAGE_ROOT / ".git").exists() else None
    if commit:
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
        return {"git_commit": commit, "git_dirty": dirty, "source": str(_PACKAGE_ROOT)}
    return {"git_commit": os.environ.get("CSMOE_GIT_COMMIT") or None, "git_dirty": None,
            "source": str(_PACKAGE_ROOT)}


def _accelerator() -> dict:
    import torch

    info = {"cuda": torch.version.cuda, "device_count": torch.cuda.device_count()}
    if torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    return info


def launch_record(run_dir: Path, resumed_from: Path | None = None) -> dict:
    from .. import __version__

    config = run_dir / "config.yaml"
    return {
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "package_version": __version__,
        **source_revision(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": {name: _version(name) for name in _LIBRARIES},
        "accelerator": _accelerator(),
        "argv": list(getattr(sys, "orig_argv", sys.argv)),
        "env": {k: os.environ[k] for k in _LAUNCH_ENV if k in os.environ},
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest()
        if config.is_file() else None,
        # The checkpoint this launch actually resumed from (after fallback), not what `latest`
        # says: None for a fresh start or checkpoint.resume=false.
        "resume_checkpoint": Path(resumed_from).name if resumed_from is not None else None,
    }


def record_launch(run_dir: Path, resumed_from: Path | None = None) -> Path:
    """Append this launch to <run_dir>/run_info.json (rank 0 only), with the checkpoint it
    resumed from. Returns the file."""
    path = Path(run_dir) / RUN_INFO
    launches = []
    if path.is_file():
        try:
            launches = json.loads(path.read_text()).get("launches", [])
        except (ValueError, AttributeError):  # unreadable: keep it aside, start a new list
            os.replace(path, path.with_suffix(".json.corrupt"))
    launches.append(launch_record(Path(run_dir), resumed_from))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"launches": launches}, indent=2) + "\n")
    os.replace(tmp, path)
    return path
