"""The report's pictures (matplotlib, Agg backend: no display needed).

loss_curves.png: training loss and periodic validation loss against training tokens (equal
tokens) and validation loss against training time (equal time); per arm the mean over seeds
as a line and the band between the lowest and highest seed. final_loss.png: each seed's final
loss and the mean with its 95% interval per arm, and the same for the paired per-seed
differences against the baseline arm.
"""

from __future__ import annotations

from pathlib import Path

from .stats import curve


def _band(series: list[tuple[list[float], list[float]]]):
    """Mean, min, max over seeds at the x values all seeds share (the same steps)."""
    common = sorted(set.intersection(*(set(xs) for xs, _ in series))) if series else []
    rows = [dict(zip(xs, ys)) for xs, ys in series]
    values = [[row[x] for row in rows] for x in common]
    return (common, [sum(v) / len(v) for v in values], [min(v) for v in values],
            [max(v) for v in values])




def write_plots(data: dict, report: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(report["arms"])
    colors = {arm: plt.get_cmap("tab10")(i % 10) for i, arm in enumerate(arms)}
    tokens_per_step = {}
    for arm in arms:
        e = report["arms"][arm]
        last_step = max(r["step"] for r in data[(arm, e["seeds"][0])])
        tokens_per_step[arm] = e["tokens"] / max(last_step, 1)

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    panels = (("loss", "step", "training loss", "training tokens"),
              ("val_loss", "step", "validation loss", "training tokens"),
              ("val_loss", "train_time_s", "validation loss", "training time (s, steps only)"))
    for ax, (key, x, ylabel, xlabel) in zip(axes, panels):
        for arm in arms:
            seeds = report["arms"][arm]["seeds"]
            series = [curve(data[(arm, s)], key, "step") for s in seeds]
            steps, mean, low, high = _band(series)
            if not steps:
                continue
            if x == "step":
                xs = [s * tokens_per_step[arm] for s in steps]
            else:  # mean training time over seeds at each shared evaluation step
                times = [dict(zip(*curve(data[(arm, s)], "train_time_s", "step"))) for s in seeds]
                xs = [sum(t.get(s, float("nan")) for t in times) / len(times) for s in steps]
            ax.plot(xs, mean, color=colors[arm], label=f"{arm} (mean of {len(seeds)} seeds)")
            if len(seeds) > 1:
                ax.fill_between(xs, low, high, color=colors[arm], alpha=0.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("Training loss (band: min-max over seeds)")
    axes[1].set_title("Validation loss, equal tokens")
    axes[2].set_title("Validation loss, equal training time")
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=110)
    plt.close(fig)

    fig, (ax, dax) = plt.subplots(1, 2, figsize=(3 + 3.2 * len(arms), 4.5))
    base = report["baseline"]
    labelled = set()
    for i, arm in enumerate(arms):
        e = report["arms"][arm]
        for axis, values, stat in (
                (ax, [e["final_loss_by_seed"][s] for s in e["seeds"]], e["final_loss"]),
                (dax, e["vs_baseline"]["differences"], e["vs_baseline"])):
            if arm == base and axis is dax:
                continue
            first = axis not in labelled  # one legend entry per kind and panel
            labelled.add(axis)
            axis.scatter([i] * len(values), values, color=colors[arm], alpha=0.6,
                         label="per seed" if first else None)
            err = stat["ci95_half_width"] if stat["n"] > 1 else 0.0
            axis.errorbar([i + 0.15], [stat["mean"]], yerr=[err], fmt="o", color="black",
                          capsize=5, label="mean ± 95% CI (t)" if first else None)
    ax.set_ylabel("final held-out loss" if report["metric"] == "final_valid_loss"
                  else "final validation loss")
    ax.set_title("Final loss per arm")
    dax.axhline(0.0, color="gray", linewidth=1)
    dax.set_ylabel(f"final loss minus {base}'s, same seed")
    dax.set_title(f"Paired difference vs {base} (below 0: better)")
    for axis in (ax, dax):
        axis.set_xticks(range(len(arms)), arms)
        axis.set_xlabel("arm")
        axis.grid(alpha=0.3, axis="y")
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "final_loss.png", dpi=110)
    plt.close(fig)
    return ["loss_curves.png", "final_loss.png"]
