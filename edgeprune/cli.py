"""The `edgeprune` command: a thin Typer shell over the library's public functions."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from edgeprune import console
from edgeprune.errors import EdgepruneError

app = typer.Typer(help="Prune, export and benchmark PyTorch image classifiers for edge devices.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

ModelOpt = Annotated[str, typer.Option(
    "--model", "-m", help="demo | zoo name (resnet20) | torchvision:NAME | pkg.mod:factory | "
    "path/to/model.pt")]
WeightsOpt = Annotated[Path | None, typer.Option(help="state_dict file for --model")]
DatasetOpt = Annotated[str, typer.Option(
    help="auto | fashion-mnist | demo | cifar10 | imagefolder | synthetic")]
DataDirOpt = Annotated[Path | None, typer.Option(help="folder holding the dataset's files")]
InputSizeOpt = Annotated[str | None, typer.Option(help="CxHxW, e.g. 3x32x32")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress or stage messages")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print a machine-readable summary")]
ModelArg = Annotated[str, typer.Argument(
    help="demo | zoo name (resnet20) | torchvision:NAME | pkg.mod:factory | path/to/model.pt",
    show_default=False)]
CRITERIA_HELP = ("interpretability: actmax, lrp, function, fmcluster, concept; baselines: l1, "
                 "l2, fpgm, taylor, hrank, gradient, act-taylor, random (see docs/CRITERIA.md)")
CriterionOpt = Annotated[str, typer.Option("--criterion", "-c", help=CRITERIA_HELP)]
ScoreSamplesOpt = Annotated[int, typer.Option(
    help="class-balanced training images the criterion sees")]
SamplesPerClassOpt = Annotated[int | None, typer.Option(
    help="instead of --score-samples: exactly N reference images per class (the LRP paper's "
    "data-scarce setting uses 1-10)")]
BnRecalibrationOpt = Annotated[int, typer.Option(
    help="re-estimate BatchNorm statistics on this many training images after pruning "
    "(no weight update; 0 = off); use it with --epochs 0")]
FinetuneEpochsOpt = Annotated[float | None, typer.Option(
    help="fine-tuning epochs (default: enough to see 120k images, at most 10; 0 = no "
    "fine-tuning)")]
FinetuneLrOpt = Annotated[float, typer.Option(help="fine-tuning peak learning rate")]
FinetuneBatchOpt = Annotated[int, typer.Option(help="fine-tuning batch size")]
FormatsOpt = Annotated[str, typer.Option(help="export formats, comma-separated")]
VerifyOpt = Annotated[bool, typer.Option(help="check every export against PyTorch")]
BenchRunsOpt = Annotated[int, typer.Option(help="timed runs per model file (at least)")]
BenchSecondsOpt = Annotated[float, typer.Option(
    help="timed seconds per model file (at least)")]
EvalLimitOpt = Annotated[int | None, typer.Option(
    help="evaluate on this many test images only")]
RunsDirOpt = Annotated[Path, typer.Option(help="where run folders go")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="TOML file of compress options (keys = option names); flags given on the "
    "command line override it")]


@app.callback()
def _root() -> None:
    """Prune, export and benchmark PyTorch image classifiers for edge devices."""


def _setup(quiet: bool) -> None:
    console.set_quiet(quiet)


@app.command()
def train(
    model: ModelOpt = "democnn",
    out: Annotated[Path, typer.Option(help="checkpoint to write")] = Path("model.pt"),
    weights: WeightsOpt = None,
    dataset: DatasetOpt = "fashion-mnist",
    data_dir: DataDirOpt = None,
    input_size: InputSizeOpt = None,
    epochs: Annotated[float, typer.Option(help="training epochs")] = 20,
    lr: Annotated[float, typer.Option(help="peak learning rate (one-cycle)")] = 0.1,
    batch_size: Annotated[int, typer.Option(help="batch size")] = 128,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a model from scratch (or from --weights) and save an edgeprune checkpoint."""
    _setup(quiet)
    from edgeprune.training import train_model

    result = train_model(model=model, out=out, weights=weights, dataset=dataset,
                         data_dir=data_dir, input_size=input_size, epochs=epochs, lr=lr,
                         batch_size=batch_size, seed=seed, overwrite=overwrite)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(f"saved {out}: test top-1 {result['test_acc'] * 100:.2f}% after "
                   f"{result['epochs']} epochs in {result['wall_s']:.0f} s")


TargetOpt = Annotated[str, typer.Option("--target", "-t", help="device profile (see "
                                          "'edgeprune targets')")]


@app.command()
def compress(
    ctx: typer.Context,
    target: TargetOpt = "rpi4",
    model: ModelOpt = "demo",
    weights: WeightsOpt = None,
    input_size: InputSizeOpt = None,
    dataset: DatasetOpt = "auto",
    data_dir: DataDirOpt = None,
    criterion: CriterionOpt = "lrp",
    flops_reduction: Annotated[float, typer.Option(
        help="share of FLOPs to remove (0.5 = half)")] = 0.5,
    global_ranking: Annotated[bool, typer.Option(
        "--global-ranking/--uniform",
        help="rank channels across layers, or cut every layer by the same ratio")] = False,
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
    name: Annotated[str | None, typer.Option(help="run name (default: MODEL-TARGET-"
                                              "CRITERION-PERCENT)")] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default: RUNS_DIR/NAME)")] = None,
    runs_dir: RunsDirOpt = Path("edgeprune-runs"),
    config: ConfigOpt = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run folder")] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Score, prune, fine-tune, export and benchmark a model for a target device."""
    _setup(quiet)
    from edgeprune.config import config_from_cli
    from edgeprune.pipeline import compress as run_compress

    cfg = config_from_cli(ctx, config)  # the file's options, then the flags given explicitly
    result = run_compress(cfg, overwrite=overwrite)
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        from edgeprune.summary import summary_table

        console.stdout.print(summary_table(result))


@app.command()
def targets(json_out: JsonOpt = False) -> None:
    """List the device profiles --target accepts."""
    from dataclasses import asdict

    from rich.table import Table

    from edgeprune.devices.targets import list_targets

    profiles = list_targets()
    if json_out:
        typer.echo(json.dumps([asdict(p) for p in profiles], indent=2))
        return
    table = Table("target", "cpu", "cores", "SIMD width", "RAM", "runtime", "threads",
                  "formats", "peak GFLOPS", title="device profiles")
    for p in profiles:
        table.add_row(p.name, p.cpu, str(p.cores), str(p.simd_width), f"{p.ram_mb} MB",
                      p.runtime, str(p.threads), ",".join(p.formats), f"{p.peak_gflops:g}")
    console.stdout.print(table)


from edgeprune.cli_bench import bench  # noqa: E402 - commands live in their own modules
from edgeprune.cli_export import export  # noqa: E402

app.command()(export)
app.command()(bench)

from edgeprune.cli_prune import prune  # noqa: E402
from edgeprune.cli_report import report, sweep  # noqa: E402

app.command()(prune)

app.command()(report)
app.command()(sweep)

from edgeprune.cli_explain import explain, score  # noqa: E402

app.command()(score)
app.command()(explain)


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        app()
    except EdgepruneError as e:
        console.stderr.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
