"""The report's plots as PNG bytes (matplotlib, Agg backend, no display needed).

Each function takes the report's numbers (see `numbers.collect`) and returns None when the
run holds nothing to plot, so the page can say so instead of showing an empty chart.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

DENSE, PRUNED, ESTIMATE, LIGHT = "#9aa5b1", "#1f6fb2", "#d9822b", "#c9d6e3"
DPI = 110


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 12, "axes.titleweight": "bold",
                         "axes.spines.top": False, "axes.spines.right": False,
                         "figure.dpi": DPI, "savefig.dpi": DPI})
    return plt


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.15, facecolor="white")
    pyplot().close(fig)
    return buf.getvalue()


def _height(rows: int, per_row: float = 0.32, extra: float = 1.4) -> float:
    return max(2.6, extra + per_row * rows)


def _below(rows: int) -> float:
    """Axes-relative y for a legend placed under the x-axis label."""
    return -0.9 / _height(rows, 0.42)


def layer_label(row: dict[str, Any]) -> str:
    """'layer (type)' as the plots and tables name a layer."""
    return f"{row['layer']} ({row['type']})" if row.get("type") else str(row["layer"])


def channels_plot(channels: Sequence[dict[str, Any]]) -> bytes | None:
    """Output channels per layer: before (grey) with the kept part (blue) drawn over it."""
    if not channels:
        return None
    plt = pyplot()
    labels = [layer_label(c) + (" [protected]" if c["protected"] else "") for c in channels]
    y = np.arange(len(channels))[::-1]
    before = np.array([c["before"] for c in channels])
    after = np.array([c["after"] for c in channels])
    fig, ax = plt.subplots(figsize=(9.5, _height(len(channels))))
    ax.barh(y, before, color=LIGHT, height=0.75, label="before pruning")
    ax.barh(y, after, color=PRUNED, height=0.45, label="kept after pruning")
    for yi, b, a in zip(y, before, after, strict=True):
        ax.text(b + before.max() * 0.01, yi, f"{a} of {b} ({a / b:.0%})" if b else "",
                va="center", fontsize=9)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, before.max() * 1.22)
    ax.set_xlabel("output channels")
    ax.set_title("Output channels per layer, before and after pruning")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, _below(len(channels))), ncol=2,
              frameon=False)
    return to_png(fig)


def _normalised(scores: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
    """Scores as they are, or divided by each layer's max |score| when the layers' ranges
    differ by more than 100x (one axis could not show them all)."""
    spans = [float(np.abs(s).max()) for s in scores.values() if s.size]
    if not spans or min(spans) <= 0 or max(spans) / min(spans) <= 100:
        return scores, False
    return {k: s / np.abs(s).max() if s.size and np.abs(s).max() else s
            for k, s in scores.items()}, True


def scores_plot(scores: dict[str, np.ndarray], channels: Sequence[dict[str, Any]],
                criterion: str | None) -> bytes | None:
    """Per-layer distribution of the criterion's channel scores: a box per layer plus one
    dot per channel, with the channels the layer kept noted on the right."""
    by_layer = {c["layer"]: c for c in channels}
    scores = {k: v for k, v in scores.items() if v.size and (not by_layer or (
        k in by_layer and not by_layer[k]["protected"]))}
    if not scores:
        return None
    plt = pyplot()
    shown, normalised = _normalised(scores)
    names = list(shown)
    y = np.arange(len(names))[::-1]
    fig, ax = plt.subplots(figsize=(9.5, _height(len(names), 0.42)))
    rng = np.random.default_rng(0)
    for yi, name in zip(y, names, strict=True):
        s = shown[name]
        ax.scatter(s, yi + rng.uniform(-0.22, 0.22, s.size), s=6, color=PRUNED, alpha=0.45,
                   linewidths=0, zorder=3)
    ax.boxplot([shown[n] for n in names], positions=y, vert=False, widths=0.6,
               showfliers=False, patch_artist=True, zorder=2,
               boxprops={"facecolor": LIGHT, "edgecolor": "#52606d"},
               medianprops={"color": "#102a43", "linewidth": 1.5},
               whiskerprops={"color": "#52606d"}, capprops={"color": "#52606d"})
    labels = []
    for name in names:
        c = by_layer.get(name)
        note = f"  kept {c['after']}/{c['before']}" if c else ""
        labels.append(layer_label(c or {"layer": name}) + note)
    ax.set_yticks(y, labels)
    lo = min(float(s.min()) for s in shown.values())
    hi = max(float(s.max()) for s in shown.values())
    if lo < 0 < hi:
        ax.axvline(0, color="#829ab1", linewidth=0.8, linestyle="--", zorder=1)
    what = f"{criterion} score" if criterion else "score"
    ax.set_xlabel(f"{what} / layer's largest |score| (layers' ranges differ > 100x)"
                  if normalised else f"{what} (criterion units; higher = keep)")
    ax.set_title(f"Channel scores per layer ({criterion or 'criterion'}): one dot per output "
                 "channel")
    return to_png(fig)


def _latency_rows(latency: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Measured rows, each with the estimate for the same file and source if there is one."""
    estimates = {(r["source"], r["path"]): r for r in latency if r["kind"] == "estimated"}
    rows = []
    for r in latency:
        if r["kind"] == "measured":
            rows.append({**r, "estimate": estimates.get((r["source"], r["path"]))})
    return rows


