"""A/B: does CompeteSMoE win here? The same experiment per arm and seed, then a report.

    csmoe-ab --config configs/cpu_tiny.yaml --seeds 1,2,3 --arms competesmoe,topk,sigmoid_bias \
        [--baseline topk] [--nproc 2] [--out runs/ab] [--slurm] [key=value ...]

Arms are built-in names (competesmoe, topk, sigmoid_bias: see experiment.ARM_PRESETS) or a
YAML file of named override sets; the trailing key=value overrides apply to every run (e.g.
data.valid_prefixes=[...] train.steps=200). Each run trains into <out>/<arm>/seed<N>, one
after another, skipped when finished and resumed when not; then <out>/report.md,
report.json and PNGs compare the arms (experiment.py, report.py). --slurm instead submits
one SLURM job array (a task per unfinished run) and a report job after it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from ..version import add_version_argument
from .experiment import (ExperimentError, Run, is_finished, parse_arms, parse_seeds, plan_runs,
                         run_locally, slurm_array_script, check_or_record)

REPO = Path(__file__).resolve().parents[2]


def add_campaign_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", type=int, default=2, help="processes per run (torchrun)")
    p.add_argument("--out", default=None, help="parent directory of the runs and the report")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from finished runs, train nothing")
    p.add_argument("--slurm", action="store_true",
                   help="submit a SLURM job array (one task per unfinished run) and a report job")
    p.add_argument("--sbatch-option", action="append", default=[], metavar="OPT",
                   help="extra #SBATCH line for the array, e.g. --sbatch-option=--gpus-per-node=8")
    p.add_argument("--dry-run", action="store_true",
                   help="with --slurm: write the job scripts and print the sbatch commands only")


def run_campaign(args, config: str, runs: list[Run], baseline: str, out: Path, prog: str,
                 module: str, argv: list[str]) -> int:
    """Train (or submit) the runs, then write the report. prog/module/argv: this command
    (console script name, module, arguments), for the report and the SLURM report job."""
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(shlex.quote(a) for a in (prog, *argv))
    if args.slurm and not args.report_only:
        report_cmd = [sys.executable, "-m", module,
                      *[a for a in argv if a not in ("--slurm", "--dry-run")],
                      "--report-only"]
        return _submit(args, config, runs, out, report_cmd)
    if not args.report_only:
        run_locally(config, args.nproc, runs)
    missing = [r for r in runs if not is_finished(r)]
    if missing:
        raise ExperimentError(f"{len(missing)} run(s) not finished (e.g. {missing[0].run_dir}); "
                              f"run the command without --report-only to train them")
    from .report import write_report

    report = write_report(runs, baseline, out, command)
    print((out / "report.md").read_text())
    summary = {"report": str(out / "report.md"), "baseline": report["baseline"],
               "final_loss": {a: e["final_loss"]["mean"] for a, e in report["arms"].items()},
               "delta_vs_baseline": {a: e["vs_baseline"]["mean"]
                                     for a, e in report["arms"].items()}}
    print(json.dumps(summary))
    return 0


def _submit(args, config: str, runs: list[Run], out: Path, report_cmd: list[str]) -> int:
    todo = [r for r in runs if not is_finished(r)]
    for run in runs:
        check_or_record(config, run)
    array = out / "runs.sbatch"
    if todo:
        array.write_text(slurm_array_script(config, todo, REPO, out, args.sbatch_option))
    submit = ["sbatch", "--parsable", str(array)]
    report = ["sbatch", "--job-name=csmoe-report", f"--output={out}/slurm-report-%j.out",
              "--dependency=afterany:JOBID",
              f"--wrap=cd {shlex.quote(str(REPO))} && {' '.join(map(shlex.quote, report_cmd))}"]
    if args.dry_run or not todo:
        if todo:
            print(" ".join(map(shlex.quote, submit)))
        print(" ".join(map(shlex.quote, report if todo else report_cmd)))
        return 0
    job = subprocess.run(submit, check=True, capture_output=True, text=True).stdout.strip()
    job_id = job.split(";")[0]
    report[3] = f"--dependency=afterany:{job_id}"
    subprocess.run(report, check=True)
    print(f"submitted array job {job_id} ({len(todo)} runs) and its report job; the report "
          f"will be {out / 'report.md'}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="csmoe-ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML experiment file or packaged config name")
    add_version_argument(p)
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (train.seed)")
    p.add_argument("--arms", default="competesmoe,topk",
                   help="built-in arm names (competesmoe, topk, sigmoid_bias), comma-separated, "
                        "or a YAML file of arms")
    p.add_argument("--baseline", default="topk", help="arm the others are compared against "
                                                      "(default topk; else the first arm)")
    add_campaign_arguments(p)
    p.add_argument("overrides", nargs="*", help="key=value for every run")
    args = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        arms = parse_arms(args.arms)
        out = Path(args.out or "runs/ab")
        runs = plan_runs(args.config, arms, parse_seeds(args.seeds), args.overrides, out)
        return run_campaign(args, args.config, runs, args.baseline, out, "csmoe-ab",
                            "csmoe_megatron.analysis.ab", argv)
    except ExperimentError as e:
        print(f"csmoe-ab: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
