"""The runs of an A/B or a sweep: arms x seeds of one base config, each in its own directory.

An arm is a name and a list of `key=value` overrides applied on top of the base config and
the command line's overrides. Run directory: <out>/<arm>/seed<N>. A run is finished when its
final_eval.json (written by the trainer at the end) exists; finished runs are skipped, others
resume from their latest checkpoint. Each run directory records its command (ab_run.json):
reusing <out> with other settings is refused instead of mixing results.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

# Built-in arms. topk: megatron-core's softmax top-K router with its Switch aux loss
# (model.moe.aux_loss_coeff). sigmoid_bias: megatron's sigmoid scores with aux-loss-free
# expert bias (DeepSeek-V3 style balancing; no aux loss).
ARM_PRESETS: dict[str, list[str]] = {
    "competesmoe": ["model.moe.router=competesmoe"],
    "topk": ["model.moe.router=topk", "model.moe.score_function=softmax",
             "model.moe.expert_bias=false"],
    "sigmoid_bias": ["model.moe.router=topk", "model.moe.score_function=sigmoid",
                     "model.moe.expert_bias=true", "model.moe.aux_loss_coeff=0.0"],
}
RUN_RECORD = "ab_run.json"
FINAL_EVAL = "final_eval.json"  # train/heldout.py writes it when a run is complete


class ExperimentError(ValueError):
    """Bad arms, seeds or output directory: one message naming the problem and the fix."""


@dataclass(frozen=True)
class Run:
    arm: str
    seed: int
    overrides: tuple[str, ...]  # everything after --config, run.dir last
    run_dir: Path


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ExperimentError(f"--seeds must be comma-separated integers, e.g. 1,2,3; got "
                              f"{text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ExperimentError(f"--seeds needs distinct non-negative integers, got {text!r}")
    return seeds


def _override_list(name: str, value) -> list[str]:
    """An arm's overrides from YAML: a list of "key=value" or a mapping of dotted keys."""
    if isinstance(value, dict):
        return [f"{k}={json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else v}"
                for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        return list(value)
    raise ExperimentError(f"arm {name!r}: overrides must be a mapping of dotted keys to values "
                          f"or a list of \"key=value\" strings, got {value!r}")


def arms_from_mapping(spec) -> dict[str, list[str]]:
    """A YAML arm spec: a list of preset names and/or {name: overrides} items, or a mapping
    {name: overrides} (null overrides: the preset of that name)."""
    items = spec.items() if isinstance(spec, dict) else [
        (s, None) if isinstance(s, str) else next(iter(s.items())) for s in spec or []]
    arms = {}
    for name, value in items:
        if value is None:
            if name not in ARM_PRESETS:
                raise ExperimentError(f"unknown arm {name!r}; built-in arms are "
                                      f"{', '.join(ARM_PRESETS)}, or give its overrides")
            arms[str(name)] = list(ARM_PRESETS[name])
        else:
            arms[str(name)] = _override_list(name, value)
    if not arms:
        raise ExperimentError("no arms given")
    return arms


def parse_arms(text: str) -> dict[str, list[str]]:
    """--arms: comma-separated preset names, or a YAML file (see arms_from_mapping)."""
    path = Path(text)
    if text.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ExperimentError(f"--arms {text}: no such file")
        return arms_from_mapping(yaml.safe_load(path.read_text()))
    return arms_from_mapping([s.strip() for s in text.split(",") if s.strip()])


def plan_runs(config: str, arms: dict[str, list[str]], seeds: list[int], overrides: list[str],
              out: Path) -> list[Run]:
    for name in arms:
        if not name or "/" in name or name.startswith("."):
            raise ExperimentError(f"arm name {name!r} cannot be a directory name")
    for item in overrides:
        if "=" not in item or item.split("=", 1)[0] in ("run.dir", "train.seed"):
            raise ExperimentError(f"override {item!r}: give key=value (run.dir and train.seed "
                                  f"are set per run from --out and --seeds)")
    return [Run(arm, seed, (*overrides, *arm_overrides, f"train.seed={seed}",
                            f"run.dir={out / arm / f'seed{seed}'}"), out / arm / f"seed{seed}")
            for arm, arm_overrides in arms.items() for seed in seeds]


def run_record(config: str, run: Run) -> dict:
    return {"config": str(config), "arm": run.arm, "seed": run.seed,
            "overrides": list(run.overrides)}


def check_or_record(config: str, run: Run) -> None:
    """Refuse a run directory made by another command; record ours in a new one."""
    path = run.run_dir / RUN_RECORD
    mine = run_record(config, run)
    if path.is_file():
        theirs = json.loads(path.read_text())
        if theirs != mine:
            raise ExperimentError(
                f"{run.run_dir} holds a run made with other settings ({theirs['overrides']}); "
                f"use another --out, or remove that directory to rerun it")
        return
    run.run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mine, indent=1) + "\n")


def is_finished(run: Run) -> bool:
    return (run.run_dir / FINAL_EVAL).is_file()


def train_command(config: str, nproc: int, run: Run) -> list[str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc-per-node={nproc}"] if nproc > 1 else [sys.executable])
    return [*launcher, "-m", "csmoe_megatron.train", "--config", str(config), *run.overrides]


def run_locally(config: str, nproc: int, runs: list[Run], say=print) -> None:
    """One after another; finished runs are skipped, unfinished ones resume."""
    for i, run in enumerate(runs, 1):
        check_or_record(config, run)
        if is_finished(run):
            say(f"[{i}/{len(runs)}] {run.arm} seed {run.seed}: finished, skipped ({run.run_dir})")
            continue
        say(f"[{i}/{len(runs)}] {run.arm} seed {run.seed}: training into {run.run_dir}")
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(train_command(config, nproc, run), env=env)
        if proc.returncode != 0 or not is_finished(run):
            raise RuntimeError(f"run {run.arm} seed {run.seed} failed (exit {proc.returncode}); "
                               f"see {run.run_dir}; rerun the same command to resume it")


def slurm_array_script(config: str, runs: list[Run], repo: Path, out: Path,
                       sbatch_options: list[str]) -> str:
    """An sbatch job array, one task per unfinished run, each launched through the project's
    launch/slurm/train.sbatch (same node setup, signals and requeue as a single job)."""
    lines = ["#!/usr/bin/env bash", "#SBATCH --job-name=csmoe-ab",
             f"#SBATCH --array=0-{len(runs) - 1}", "#SBATCH --nodes=1",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --output={out}/slurm-%A_%a.out",
             "#SBATCH --open-mode=append", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300",
             *[f"#SBATCH {opt}" for opt in sbatch_options],
             "# Written by csmoe-ab/csmoe-sweep --slurm: task i trains run i below.",
             "set -euo pipefail",
             # train.sbatch finds node.sh under CSMOE_ROOT (default: the submit directory).
             f"export CSMOE_ROOT=${{CSMOE_ROOT:-{shlex.quote(str(repo))}}}",
             "case \"$SLURM_ARRAY_TASK_ID\" in"]
    for i, run in enumerate(runs):
        args = " ".join(shlex.quote(a) for a in (str(config), *run.overrides))
        lines.append(f"  {i}) args=({args}) ;;  # {run.arm} seed {run.seed}")
    lines += ["  *) echo \"no run for array task $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;", "esac",
              f"exec bash {shlex.quote(str(repo / 'launch/slurm/train.sbatch'))} \"${{args[@]}}\"",
              ""]
    return "\n".join(lines)
