"""`edgeprune prune`: a thin Typer shell over `edgeprune.jobs.prune.prune_file` (same
argument names)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeprune import console
from edgeprune.cli.bounds import bounded
from edgeprune.cli.options import (
    CriterionOpt,
    D,
    ModelArg,
    ReestimateOpt,
    ResidualStreamOpt,
    SamplesPerClassOpt,
    ScheduleOpt,
    ScoreBatchOpt,
    StepEpochsOpt,
    StepOpt,
    TargetOpt,
    model_data_options,
    output_options,
    start,
    with_options,
)


@with_options(model_data_options, output_options)
def prune(
    model: ModelArg = D.model,
    target: TargetOpt = D.target,
    criterion: CriterionOpt = D.criterion,
    score_samples: Annotated[int, bounded(
        "score_samples", "class-balanced training images the criterion (and --reestimate) sees")
    ] = D.score_samples,
    score_batch: ScoreBatchOpt = None,
    samples_per_class: SamplesPerClassOpt = None,
    flops_reduction: Annotated[float | None, bounded(
        "flops_reduction", "goal: share of FLOPs to remove (default 0.5 when no other "
        "goal)")] = None,
    params_reduction: Annotated[float | None, bounded(
        "params_reduction", "goal: share of parameters to remove")] = None,
    latency_ms: Annotated[float | None, bounded(
        "latency_ms", "goal: latency budget on --target, predicted by its roofline "
        "profile")] = None,
    layer_ratios: Annotated[str | None, typer.Option(
        help="goal: per-layer ratios, NAME=RATIO,... (e.g. layer1.0.conv1=0.5)")] = None,
    threads: Annotated[int | None, bounded(
        "threads", "threads the latency is predicted and measured at [default: the target's]")
    ] = None,
    round_to: Annotated[int | None, bounded(
        "round_to", "channel counts rounded to this multiple [default: the target's SIMD width]")
    ] = None,
    min_channels: Annotated[int | None, bounded(
        "min_channels", "no layer keeps fewer channels [default: --round-to]")] = None,
    uniform: Annotated[bool, typer.Option(
        "--uniform/--global", help="the same ratio in every layer, or one global ranking")
    ] = False,
    schedule: ScheduleOpt = D.schedule,
    step: StepOpt = D.step,
    step_epochs: StepEpochsOpt = 0.0,
    lr: Annotated[float, bounded("lr", "fine-tuning peak learning rate")] = D.lr,
    reestimate: ReestimateOpt = False,
    residual_stream: ResidualStreamOpt = D.residual_stream,
    measure_on: Annotated[str | None, typer.Option(
        help="local | ssh://user@host[:port]: export and time the dense and the pruned model "
        "there; with --latency-ms the dense time calibrates the prediction (so measure on "
        "the --target device, or locally when --target describes this machine)")] = None,
    out: Annotated[Path, typer.Option(help="pruned checkpoint to write")] = Path("pruned.pt"),
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
    **options: Any,
) -> None:
    """Prune a model for a target: to a FLOPs, parameter or latency goal, or per-layer ratios."""
    json_out = start(options)
    from edgeprune.jobs.prune import prune_file

    summary = prune_file(
        model=model, criterion=criterion, score_samples=score_samples, score_batch=score_batch,
        samples_per_class=samples_per_class,
        target=target, flops_reduction=flops_reduction, params_reduction=params_reduction,
        latency_ms=latency_ms, layer_ratios=layer_ratios, threads=threads, round_to=round_to,
        min_channels=min_channels, uniform=uniform, schedule=schedule, step=step,
        step_epochs=step_epochs, lr=lr, reestimate=reestimate, residual_stream=residual_stream,
        measure_on=measure_on, out=out,
        overwrite=overwrite, **options)
    if json_out:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    console.stdout.print(summary_table(summary))


def summary_table(summary: dict):
    """Before/after figures, predicted next to measured latency where both exist."""
    from rich.table import Table

    table = Table("", "dense", "pruned", title=f"pruned for {summary['target']}: "
                  f"{summary['goal']}, {summary['schedule']} -> {summary['out']}")
    table.add_row("MACs", f"{summary['macs_before'] / 1e6:.2f}M",
                  f"{summary['macs_after'] / 1e6:.2f}M (-{summary['flops_reduction']:.1%})")
    table.add_row("params", f"{summary['params_before'] / 1e3:.1f}k",
                  f"{summary['params_after'] / 1e3:.1f}k (-{summary['params_reduction']:.1%})")
    lat = summary.get("latency")
    if lat:
        table.add_row(f"predicted ms ({lat['target']}, {lat['threads']} thr)",
                      f"{lat['predicted_before_ms']:.3f}", f"{lat['predicted_after_ms']:.3f}")
    measured = summary.get("measured")
    if measured:
        table.add_row(f"measured p50 ms ({measured['on']}, {measured['format']}, "
                      f"{measured['threads']} thr)", f"{measured['dense_ms']:.3f}",
                      f"{measured['pruned_ms']:.3f}")
    others = {k: v for k, v in summary["protected_reasons"].items()
              if not v.startswith("classifier")}
    if others:
        table.add_row("protected", "", "\n".join(f"{k}: {v}" for k, v in others.items()))
    return table
