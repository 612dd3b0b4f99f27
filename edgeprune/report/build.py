"""`build_report(run_dir)`: read a run folder, write report.html and report.json into it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from edgeprune.files import atomic_write_text, sha256_file
from edgeprune.report import plots
from edgeprune.report.load import RunData, load_run
from edgeprune.report.numbers import collect
from edgeprune.report.page import Image, render

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_ATLAS = 24

CAPTIONS = {
    "channels": "Light bars: output channels of each prunable layer before pruning; blue bars: "
                "channels kept. [protected] layers (e.g. the classifier) are never pruned.",
    "scores": "Each dot is one output channel's score from the criterion (scores.pt); boxes "
              "span the quartiles, the line is the median. The pruner ranks channels through "
              "Torch-Pruning's dependency groups (coupled layers pooled), so a layer's kept "
              "channels need not be exactly its own top scores.",
    "latency": "Dark bars: median (p50); light bars: p90; grey = dense, blue = pruned; hatched "
               "orange: estimate for the target from its profile (not a measurement).",
    "search": "Each point is one level the search tried: its file's top-1 drop on the "
              "validation split (what decided) against the target's roofline estimate of its "
              "latency. The starred level was fine-tuned further and its files measured.",
    "finetune": "Test top-1 accuracy of the pruned model after each fine-tuning epoch (dashed: "
                "the dense model) and the training loss.",
}


def _plots(report: dict[str, Any], run: RunData) -> dict[str, Image]:
    made = {
        "channels": plots.channels_plot(report["channels"]),
        "scores": plots.scores_plot(run.scores, report["channels"], report["run"]["criterion"]),
        "latency": plots.latency_plot(report["latency"]),
        "finetune": plots.finetune_plot(report["finetune"]["history"],
                                        report["finetune"]["dense_accuracy"]),
        "search": plots.search_plot(report.get("search"), report["shipped"]["max_drop"]),
    }
    alts = {"channels": "output channels per layer before and after pruning",
            "scores": "criterion score distribution per layer",
            "latency": "latency per model file in milliseconds",
            "finetune": "accuracy and loss during fine-tuning",
            "search": "validation accuracy drop against estimated latency for every level tried"}
    captions = dict(CAPTIONS)
    hidden = [plots.layer_label(c) for c in report["channels"]
              if c["protected"] and c["layer"] in run.scores]
    if hidden:
        captions["scores"] += f" Not shown: {', '.join(hidden)} (protected, never pruned)."
    return {name: Image(name, png, alts[name], captions[name])
            for name, png in made.items() if png is not None}


def _atlas(run: RunData) -> list[Image]:
    """The atlas PNGs another stage left under atlas/ (first MAX_ATLAS, by name)."""
    images = []
    for path in run.atlas[:MAX_ATLAS]:
        data = path.read_bytes()
        if data.startswith(PNG_MAGIC):
            images.append(Image(f"atlas-{path.stem}", data, f"filter atlas {path.stem}",
                                path.name))
    return images


def _config_toml(run: RunData) -> str:
    """The run's config.toml as compress wrote it; a run without one (made by an early
    version) shows its config.json as recorded."""
    if run.config_toml is not None:
        return run.config_toml
    return json.dumps(run.config, indent=2)


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def build_report(run_dir: Path | str, out_dir: Path | str | None = None) -> tuple[Path, Path]:
    """Write report.html (self-contained) and report.json (the same numbers) for the run in
    `run_dir`, reading only that folder; into `out_dir` (default: the run folder)."""
    run = load_run(run_dir)
    report = _finite(collect(run))
    out = Path(out_dir) if out_dir is not None else run.run_dir
    html_path, json_path = out / "report.html", out / "report.json"
    page = render(report, _plots(report, run), _atlas(run), _config_toml(run))
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    atomic_write_text(html_path, page)
    return html_path, json_path


def refresh_manifest(run_dir: Path | str, paths: tuple[Path, ...]) -> None:
    """Update the size and sha256 of report files the run's manifest already lists, so a
    regenerated report keeps the manifest true; files it does not list are left out."""
    manifest_path = Path(run_dir) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    by_path = {Path(p).resolve().relative_to(Path(run_dir).resolve()).as_posix(): Path(p)
               for p in paths}
    changed = False
    for a in manifest.get("artefacts", []):
        path = by_path.get(a.get("path"))
        if path is not None:
            a.update(size_bytes=path.stat().st_size, sha256=sha256_file(path))
            changed = True
    if changed:
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
