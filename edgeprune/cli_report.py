"""`edgeprune report` and `edgeprune sweep`: thin Typer shells over `edgeprune.report.build_report`
and `edgeprune.sweep.run_sweep`. Registered in cli.py with `app.command()(report)` and
`app.command()(sweep)`; import edgeprune.cli before this module (it takes the shared option
types from there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgeprune import console
from edgeprune.cli import (
    BenchRunsOpt,
    BenchSecondsOpt,
    BnRecalibrationOpt,
    ConfigOpt,
    DataDirOpt,
    DatasetOpt,
    EvalLimitOpt,
    FinetuneBatchOpt,
    FinetuneEpochsOpt,
    FinetuneLrOpt,
    FormatsOpt,
    InputSizeOpt,
    JsonOpt,
    ModelOpt,
    QuietOpt,
    RunsDirOpt,
    SamplesPerClassOpt,
    ScoreSamplesOpt,
    TargetOpt,
    VerifyOpt,
    WeightsOpt,
)

if TYPE_CHECKING:
    from rich.table import Table

    from edgeprune.sweep import SweepResult

RunDirArg = Annotated[Path, typer.Argument(help="folder of an `edgeprune compress` run",
                                           show_default=False)]


def report(
    run_dir: RunDirArg,
    out: Annotated[Path | None, typer.Option(
        help="folder for report.html and report.json (default: the run folder)")] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Rebuild report.html (self-contained page) and report.json from a run folder."""
    console.set_quiet(quiet)
    from edgeprune.report import build_report
    from edgeprune.report.build import refresh_manifest

    html_path, json_path = build_report(run_dir, out)
    if out is None or Path(out).resolve() == Path(run_dir).resolve():
        refresh_manifest(run_dir, (html_path, json_path))
    if json_out:
        typer.echo(json.dumps({"html": str(html_path), "json": str(json_path)}, indent=2))
    else:
        typer.echo(f"wrote {html_path} ({html_path.stat().st_size / 1e3:.0f} kB) and "
                   f"{json_path.name}")


def sweep(
    ctx: typer.Context,
    criteria: Annotated[str, typer.Option(help="criteria to compare, comma-separated")] = "lrp,l1",
    flops: Annotated[str, typer.Option(
        help="FLOPs reductions to try, comma-separated (0.5 = half)")] = "0.3,0.5,0.7",
    target: TargetOpt = "rpi4",
    model: ModelOpt = "demo",
    weights: WeightsOpt = None,
    input_size: InputSizeOpt = None,
    dataset: DatasetOpt = "auto",
    data_dir: DataDirOpt = None,
    score_samples: ScoreSamplesOpt = 500,
    samples_per_class: SamplesPerClassOpt = None,
    bn_recalibration: BnRecalibrationOpt = 0,
    epochs: FinetuneEpochsOpt = None,
    lr: FinetuneLrOpt = 0.01,
    batch_size: FinetuneBatchOpt = 128,
    formats: FormatsOpt = "onnx,tflite",
    verify: VerifyOpt = True,
    bench_runs: BenchRunsOpt = 50,
    bench_seconds: BenchSecondsOpt = 1.0,
    eval_limit: EvalLimitOpt = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    name: Annotated[str | None, typer.Option(help="sweep folder name (default: MODEL-TARGET-"
                                              "sweep)")] = None,
    out: Annotated[Path | None, typer.Option(help="sweep folder (default: "
                                              "RUNS_DIR/NAME)")] = None,
    runs_dir: RunsDirOpt = Path("edgeprune-runs"),
    config: ConfigOpt = None,
    overwrite: Annotated[bool, typer.Option(help="redo cells that are already finished")] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Compress once per criterion x FLOPs level and compare them (Pareto plot and table).

    Running the same command again resumes an interrupted sweep."""
    console.set_quiet(quiet)
    from edgeprune.config import config_from_cli
    from edgeprune.sweep import parse_flops, parse_list, run_sweep

    base = config_from_cli(ctx, config)
    result = run_sweep(base, parse_list(criteria, "criteria"), parse_flops(flops),
                       overwrite=overwrite)
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    console.stdout.print(sweep_table(result))
    console.info(f"wrote {', '.join(str(p) for p in result.files.values())}")


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
