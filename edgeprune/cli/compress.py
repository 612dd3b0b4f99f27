"""`edgeprune compress` and `edgeprune sweep`: thin Typer shells over
`edgeprune.jobs.compress.compress` and `edgeprune.jobs.sweep.run_sweep`, sharing one option set
(`options.compress_options`) and the TOML config (`--config`), plus the tables they print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgeprune import console
from edgeprune.cli.bounds import bounded
from edgeprune.cli.options import (
    CriterionOpt,
    D,
    compress_options,
    config_from_cli,
    model_data_options,
    output_options,
    start,
    with_options,
)
from edgeprune.errors import EdgepruneError

if TYPE_CHECKING:
    from rich.console import Group
    from rich.table import Table

    from edgeprune.jobs.compress import CompressResult
    from edgeprune.jobs.sweep import SweepResult


@with_options(compress_options, model_data_options, output_options)
def compress(
    ctx: typer.Context,
    criterion: CriterionOpt = D.criterion,
    flops_reduction: Annotated[float | None, bounded(
        "flops_reduction", "pin one pruning level: the share of FLOPs to remove (0.5 = "
        "half) [default: search the deepest cut whose shipped file stays within --max-drop "
        "on validation data, see --search-budget]")] = D.flops_reduction,
    search_budget: Annotated[float | None, bounded(
        "search_budget", "fine-tuning epochs the level search may spend on its trials "
        "(QAT included) [default: four trials' fine-tuning: two cut from the dense model, "
        "fine-tuned as a pinned run would be, and two cut from accepted trials, fine-tuned a "
        "third as long]")
    ] = D.search_budget,
    search_minutes: Annotated[float | None, bounded(
        "search_minutes", "a wall-time guard on the level search: no trial starts after its "
        "trials have taken this many minutes [default: none, --search-budget alone]")
    ] = D.search_minutes,
    global_ranking: Annotated[bool, typer.Option(
        "--global-ranking/--uniform",
        help="rank channels across layers, or cut every layer by the same ratio")
    ] = D.global_ranking,
    latency_ms: Annotated[float | None, bounded(
        "latency_ms", "a second constraint: ship the deepest cut within --max-drop that also meets "
        "this latency on the target (measured with --device, else the target's roofline "
        "estimate); when none does, the miss is stated")] = None,
    name: Annotated[str | None, typer.Option(help="run name (default: MODEL-TARGET-"
                                              "CRITERION-PERCENT)")] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default: RUNS_DIR/NAME)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run folder")] = False,
    **options: Any,
) -> None:
    """Score, prune, fine-tune, export and benchmark a model for a target device."""
    json_out = start(options)
    from edgeprune.jobs.compress import compress as run_compress

    cfg = config_from_cli(ctx, options["config"])  # the file's options, then the flags given
    result = run_compress(cfg, overwrite=overwrite, trust_code=options["trust_code"])
    if result is None:  # a torchrun process other than rank 0: rank 0 reports
        return
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        console.stdout.print(summary(result))
    if result.shipped is None:
        raise EdgepruneError(f"nothing shipped: {result.reason}; every file and figure is in "
                             f"{result.run_dir}")


@with_options(compress_options, model_data_options, output_options)
def sweep(
    ctx: typer.Context,
    criteria: Annotated[str, typer.Option(help="criteria to compare, comma-separated")] = "lrp,l1",
    flops: Annotated[str, typer.Option(
        help="FLOPs reductions to try, comma-separated (0.5 = half)")] = "0.3,0.5,0.7",
    name: Annotated[str | None, typer.Option(help="sweep folder name (default: MODEL-TARGET-"
                                              "sweep)")] = None,
    out: Annotated[Path | None, typer.Option(help="sweep folder (default: "
                                              "RUNS_DIR/NAME)")] = None,
    overwrite: Annotated[bool, typer.Option(help="redo cells that are already finished")] = False,
    **options: Any,
) -> None:
    """Compress once per criterion x FLOPs level and compare them (Pareto plot and table).

    Running the same command again resumes an interrupted sweep."""
    json_out = start(options)
    from edgeprune.jobs.sweep import parse_flops, parse_list, run_sweep

    base = config_from_cli(ctx, options["config"])
    result = run_sweep(base, parse_list(criteria, "criteria"), parse_flops(flops),
                       overwrite=overwrite, trust_code=options["trust_code"])
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    console.stdout.print(sweep_table(result))
    console.info(f"wrote {', '.join(str(p) for p in result.files.values())}")


def _ratio(before: float, after: float) -> str:
    return f"{before / after:.2f}x" if after else "-"


def summary(result: CompressResult) -> Group:
    """What compress prints: dense vs pruned, every candidate file, and what was shipped."""
    from rich.console import Group

    shipped = result.shipped
    line = (f"[bold]shipped:[/] {shipped['path']} ({shipped['name']}): {result.reason}"
            if shipped else f"[bold red]nothing shipped:[/] {result.reason}")
    return Group(summary_table(result), candidates_table(result), line)


def candidates_table(result: CompressResult) -> Table:
    """One row per candidate file: test accuracy, its drop, the validation drop that decided
    (with its bound), size, p50 latency, speedup over dense fp32 (with its lowest-highest
    round, the files timed interleaved) and the target estimate; '*' marks the shipped one."""
    from rich.table import Table

    from edgeprune.report.numbers import decided_drop_text

    budget = f", budget {result.latency_budget_ms:g} ms" if result.latency_budget_ms else ""
    where = result.candidates[0]["latency_label"] if result.candidates else ""
    decided = f"; decided by {result.decided_by}" if result.decided_by else ""
    table = Table("", "candidate", "top-1", "vs dense", "val. drop (bound)", "MB", "p50 ms",
                  "speedup",
                  f"{result.target} est.", "verdict",
                  title=f"candidates: p50 {where}, interleaved; tolerance "
                  f"{result.max_drop:g} points{budget}{decided}")
    for c in result.candidates:
        mark = "*" if result.shipped and c["path"] == result.shipped["path"] else ""
        verdict = "ok" if c["within_tolerance"] else "inaccurate"
        if c.get("meets_budget") is False:
            verdict += ", slow"
        sp = c["speedup"]
        table.add_row(mark, c["name"], f"{c['accuracy'] * 100:.2f}%",
                      f"{0.0 - c['drop_points']:+.2f}", decided_drop_text(c),
                      f"{c['size_bytes'] / 1e6:.2f}",
                      f"{c['latency_ms']['p50']:.3f}",
                      f"{sp['value']:.2f}x ({sp['low']:.1f}-{sp['high']:.1f})",
                      f"~{c['estimate_ms']:.2f} ms ({c['estimate_speedup']:.1f}x)"
                      if c.get("estimate_speedup") else f"~{c['estimate_ms']:.2f} ms", verdict)
    for f in result.failed:
        table.add_row("", f["name"], "-", "-", "-", "-", "-", "-", "-",
                      f"failed at {f['stage']}: {f['reason']}")
    return table


def summary_table(result: CompressResult) -> Table:
    """Accuracy, params, MACs and, per format, the fp32 file's size and latency: dense vs
    pruned."""
    from rich.table import Table

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


def sweep_table(result: SweepResult) -> Table:
    """One row per cell; '*' marks the Pareto fronts."""
    from rich import box
    from rich.table import Table

    fmt = result.latency_format
    ran = sum(c.status == "ran" for c in result.cells)
    table = Table(title=f"sweep {result.sweep_dir} ({ran} ran, {len(result.cells) - ran} "
                  "already finished); * = on the Pareto front", box=box.SIMPLE_HEAD)
    for col in ("cell", "FLOPs cut", "top-1", "vs dense", "MMACs",
                f"{fmt} p50 ms" if fmt else "p50 ms", "front: latency", "front: FLOPs"):
        table.add_column(col, justify="left" if col == "cell" else "right")
    for r in result.rows:
        cut = "-" if r["flops_reduction"] is None else f"{r['flops_reduction']:.1%}"
        p50 = r["p50_ms"].get(fmt) if fmt else None
        table.add_row(r["cell"], cut, f"{r['accuracy'] * 100:.2f}%",
                      f"{(r['accuracy'] - r['dense_accuracy']) * 100:+.2f} pts",
                      f"{r['macs'] / 1e6:.2f}", "-" if p50 is None else f"{p50:.3f}",
                      "*" if r["pareto_latency"] else "", "*" if r["pareto_flops"] else "")
    return table
