"""A grouped bar chart of an EvalReport: recall@10 (or another metric) per mode, one group per suite and parts."""

from __future__ import annotations

from pathlib import Path

from shelfsight.evaluation.harness import MODES, EvalReport
from shelfsight.search.errors import BadInputError


def plot_report(report: EvalReport, out: str | Path, metric: str = "recall@10") -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no screen
        import matplotlib.pyplot as plt
    except ImportError:
        raise BadInputError("--plot needs matplotlib: pip install 'shelfsight[train]'") from None
    out = Path(out)
    groups = list(dict.fromkeys((r.suite, r.parts) for r in report.rows))
    modes = [m for m in MODES if any(r.mode == m for r in report.rows)]
    width = 0.8 / max(1, len(modes))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) + 2), 4))
    for i, mode in enumerate(modes):
        xs, ys = [], []
        for g, (suite, parts) in enumerate(groups):
            try:
                ys.append(report.row(suite, parts, mode).metrics[metric])
                xs.append(g + (i - (len(modes) - 1) / 2) * width)
            except KeyError:
                continue
        ax.bar(xs, ys, width, label=mode)
    ax.set_xticks(range(len(groups)), [f"{s}\n({p})" for s, p in groups])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(metric)
    ax.set_title(f"{report.collection}: {metric} by retrieval mode ({report.model})", fontsize=9)
    ax.legend(fontsize=8, ncols=min(3, len(modes)))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
