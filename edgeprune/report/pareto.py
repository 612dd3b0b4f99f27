"""The sweep's Pareto plot: accuracy vs latency and accuracy vs FLOPs, one colour per
criterion, the Pareto front drawn as a step line through the circled cells."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgeprune.report.plots import pyplot, to_png

COLORS = ("#1f6fb2", "#d9822b", "#2f9e44", "#ae3ec9", "#c92a2a", "#495057")
MARKERS = ("o", "s", "^", "D", "v", "P")
LABEL_OFFSETS = ((9, 5), (9, -13), (9, 15), (9, -23))


def _front_line(ax, points: list[tuple[float, float]]) -> None:
    """Step line through the front: cost ascending, accuracy never lower than before."""
    pts = sorted(points)
    xs, ys = [], []
    for x, y in pts:
        if xs:
            xs.append(x)
            ys.append(ys[-1])
        xs.append(x)
        ys.append(y)
    ax.plot(xs, ys, color="#102a43", linestyle="--", linewidth=1, zorder=1,
            label="Pareto front (ringed cells)")
    ax.scatter(*zip(*pts, strict=True), s=170, facecolors="none", edgecolors="#102a43",
               linewidths=1.2, zorder=2)


def _panel(ax, rows: Sequence[dict[str, Any]], cost, dense_cost: float | None,
           front_key: str, xlabel: str, title: str) -> None:
    criteria = list(dict.fromkeys(r["criterion"] for r in rows))
    for i, crit in enumerate(criteria):
        mine = [r for r in rows if r["criterion"] == crit]
        ax.scatter([cost(r) for r in mine], [r["accuracy"] * 100 for r in mine], s=55,
                   color=COLORS[i % len(COLORS)], marker=MARKERS[i % len(MARKERS)],
                   label=crit, zorder=3)
        for r in mine:  # each criterion's labels at its own height: close cells stay legible
            ax.annotate(f"-{r['flops_reduction_target']:.0%}", (cost(r), r["accuracy"] * 100),
                        textcoords="offset points", xytext=LABEL_OFFSETS[i % len(LABEL_OFFSETS)],
                        fontsize=8, color=COLORS[i % len(COLORS)], zorder=4,
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none",
                              "alpha": 0.85})
    front = [(cost(r), r["accuracy"] * 100) for r in rows if r[front_key]]
    if front:
        _front_line(ax, front)
    if dense_cost is not None:
        ax.scatter([dense_cost], [rows[0]["dense_accuracy"] * 100], marker="*", s=200,
                   color="#52606d", label="dense (unpruned)", zorder=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.15)


def pareto_plot(rows: Sequence[dict[str, Any]], fmt: str | None, target: str) -> bytes:
    """Two panels side by side as PNG bytes; the latency panel only when `fmt` was measured."""
    plt = pyplot()
    panels = 2 if fmt else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.6), squeeze=False)
    _panel(axes[0][0], rows, lambda r: r["macs"] * 2 / 1e6, rows[0]["dense_macs"] * 2 / 1e6,
           "pareto_flops", "FLOPs per image (millions, 2 x MACs)", "Accuracy vs FLOPs")
    if fmt:
        label = rows[0].get("latency_label") or "host"
        _panel(axes[0][1], rows, lambda r: r["p50_ms"][fmt], rows[0]["dense_p50_ms"].get(fmt),
               "pareto_latency", f"{fmt} p50 latency per image (ms, measured on {label})",
               "Accuracy vs latency")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(labels), 6), frameon=False)
    fig.suptitle(f"Sweep for target {target}: labels are the requested FLOPs cut; up and to "
                 "the left is better", fontsize=11)
    fig.tight_layout()
    return to_png(fig)