def _latency_legend(has_est: bool) -> list:
    from matplotlib.patches import Patch

    handles = [Patch(color=DENSE, label="dense model"), Patch(color=PRUNED, label="pruned model"),
               Patch(color="#52606d", label="upper bar: p50 (median), measured"),
               Patch(color="#52606d", alpha=0.45, label="lower bar: p90, measured")]
    if has_est:
        handles.append(Patch(facecolor="white", edgecolor=ESTIMATE, hatch="///",
                             label="estimate for the target (roofline, not measured)"))
    return handles


def latency_plot(latency: Sequence[dict[str, Any]]) -> bytes | None:
    """p50 and p90 bars per model file and measurement; target estimates hatched beside them.

    Runs store percentiles, not every timing, so this shows those percentiles rather than a
    full distribution (the page says so)."""
    rows = _latency_rows(latency)
    if not rows:
        return None
    plt = pyplot()
    has_est = any(r["estimate"] for r in rows)
    step = 1.0
    y = np.arange(len(rows))[::-1] * step
    h = 0.26 if has_est else 0.36
    fig, ax = plt.subplots(figsize=(9.5, _height(len(rows), 0.55 if has_est else 0.42)))
    p50 = [r["ms"].get("p50") or 0 for r in rows]
    p90 = [r["ms"].get("p90") or 0 for r in rows]
    colors = [DENSE if r["model"] == "dense" else PRUNED for r in rows]
    ax.barh(y + h, p50, height=h, color=colors)
    ax.barh(y, p90, height=h, color=colors, alpha=0.45)
    top = max(p50 + p90)
    if has_est:
        est = [r["estimate"]["ms"]["p50"] if r["estimate"] else 0 for r in rows]
        ax.barh(y - h, est, height=h, color="white", edgecolor=ESTIMATE, hatch="///")
        top = max(top, *est)
    for yi, a, b in zip(y, p50, p90, strict=True):
        ax.text(a + top * 0.01, yi + h, f"{a:.3f}", va="center", fontsize=8)
        ax.text(b + top * 0.01, yi, f"{b:.3f}", va="center", fontsize=8)
    if has_est:
        for yi, r in zip(y, rows, strict=True):
            if r["estimate"]:
                v = r["estimate"]["ms"]["p50"]
                ax.text(v + top * 0.01, yi - h, f"~{v:.3f}", va="center", fontsize=8,
                        color=ESTIMATE)
    labels = [f"{r['model']} {r['format']} {r.get('precision') or ''}\n{r['source']}: "
              f"{r['where']}" for r in rows]
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_xlim(0, top * 1.18)
    ax.set_xlabel("latency per image (ms, batch 1); shorter is faster")
    ax.set_title("Latency per model file (stored p50/p90 percentiles)")
    ax.legend(handles=_latency_legend(has_est), loc="upper center", ncol=3, frameon=False,
              bbox_to_anchor=(0.5, _below(len(rows) * (1.3 if has_est else 1))), fontsize=9)
    return to_png(fig)


