"""Every option more than one command takes, declared once: Typer `Annotated` aliases, and
option sets (`model_data_options`, `output_options`, `compress_options`) that `with_options`
attaches to a command, whose values arrive in its `**options` under the names the jobs take."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from edgeprune import console
from edgeprune.cli.bounds import bounded
from edgeprune.jobs.config import CompressConfig

D = CompressConfig()
"""Every option's default, written once in CompressConfig and read by each flag here."""

MODEL_HELP = ("demo | zoo name (resnet20) | torchvision:NAME | timm:NAME | pkg.mod:factory | "
              "path/to/model.pt")
CRITERIA_HELP = ("interpretability: actmax, lrp, lrp-logit, function, fmcluster, concept; "
                 "baselines: l1, "
                 "l2, fpgm, taylor, hrank, gradient, act-taylor, random (see docs/CRITERIA.md)")

ModelOpt = Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)]
ModelArg = Annotated[str, typer.Argument(help=MODEL_HELP, show_default=False)]
WeightsOpt = Annotated[Path | None, typer.Option(
    exists=True, dir_okay=False, help="state_dict file for --model")]
DatasetOpt = Annotated[str, typer.Option(
    help="auto | fashion-mnist | demo | cifar10 | imagefolder | synthetic")]
DataDirOpt = Annotated[Path | None, typer.Option(help="folder holding the dataset's files")]
InputSizeOpt = Annotated[str | None, typer.Option(help="CxHxW, e.g. 3x32x32")]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="device profile (see "
                                          "'edgeprune targets')")]
CriterionOpt = Annotated[str, typer.Option("--criterion", "-c", help=CRITERIA_HELP)]
ScoreSamplesOpt = Annotated[int, bounded(
    "score_samples", "class-balanced training images the criterion sees")]
ScoreBatchOpt = Annotated[int | None, bounded(
    "score_batch", "reference images per forward pass while scoring: peak memory grows with "
    "it, not with the number of reference images [default: auto, as many as keep one "
    "batch's feature maps under 256 MB, at most 64]")]
SamplesPerClassOpt = Annotated[int | None, bounded(
    "samples_per_class", "instead of --score-samples: exactly N reference images per class "
    "(the LRP paper's data-scarce setting uses 1-10)")]
SeedOpt = Annotated[int, bounded("seed", "random seed (sampled images, initialisations)")]
ScheduleOpt = Annotated[str, typer.Option(
    help="one-shot | iterative (the LRP paper: --step of the filters a step, re-scored) | "
    "layer-by-layer (the activation-maximization paper)")]
StepOpt = Annotated[float, bounded(
    "step", "iterative: share of the prunable filters removed per step")]
StepEpochsOpt = Annotated[float, bounded(
    "step_epochs", "iterative/layer-by-layer: fine-tuning epochs between steps (0 = none)")]
ReestimateOpt = Annotated[bool, typer.Option(
    help="refit the layers that lost inputs by least squares (kernel re-estimation, the "
    "concept paper's recovery step)")]
ResidualStreamOpt = Annotated[str, typer.Option(
    help="prune: a residual stream loses channels together with every layer writing to it | "
    "keep: its width stays and only the convs inside the residual blocks are pruned (the "
    "LRP authors mask each conv on its own)")]
