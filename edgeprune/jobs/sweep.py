"""`edgeprune sweep`: compress once per (criterion, FLOPs reduction) cell, then compare the cells
in a Pareto plot (accuracy vs latency, accuracy vs FLOPs) and a table.

One sweep folder holds one published compress run folder per cell (`<criterion>-<percent>`),
`scores/<criterion>.pt` (the criterion's scores, computed once), `sweep.json`, `sweep.md` and
`pareto.png`. A cell whose run folder is already published is skipped, so running the same
command again resumes an interrupted sweep; an interrupted cell resumes inside compress.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.console import info
from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write_bytes, atomic_write_text, sha256_file
from edgeprune.jobs.compress import compress
from edgeprune.jobs.config import (
    MAX_FLOPS_REDUCTION,
    CompressConfig,
    config_from_dict,
    dump_config,
)
from edgeprune.models import check_model_ref

SCHEMA = "edgeprune.jobs.sweep/1"
# what a criterion's scores depend on; the FLOPs level and everything after scoring do not
SCORE_KEYS = ("model", "weights", "input_size", "dataset", "data_dir", "criterion",
              "score_samples", "seed")


@dataclass
class Cell:
    """One grid point and its run folder; `status` is 'ran', 'skipped' (found finished) or
    'failed' (with the one-line `error`)."""

    criterion: str
    flops_reduction: float
    run_dir: Path
    status: str = "pending"
    scores_reused: bool = False
    error: str | None = None

    @property
    def name(self) -> str:
        return self.run_dir.name


@dataclass
class SweepResult:
    """The sweep folder, its cells and the comparison table (one row per cell)."""

    sweep_dir: Path
    cells: list[Cell]
    rows: list[dict[str, Any]]
    latency_format: str | None
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"sweep_dir": str(self.sweep_dir), "latency_format": self.latency_format,
                "cells": [{"criterion": c.criterion, "flops_reduction": c.flops_reduction,
                           "run_dir": str(c.run_dir), "status": c.status,
                           "scores_reused": c.scores_reused, "error": c.error}
                          for c in self.cells],
                "rows": self.rows, "files": {k: str(v) for k, v in self.files.items()}}


def parse_list(text: str | Sequence[Any], what: str) -> list[str]:
    """'a,b , c' (or a list) -> ['a', 'b', 'c']; an error when empty."""
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else \
        [str(s).strip() for s in text]
    items = [s for s in items if s]
    if not items:
        raise EdgepruneError(f"--{what} is empty; give a comma-separated list")
    return items


def parse_flops(text: str | Sequence[Any]) -> list[float]:
    """FLOPs reductions in (0, 0.95), e.g. '0.3,0.5,0.7'."""
    values = []
    for item in parse_list(text, "flops"):
        try:
            value = float(item)
        except ValueError:
            raise EdgepruneError(f"--flops: {item!r} is not a number (e.g. 0.3,0.5)") from None
        if not 0.0 < value < MAX_FLOPS_REDUCTION:
            raise EdgepruneError(f"--flops: {value:g} must be between 0 and "
                                 f"{MAX_FLOPS_REDUCTION} (the share of FLOPs to remove)")
        values.append(value)
    return sorted(set(values))


def cell_name(criterion: str, flops_reduction: float) -> str:
    return f"{criterion}-{flops_reduction * 100:g}"


def default_sweep_dir(base: CompressConfig) -> Path:
    """`out`, else RUNS_DIR/NAME, else RUNS_DIR/MODEL-TARGET-sweep."""
    if base.out:
        return Path(base.out)
    name = base.name or f"{base.model_tag()}-{base.target_tag()}-sweep"
    return Path(base.runs_dir) / name


def plan(base: CompressConfig, criteria: Sequence[str], flops: Sequence[float],
         sweep_dir: Path) -> list[Cell]:
    """The grid, criteria in the given order, FLOPs levels ascending."""
    from edgeprune.criteria import get_criterion

    for c in criteria:
        get_criterion(c)  # unknown names fail before anything runs
    return [Cell(c, f, sweep_dir / cell_name(c, f)) for c in dict.fromkeys(criteria)
            for f in sorted(set(flops))]


def cell_config(base: CompressConfig, cell: Cell, index: int = 0) -> CompressConfig:
    """The compress options of the `index`-th cell; with several devices (a fleet of like
    boards) the cells take them in turn, each cell measured on one."""
    devices = base.device or ()
    device = (devices[index % len(devices)],) if len(devices) > 1 else base.device
    return dataclasses.replace(base, criterion=cell.criterion,
                               flops_reduction=cell.flops_reduction, name=None,
                               out=str(cell.run_dir), device=device)


def is_finished(run_dir: Path) -> bool:
    """A published compress run: only complete runs are ever renamed into place."""
    return (run_dir / "manifest.json").is_file() and (run_dir / "summary.json").is_file()


def _check_same(cell: Cell, cfg: CompressConfig) -> None:
    """A finished cell is reused only if it was made with the same options."""
    try:
        old = config_from_dict(json.loads((cell.run_dir / "config.json").read_text()))
    except (OSError, ValueError, EdgepruneError):
        raise EdgepruneError(f"{cell.run_dir} holds a run without a readable config.json; "
                             "delete it or pass --overwrite") from None
    diff = [f.name for f in dataclasses.fields(cfg) if getattr(old, f.name) != getattr(cfg,
                                                                                       f.name)]
    if diff:
        shown = ", ".join(f"{k} {getattr(old, k)!r} vs {getattr(cfg, k)!r}" for k in diff[:3])
        raise EdgepruneError(f"{cell.run_dir} was made with other options ({shown}); pass "
                             "--overwrite to redo the sweep or choose another --name/--out")


def _accepts_scores(fn: Callable[..., Any]) -> bool:
    """Whether `compress` takes precomputed scores (the hook that shares scoring work)."""
    return "scores" in inspect.signature(fn).parameters


def _load_scores(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def scores_key(cfg: CompressConfig) -> dict[str, Any]:
    """The options a criterion's scores depend on, plus the checksum of the model files."""
    key: dict[str, Any] = {k: getattr(cfg, k) for k in SCORE_KEYS}
    for name in ("model", "weights"):
        path = Path(getattr(cfg, name) or "")
        if path.suffix and path.is_file():
            key[f"{name}_sha256"] = sha256_file(path)
    return key


