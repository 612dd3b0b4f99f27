"""`edgeprune explain` (the filter atlas) and `edgeprune score` (per-layer criterion scores):
thin Typer shells over `edgeprune.jobs.explain.explain_model` and
`edgeprune.jobs.score.score_model`, with the same argument names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgeprune import console
from edgeprune.cli.bounds import bounded
from edgeprune.cli.options import (
    AcceleratorOpt,
    CriterionOpt,
    D,
    ModelArg,
    SamplesPerClassOpt,
    ScoreBatchOpt,
    ScoreSamplesOpt,
    model_data_options,
    output_options,
    start,
    with_options,
)

if TYPE_CHECKING:
    from rich.table import Table

    from edgeprune.jobs.score import ScoreResult

def _layers(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


@with_options(model_data_options, output_options)
def explain(
    model: ModelArg = D.model,
    layers: Annotated[str | None, typer.Option(
        help="conv layers to draw, comma-separated qualified names \\[default: all]")] = None,
    criterion: CriterionOpt = "actmax",
    flops_reduction: Annotated[float, bounded(
        "flops_reduction", "mark the filters prune() removes at this FLOPs reduction")] = 0.5,
    keep_ratio: Annotated[float | None, bounded(
        "keep_ratio", "instead: mark all but each layer's top KEEP_RATIO filters")] = None,
    out: Annotated[Path, typer.Option(help="folder for the PNGs and atlas.json")] = Path(
        "atlas"),
    am_steps: Annotated[int, bounded("am_steps", "activation-maximization steps")] = 48,
    score_samples: ScoreSamplesOpt = 256,
    samples_per_class: SamplesPerClassOpt = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out folder")] = False,
    **options: Any,
) -> None:
    """Draw the filter atlas: each conv filter's activation-maximization image.

    Pruned filters are crossed out, redundancy groups framed alike; scores in atlas.json."""
    json_out = start(options)
    from edgeprune.jobs.explain import explain_model

    result = explain_model(model, out, layers=_layers(layers), criterion=criterion,
                           flops_reduction=flops_reduction, keep_ratio=keep_ratio,
                           am_steps=am_steps, samples=score_samples,
                           samples_per_class=samples_per_class, overwrite=overwrite, **options)
    if json_out:
        typer.echo(json.dumps({"out_dir": str(result.out_dir), "json": str(result.json_path),
                               "pngs": {n: str(p) for n, p in result.pngs.items()},
                               "timing_s": result.timing}, indent=2))
        return
    total = sum(result.timing.values())
    typer.echo(f"wrote {len(result.pngs)} layer PNGs and {result.json_path} in {total:.0f} s")


@with_options(model_data_options, output_options)
def score(
    model: ModelArg = D.model,
    criterion: CriterionOpt = D.criterion,
    out: Annotated[Path | None, typer.Option(
        help="save the scores: .json (scores, keep order, invalid filters) or .pt "
        "(tensors)")] = None,
    score_samples: ScoreSamplesOpt = D.score_samples,
    score_batch: ScoreBatchOpt = None,
    samples_per_class: SamplesPerClassOpt = None,
    accelerator: AcceleratorOpt = D.accelerator,
    **options: Any,
) -> None:
    """Score every prunable layer's output channels with a criterion (higher = keep)."""
    json_out = start(options)
    from edgeprune.jobs.score import score_model

    result = score_model(model, criterion, samples=score_samples, score_batch=score_batch,
                         accelerator_choice=accelerator,
                         samples_per_class=samples_per_class, **options)
    if out is not None:
        result.save(out)
        console.info(f"saved {out}")
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=1))
        return
    console.stdout.print(_table(result))


def _table(result: ScoreResult) -> Table:
    """Per layer: channel count, score range and the lowest-scored (first pruned) channels."""
    import torch
    from rich.table import Table

    table = Table("layer", "channels", "min", "median", "max", "lowest channels",
                  title=f"{result.criterion} scores ({result.samples} samples, "
                  f"{result.wall_s:.1f} s; higher = keep)")
    for name, values in result.scores.items():
        lowest = torch.argsort(values, stable=True)[:6].tolist()
        invalid = len(result.redundancy[name].invalid.nonzero()) \
            if name in result.redundancy else 0
        extra = f" ({invalid} invalid)" if invalid else ""
        table.add_row(name, str(len(values)), f"{float(values.min()):.4g}",
                      f"{float(values.median()):.4g}", f"{float(values.max()):.4g}",
                      ", ".join(map(str, lowest)) + extra)
    return table
