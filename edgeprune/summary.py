"""The before/after table `compress` prints at the end."""

from __future__ import annotations

from rich.table import Table

from edgeprune.pipeline import CompressResult


def _ratio(before: float, after: float) -> str:
    return f"{before / after:.2f}x" if after else "-"


def summary_table(result: CompressResult) -> Table:
    """Accuracy, params, MACs and, per format, file size and host latency: dense vs pruned."""
    d, p = result.dense, result.pruned
    table = Table("", "dense", "pruned", "dense/pruned",
                  title=f"edgeprune compress -> {result.run_dir} (target {result.target}, "
                        f"{result.wall_s:.0f} s)")
    table.add_row("top-1 accuracy", f"{d.accuracy * 100:.2f}%", f"{p.accuracy * 100:.2f}%",
                  f"{(p.accuracy - d.accuracy) * 100:+.2f} pts")
    table.add_row("params", f"{d.params / 1e3:,.1f}k", f"{p.params / 1e3:,.1f}k",
                  _ratio(d.params, p.params))
    table.add_row("MACs (FLOPs/2)", f"{d.macs / 1e6:,.2f}M", f"{p.macs / 1e6:,.2f}M",
                  _ratio(d.macs, p.macs))
    for fmt in d.files:
        df, pf = d.files[fmt], p.files.get(fmt)
        if pf is None:
            continue
        table.add_row(f"{fmt} file size", f"{df['size_bytes'] / 1e6:.2f} MB",
                      f"{pf['size_bytes'] / 1e6:.2f} MB", _ratio(df["size_bytes"],
                                                               pf["size_bytes"]))
        for q in ("p50", "p90"):
            table.add_row(f"{fmt} latency {q} ({df['latency_label']})",
                          f"{df['latency_ms'][q]:.3f} ms", f"{pf['latency_ms'][q]:.3f} ms",
                          _ratio(df["latency_ms"][q], pf["latency_ms"][q]))
        table.add_row(f"{fmt} max |diff| vs torch", f"{df['max_abs_diff']:.1e}",
                      f"{pf['max_abs_diff']:.1e}", "")
    return table
