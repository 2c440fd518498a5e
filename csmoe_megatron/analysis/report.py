"""The A/B (or sweep) report from finished run directories: report.json, report.md, PNGs.

Per arm, over seeds: the final held-out loss (mean and 95% Student-t interval), bits per byte
and perplexity; paired per-seed differences against the baseline arm with their interval;
tokens/s and training time; the competition rate and router-competition agreement; and two
views of compute: equal tokens (every arm trains the same tokens: the final numbers) and
equal time (each arm's periodic validation loss interpolated at the training time the
fastest arm needed for the whole run).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .experiment import FINAL_EVAL, Run
from .stats import curve, interpolate, mean_ci95, paired_differences


def read_run(run: Run) -> dict:
    records = [json.loads(line) for line in
               (run.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    final = json.loads((run.run_dir / FINAL_EVAL).read_text())
    return {"records": records, "final": final}


def _final_loss(final: dict) -> tuple[float, str]:
    """The whole held-out valid set when configured; else the last periodic evaluation."""
    if "final_valid_loss" in final:
        return final["final_valid_loss"], "final_valid_loss"
    return final.get("val_loss", float("nan")), "val_loss"


def _last(records: list[dict], key: str):
    values = [r[key] for r in records if key in r]
    return values[-1] if values else None


def _agreement(records: list[dict], suffix: str) -> float | None:
    """Mean over MoE layers of each layer's last measured router-competition agreement."""
    last = {}
    for r in records:
        for key, value in r.items():
            if key.startswith("moe/layer") and key.endswith(f"/{suffix}"):
                last[key] = value
    return sum(last.values()) / len(last) if last else None


def _tokens_per_s(final: dict) -> float:
    """Training tokens per second of the timed steps (each launch's first step left out)."""
    if not final.get("train_time_s"):
        return float("nan")
    return final["tokens"] / final["steps"] * final["timed_steps"] / final["train_time_s"]


def summarize(runs: list[Run], baseline: str, command: str = "") -> dict:
    data = {(r.arm, r.seed): read_run(r) for r in runs}
    arms = list(dict.fromkeys(r.arm for r in runs))
    if baseline not in arms:
        baseline = arms[0]
    per_arm, loss_by_seed, metric_name = {}, {}, None
    for arm in arms:
        seeds = [r.seed for r in runs if r.arm == arm]
        finals = {s: data[(arm, s)]["final"] for s in seeds}
        records = {s: data[(arm, s)]["records"] for s in seeds}
        losses = {}
        for s in seeds:
            losses[s], metric_name = _final_loss(finals[s])
        loss_by_seed[arm] = losses
        tokens_per_s = {s: _tokens_per_s(finals[s]) for s in seeds}
        entry = {
            "seeds": seeds,
            "final_loss_by_seed": losses,
            "final_loss": mean_ci95(list(losses.values())),
            "tokens_per_s": mean_ci95(list(tokens_per_s.values())),
            "train_time_s": mean_ci95([finals[s]["train_time_s"] for s in seeds]),
            "tokens": finals[seeds[0]]["tokens"],
        }
        for key in ("final_valid_bpb", "final_valid_ppl", "final_test_loss", "final_test_bpb"):
            if all(key in finals[s] for s in seeds):
                entry[key] = mean_ci95([finals[s][key] for s in seeds])
        rate = [_last(records[s], "moe/competition_rate_cumulative") for s in seeds]
        if any(v is not None for v in rate):
            entry["competition_rate"] = mean_ci95([v for v in rate if v is not None])
        for suffix, name in (("agreement", "agreement_exact"),
                             ("agreement_overlap", "agreement_overlap")):
            values = [v for v in (_agreement(records[s], suffix) for s in seeds) if v is not None]
            if values:
                entry[name] = mean_ci95(values)
        per_arm[arm] = entry
    for arm in arms:
        per_arm[arm]["vs_baseline"] = paired_differences(loss_by_seed[arm], loss_by_seed[baseline])
        base_speed = per_arm[baseline]["tokens_per_s"]["mean"]
        per_arm[arm]["throughput_vs_baseline"] = per_arm[arm]["tokens_per_s"]["mean"] / base_speed
    # Equal time: the fastest arm's mean training time for the whole run.
    budget = min(per_arm[a]["train_time_s"]["mean"] for a in arms)
    for arm in arms:
        at_budget = []
        for r in (r for r in runs if r.arm == arm):
            xs, ys = curve(data[(arm, r.seed)]["records"], "val_loss", "train_time_s")
            at_budget.append(interpolate(xs, ys, budget))
        per_arm[arm]["val_loss_at_equal_time"] = mean_ci95(at_budget)
    return {"command": command, "baseline": baseline, "metric": metric_name,
            "equal_time_budget_s": budget, "arms": per_arm}