def _cached_scores(cache: Path, cfg: CompressConfig) -> dict[str, Any] | None:
    """The cached scores if they were computed with the options `cfg` scores with."""
    meta = cache.with_suffix(".json")
    if not (cache.is_file() and meta.is_file()):
        return None
    try:
        if json.loads(meta.read_text()) != scores_key(cfg):
            return None
    except ValueError:
        return None
    return _load_scores(cache)


def _run_cell(cell: Cell, cfg: CompressConfig, cache: Path, overwrite: bool,
              compress_fn: Callable[..., Any], trust_code: bool) -> None:
    kwargs: dict[str, Any] = {"overwrite": overwrite}
    if trust_code:
        kwargs["trust_code"] = True
    scores = _cached_scores(cache, cfg) if _accepts_scores(compress_fn) else None
    if scores is not None:
        kwargs["scores"] = scores
        cell.scores_reused = True
    compress_fn(cfg, **kwargs)
    cell.status = "ran"


def _cache_scores(cell: Cell, cfg: CompressConfig, cache: Path) -> None:
    """Keep the criterion's scores (and what they depend on) in the sweep folder for its
    other FLOPs levels."""
    src, meta = cell.run_dir / "scores.pt", cache.with_suffix(".json")
    key = scores_key(cfg)
    if not src.is_file() or (meta.is_file() and json.loads(meta.read_text()) == key):
        return
    atomic_write_bytes(cache, src.read_bytes())
    atomic_write_text(meta, json.dumps(key, indent=2) + "\n")