AcceleratorOpt = Annotated[str, typer.Option(
    help="auto | cpu | cuda: where scoring and fine-tuning run (auto: CUDA when present; "
    "export, verification and measurements stay on the CPU)")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress or stage messages")]
TrustCodeOpt = Annotated[bool, typer.Option(
    "--trust-code", help="allow loading what runs code: a pickled model file, or a checkpoint "
    "or --config whose model is an import string or another file (never needed for the demo, "
    "zoo, torchvision: models and edgeprune's own checkpoints of them)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print a machine-readable summary")]

DeviceOpt = Annotated[list[str] | None, typer.Option(
    metavar="URL", help="ssh://user@host[:port] to measure on the device (default: this "
    "machine, plus an estimate for --target); repeat it to measure on a fleet at once, one "
    "connection each (the first device decides what compress ships)")]
ThreadsOpt = Annotated[int | None, bounded(
    "threads", "inference threads (default: the target's; on this machine at most its cores)")]
RemotePythonOpt = Annotated[str, typer.Option(help="Python on the device")]
SshOpt = Annotated[list[str] | None, typer.Option(
    "--ssh-option", help="extra ssh -o KEY=VALUE, repeatable (e.g. IdentityFile=~/.ssh/pi); "
    "also read from $EDGEPRUNE_SSH_OPTIONS")]


def model_data_options(
    weights: WeightsOpt = None,
    dataset: DatasetOpt = D.dataset,
    data_dir: DataDirOpt = None,
    input_size: InputSizeOpt = None,
    mean: Annotated[str | None, typer.Option(
        help="per-channel normalization mean, e.g. 0.485,0.456,0.406 (default: the "
        "checkpoint's, else the dataset's; imagefolder: computed from its training images)")
    ] = None,
    std: Annotated[str | None, typer.Option(
        help="per-channel normalization std, with --mean")] = None,
    skip_bad_images: Annotated[bool, typer.Option(
        help="imagefolder: decode every file first and leave out (and record) the ones that "
        "fail, instead of stopping at the first")] = D.skip_bad_images,
    workers: Annotated[int | None, bounded(
        "workers", "processes decoding image files (imagefolder) [default: up to 4]")] = None,
    seed: SeedOpt = D.seed,
    trust_code: TrustCodeOpt = False,
) -> None:
    """The options that say which weights and data a model is loaded with, named as every job
    takes them."""


def output_options(quiet: QuietOpt = False, json_out: JsonOpt = False) -> None:
    """--quiet and --json, which every command that reports takes (see `start`)."""


def compress_options(
    target: TargetOpt = D.target,
    model: ModelOpt = D.model,
    score_samples: ScoreSamplesOpt = D.score_samples,
    score_batch: ScoreBatchOpt = D.score_batch,
    accelerator: AcceleratorOpt = D.accelerator,
    samples_per_class: SamplesPerClassOpt = D.samples_per_class,
    schedule: ScheduleOpt = D.schedule,
    step: StepOpt = D.step,
    step_epochs: StepEpochsOpt = D.step_epochs,
    reestimate: ReestimateOpt = D.reestimate,
    residual_stream: ResidualStreamOpt = D.residual_stream,
    bn_recalibration: Annotated[int, bounded(
        "bn_recalibration", "re-estimate BatchNorm statistics on this many training images "
        "after pruning (no weight update; 0 = off); use it with --epochs 0")] = D.bn_recalibration,
    epochs: Annotated[float | None, bounded(
        "epochs", "fine-tuning epochs (default: enough to see 360k images, at most 60; a "
        "search trial cut from an accepted trial: 120k; 0 = no fine-tuning)")] = D.epochs,
    finetune: Annotated[str, typer.Option(
        help="fine-tuning loss: distill (knowledge distillation from the dense model) | ce "
        "(cross-entropy on the labels, as the criteria papers fine-tune)")] = D.finetune,
    lr: Annotated[float, bounded("lr", "fine-tuning peak learning rate")] = D.lr,
    batch_size: Annotated[int, bounded("batch_size", "fine-tuning batch size")] = D.batch_size,
    formats: Annotated[str, typer.Option(
        help="export formats, comma-separated")] = ",".join(D.formats),
    verify: Annotated[bool, typer.Option(help="check every export against PyTorch")] = D.verify,
    precision: Annotated[str, typer.Option(
        help="auto | fp32 | fp16 | int8: the precisions tried (auto: the target's list, e.g. "
        "int8 then fp32); the fastest file within --max-drop ships")] = D.precision,
    max_drop: Annotated[float, bounded(
        "max_drop", "accuracy tolerance: top-1 points a shipped file may lose against dense "
        "fp32, judged by the one-sided 95% upper bound of its drop on the validation images")
    ] = D.max_drop,
    qat_epochs: Annotated[float | None, bounded(
        "qat_epochs", "when int8 post-training quantization loses more than --max-drop, this many "
        "epochs of quantization-aware training recover it (default: enough to see 15k "
        "images, at most 10; 0 = off; TFLite targets)")] = D.qat_epochs,
    device: DeviceOpt = D.device,
    ssh_option: SshOpt = D.ssh_option,
    remote_python: RemotePythonOpt = D.remote_python,
    threads: Annotated[int | None, bounded(
        "threads", "inference threads [default: the target's; on this machine at most its "
        "cores]")] = D.threads,
    bench_runs: Annotated[int, bounded(
        "bench_runs", "timed runs per model file (at least)")] = D.bench_runs,
    bench_seconds: Annotated[float, bounded(
        "bench_seconds", "timed seconds per model file (at least)")] = D.bench_seconds,
    bench_rounds: Annotated[int, bounded(
        "bench_rounds", "the files are timed in turn in this many rounds, so ratios hold "
        "under load")] = D.bench_rounds,
    eval_limit: Annotated[int | None, bounded(
        "eval_limit", "evaluate on this many test images only")] = D.eval_limit,
    runs_dir: Annotated[Path, typer.Option(help="where run folders go")] = Path(D.runs_dir),
    config: Annotated[Path | None, typer.Option(
        "--config", help="TOML file of compress options (keys = option names); flags given on "
        "the command line override it")] = None,
) -> None:
    """The options `compress` and `sweep` share (with the model, data and output options): one
    declaration, so the two cannot drift."""


def start(options: dict[str, Any]) -> bool:
    """Apply --quiet and take the output options out of `options`, so that what remains
    passes straight to the job; returns --json."""
    console.set_quiet(options.pop("quiet"))
    return options.pop("json_out")


def config_from_cli(ctx: typer.Context, config_path: Path | str | None) -> CompressConfig:
    """The CompressConfig of a CLI command whose parameters are named like its fields: the
    --config file (if given) with only the flags given explicitly on top; without a file,
    every flag's value (defaults included)."""
    from edgeprune.jobs.config import FIELDS, check_file_trust, load_config, merge

    values = {k: v for k, v in ctx.params.items() if k in FIELDS}
    if config_path is None:
        return merge({}, values)
    file_options = load_config(config_path)
    explicit = {k: v for k, v in values.items() if _explicit(ctx, k)}
    if not ctx.params.get("trust_code"):  # nothing in a file imports, runs or connects
        check_file_trust(file_options, explicit, config_path)
    return merge(file_options, explicit)


def _explicit(ctx: typer.Context, name: str) -> bool:
    """Whether a flag's value came from the user rather than its default. Compared by name:
    Typer >= 0.22 carries its own copy of click, whose ParameterSource is another enum."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


Command = TypeVar("Command", bound=Callable[..., Any])


def with_options(*templates: Callable[..., Any]) -> Callable[[Command], Command]:
    """Give a command the parameters of each template as well as its own (a parameter the
    command declares itself wins): Typer reads the command's signature, so they become
    options, and their values arrive in the command's `**options`. The command's own
    parameters come first in --help."""

    def attach(command: Command) -> Command:
        own = inspect.signature(command, eval_str=True)
        params = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
        names = {p.name for p in params}
        for template in templates:
            for p in inspect.signature(template, eval_str=True).parameters.values():
                if p.name not in names:
                    params.append(p.replace(kind=p.KEYWORD_ONLY))
                    names.add(p.name)
        command.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        return command

    return attach