def _fmt(stat: dict, digits: int = 4) -> str:
    if stat["n"] == 0 or math.isnan(stat["mean"]):
        return "n/a"
    if math.isnan(stat["ci95_half_width"]):
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['ci95_half_width']:.{digits}f}"


def markdown(report: dict, pictures: list[str]) -> str:
    arms, base = report["arms"], report["baseline"]
    what = ("whole held-out valid set (data.valid_prefixes)" if report["metric"] ==
            "final_valid_loss" else "last periodic evaluation (eval_iters batches of data.split)")
    lines = ["# A/B report", "", f"Command: `{report['command']}`", "",
             f"Final loss: {what}; mean ± half-width of the 95% Student-t interval over seeds. "
             f"Differences are paired by seed against the baseline arm **{base}** "
             f"(negative: lower loss than {base}).", "",
             "| arm | seeds | final loss | Δ vs " + base + " | bits/byte | tokens/s | "
             "train time s | loss at equal time | competition rate | agreement exact/overlap |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, e in arms.items():
        d = e["vs_baseline"]
        delta = "—" if arm == base else _fmt(d)
        agree = "—"
        if "agreement_exact" in e:
            agree = f"{e['agreement_exact']['mean']:.3f} / {e['agreement_overlap']['mean']:.3f}"
        rate = f"{e['competition_rate']['mean']:.3f}" if "competition_rate" in e else "—"
        bpb = _fmt(e["final_valid_bpb"]) if "final_valid_bpb" in e else "—"
        lines.append(f"| {arm} | {len(e['seeds'])} | {_fmt(e['final_loss'])} | {delta} | {bpb} | "
                     f"{_fmt(e['tokens_per_s'], 0)} (x{e['throughput_vs_baseline']:.2f}) | "
                     f"{_fmt(e['train_time_s'], 1)} | {_fmt(e['val_loss_at_equal_time'])} | "
                     f"{rate} | {agree} |")
    lines += ["", "Per-seed final loss and paired difference vs the baseline:", "",
              "| arm | " + " | ".join(f"seed {s}" for s in next(iter(arms.values()))["seeds"])
              + " |", "|---|" + "---|" * len(next(iter(arms.values()))["seeds"])]
    for arm, e in arms.items():
        cells = []
        for s in e["seeds"]:
            value = e["final_loss_by_seed"][s]
            diffs = dict(zip(e["vs_baseline"]["seeds"], e["vs_baseline"]["differences"]))
            cells.append(f"{value:.4f}" + ("" if arm == base or s not in diffs
                                           else f" ({diffs[s]:+.4f})"))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", f"Equal tokens: every arm trained {next(iter(arms.values()))['tokens']:,} tokens "
              f"(the final loss above). Equal time: periodic validation loss interpolated at "
              f"{report['equal_time_budget_s']:.1f} s of training steps, the fastest arm's "
              f"mean time for the whole run. Training time counts optimizer steps only (no "
              f"evaluation or checkpoint saves). Agreement: router top-K vs competition "
              f"winners on competition steps (exact set match / slot overlap), each MoE "
              f"layer's last measurement, averaged over layers.", ""]
    lines += [f"![{p}]({p})" for p in pictures]
    return "\n".join(lines) + "\n"


def write_report(runs: list[Run], baseline: str, out: Path, command: str = "") -> dict:
    from .report_plots import write_plots

    report = summarize(runs, baseline, command)
    data = {(r.arm, r.seed): read_run(r)["records"] for r in runs}
    pictures = write_plots(data, report, out)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report, pictures))
    return report