def run_sweep(base: CompressConfig, criteria: Sequence[str], flops: Sequence[float],
              sweep_dir: Path | str | None = None, overwrite: bool = False,
              compress_fn: Callable[..., Any] | None = None, trust_code: bool = False
              ) -> SweepResult:
    """Run every (criterion, FLOPs reduction) cell not already finished, then write the
    Pareto plot and tables. `base` gives every other compress option; its name/out (or
    `sweep_dir`) name the sweep folder, never a cell. A cell that fails (e.g. a FLOPs cut
    the model cannot reach) does not stop the others; the outputs are written for the cells
    that finished, then one error names the failed cells. `compress_fn` defaults to
    `edgeprune.jobs.compress.compress`; `trust_code` goes to it (see
    `edgeprune.models.load_model`)."""
    compress_fn = compress_fn or compress
    check_model_ref(base.model, trust_code)  # the same refusal for every cell: say it once
    sweep_dir = Path(sweep_dir) if sweep_dir is not None else default_sweep_dir(base)
    cells = plan(base, criteria, flops, sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    for i, cell in enumerate(cells, start=1):
        cfg = cell_config(base, cell, i - 1)
        cache = sweep_dir / "scores" / f"{cell.criterion}.pt"
        if is_finished(cell.run_dir) and not overwrite:
            _check_same(cell, cfg)
            cell.status = "skipped"
            info(f"sweep {i}/{len(cells)}: {cell.name} already finished, skipped")
        else:
            info(f"sweep {i}/{len(cells)}: {cell.name} (criterion {cell.criterion}, "
                 f"-{cell.flops_reduction:.0%} FLOPs)")
            try:
                _run_cell(cell, cfg, cache, overwrite, compress_fn, trust_code)
            except EdgepruneError as e:
                cell.status, cell.error = "failed", str(e)
                info(f"sweep {i}/{len(cells)}: {cell.name} failed: {e}")
        _cache_scores(cell, cfg, cache)
    result = write_outputs(sweep_dir, base, cells)
    failed = [c for c in cells if c.status == "failed"]
    if failed:
        by_error: dict[str, list[str]] = {}
        for c in failed:  # the same problem in every cell is said once
            by_error.setdefault(str(c.error), []).append(c.name)
        reasons = "; ".join(f"{', '.join(names)}: {e}" for e, names in by_error.items())
        raise EdgepruneError(f"{len(failed)} of {len(cells)} sweep cells failed ({reasons}); "
                             f"{result.files['markdown']} compares the others; run again to "
                             "retry")
    return result


def _cell_row(cell: Cell) -> dict[str, Any]:
    summary = json.loads((cell.run_dir / "summary.json").read_text())
    manifest = json.loads((cell.run_dir / "manifest.json").read_text())
    dense, pruned = summary["dense"], summary["pruned"]
    achieved = (manifest.get("stages", {}).get("prune") or {}).get("flops_reduction")
    return {
        "cell": cell.name, "criterion": cell.criterion,
        "flops_reduction_target": cell.flops_reduction, "flops_reduction": achieved,
        "accuracy": pruned["accuracy"], "dense_accuracy": dense["accuracy"],
        "macs": pruned["macs"], "dense_macs": dense["macs"], "params": pruned["params"],
        "p50_ms": {fmt: f["latency_ms"]["p50"] for fmt, f in pruned["files"].items()
                   if "latency_ms" in f},
        "dense_p50_ms": {fmt: f["latency_ms"]["p50"] for fmt, f in dense["files"].items()
                         if "latency_ms" in f},
        "size_bytes": {fmt: f["size_bytes"] for fmt, f in pruned["files"].items()},
        "latency_label": next((f.get("latency_label") for f in pruned["files"].values()), None),
        "run_dir": cell.run_dir.name, "status": cell.status,
        "scores_reused": cell.scores_reused,
    }


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (cost, accuracy) points: True where no other point is at most as costly and at
    least as accurate, and strictly better in one of the two."""
    return [not any(c2 <= c and a2 >= a and (c2 < c or a2 > a) for c2, a2 in points)
            for c, a in points]


def latency_format(base: CompressConfig, rows: Sequence[dict[str, Any]]) -> str | None:
    """The format whose latency the plot compares: the target's runtime if exported, else
    the first format measured."""
    measured = [fmt for fmt in base.formats if all(fmt in r["p50_ms"] for r in rows)]
    try:
        from edgeprune.devices.targets import load_target

        preferred = load_target(base.target).ship_format
    except EdgepruneError:
        preferred = None
    return preferred if preferred in measured else (measured[0] if measured else None)


def _mark_fronts(rows: list[dict[str, Any]], fmt: str | None) -> None:
    flops = pareto_front([(r["macs"], r["accuracy"]) for r in rows])
    for r, on in zip(rows, flops, strict=True):
        r["pareto_flops"] = on
    lat = pareto_front([(r["p50_ms"][fmt], r["accuracy"]) for r in rows]) if fmt else \
        [False] * len(rows)
    for r, on in zip(rows, lat, strict=True):
        r["pareto_latency"] = on


def write_outputs(sweep_dir: Path, base: CompressConfig, cells: list[Cell]) -> SweepResult:
    """sweep.json, sweep.md and pareto.png from the finished cells' run folders."""
    from edgeprune.report.pareto import pareto_plot

    rows = [_cell_row(c) for c in cells if is_finished(c.run_dir)]
    fmt = latency_format(base, rows)
    _mark_fronts(rows, fmt)
    result = SweepResult(sweep_dir, cells, rows, fmt)
    files = {"json": sweep_dir / "sweep.json", "markdown": sweep_dir / "sweep.md",
             "plot": sweep_dir / "pareto.png"}
    if rows:
        atomic_write_bytes(files["plot"], pareto_plot(rows, fmt, base.target))
    else:
        files.pop("plot")
    result.files = files
    atomic_write_text(files["markdown"], markdown_table(rows, fmt, base))
    record = {"schema": SCHEMA, "base_config": dump_config(base), **result.to_dict()}
    atomic_write_text(files["json"], json.dumps(record, indent=2) + "\n")
    return result


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown_table(rows: Sequence[dict[str, Any]], fmt: str | None,
                   base: CompressConfig) -> str:
    """One row per cell; `*` marks cells on a Pareto front."""
    formats = [f for f in base.formats if any(f in r["p50_ms"] for r in rows)]
    head = ["cell", "criterion", "FLOPs cut (target)", "FLOPs cut (achieved)", "top-1",
            "vs dense", "MMACs", "params"] + [f"{f} p50 ms" for f in formats] + [
        "front: latency", "front: FLOPs"]
    where = sorted({str(r["latency_label"]) for r in rows})
    if len(where) > 1:  # cells spread over a fleet: say where each was measured
        head.insert(-2, "measured on")
    lines = [f"# Sweep: {base.model} on {base.target}", "",
             f"Latency: pruned model, p50 per image, {where[0] if len(where) == 1 else 'per row'}"
             f"; the latency front uses {fmt or 'no format'}. `*` = on the Pareto front "
             "(no other cell is both cheaper and more accurate).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        achieved = "-" if r["flops_reduction"] is None else f"{r['flops_reduction']:.1%}"
        cells = [r["cell"], r["criterion"], f"{r['flops_reduction_target']:.0%}", achieved,
                 f"{r['accuracy'] * 100:.2f}%",
                 f"{(r['accuracy'] - r['dense_accuracy']) * 100:+.2f} pts",
                 f"{r['macs'] / 1e6:.2f}", f"{r['params']:,}"]
        cells += [_ms(r["p50_ms"].get(f)) for f in formats]
        cells += [str(r["latency_label"])] if len(where) > 1 else []
        cells += ["*" if r["pareto_latency"] else "", "*" if r["pareto_flops"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    if rows:
        d = rows[0]
        dense_lat = ", ".join(f"{f} {_ms(d['dense_p50_ms'].get(f))} ms" for f in formats)
        lines += ["", f"Dense reference: top-1 {d['dense_accuracy'] * 100:.2f}%, "
                      f"{d['dense_macs'] / 1e6:.2f} MMACs, p50 {dense_lat}."]
    return "\n".join(lines) + "\n"