def finetune_plot(history: Sequence[dict[str, Any]],
                  dense_accuracy: float | None) -> bytes | None:
    """Test accuracy (and training loss) after each fine-tuning epoch."""
    if not history:
        return None
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    acc = [h["test_acc"] * 100 for h in history if h.get("test_acc") is not None]
    acc_ax.plot(epochs[:len(acc)], acc, marker="o", color=PRUNED, label="pruned, fine-tuning")
    if dense_accuracy is not None:
        acc_ax.axhline(dense_accuracy * 100, color=DENSE, linestyle="--",
                       label=f"dense: {dense_accuracy * 100:.2f}%")
    acc_ax.set_xlabel("fine-tuning epoch")
    acc_ax.set_ylabel("test top-1 accuracy (%)")
    acc_ax.set_title("Accuracy during fine-tuning")
    acc_ax.legend(frameon=False, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                  ncol=2)
    loss = [h["loss"] for h in history if "loss" in h]
    loss_ax.plot(epochs[:len(loss)], loss, marker="o", color=ESTIMATE)
    loss_ax.set_xlabel("fine-tuning epoch")
    loss_ax.set_ylabel("training loss")
    if len(history) <= 12:
        for e, a in zip(epochs, acc, strict=False):
            acc_ax.annotate(f"{a:.2f}%", (e, a), textcoords="offset points", xytext=(0, 7),
                            ha="center", fontsize=8)
        for e, v in zip(epochs, loss, strict=False):
            loss_ax.annotate(f"{v:.3f}", (e, v), textcoords="offset points", xytext=(0, 7),
                             ha="center", fontsize=8)
    loss_ax.set_title("Training loss")
    for ax in (acc_ax, loss_ax):
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.margins(x=0.12, y=0.15)
    fig.tight_layout(w_pad=3)
    return to_png(fig)


def search_plot(search: dict[str, Any] | None, max_drop: float | None) -> bytes | None:
    """The level search's path: every trial's validation drop (with a line up to the 95% bound
    that judged it) against its estimated latency on the target, accepted and rejected apart,
    the tolerance as a line and the level that went on to ship starred."""
    trials = [t for t in (search or {}).get("trials") or []
              if t.get("macs")]  # a level deeper than the architecture allows made no model
    if not trials or any(t.get("latency_ms") is None for t in trials):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for accepted, color, label in ((True, PRUNED, "accepted"), (False, ESTIMATE, "rejected")):
        chosen = [t for t in trials if t["accepted"] == accepted]
        ax.scatter([t["latency_ms"] for t in chosen], [t["drop_points"] for t in chosen],
                   color=color, label=label, zorder=3)
        bounded = [t for t in chosen if t.get("drop_bound") is not None]
        if bounded:  # the one-sided 95% bound the tolerance judged, above each point
            ax.vlines([t["latency_ms"] for t in bounded], [t["drop_points"] for t in bounded],
                      [t["drop_bound"] for t in bounded], color=color, alpha=0.6, zorder=2)
    for i, t in enumerate(trials, start=1):
        ax.annotate(f"{i}: {t['level']:.0%}", (t["latency_ms"], t["drop_points"]),
                    textcoords="offset points", xytext=(5, 5), fontsize=8)
    shipped = [t for t in trials if t["level"] == search.get("shipped_level")]
    if shipped and search.get("found"):
        ax.scatter([shipped[0]["latency_ms"]], [shipped[0]["drop_points"]], marker="*", s=260,
                   facecolors="none", edgecolors=DENSE, label="went on to ship", zorder=4)
    if max_drop is not None:
        ax.axhline(max_drop, color=DENSE, linestyle="--", label=f"tolerance {max_drop:g} points")
    ax.set_xlabel("estimated latency on the target (ms)")
    ax.set_ylabel("validation top-1 drop (points)")
    ax.set_title("Level search: every trial (number: order, %: FLOPs level)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=9)
    fig.tight_layout()
    return to_png(fig)
