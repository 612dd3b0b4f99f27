"""The numbers of a report (what report.json holds), computed from a loaded run folder.

Raw units throughout: accuracy as a fraction, counts as integers, sizes in bytes, latency in
ms. Measured and estimated latencies are separate rows with `kind` "measured" or "estimated"
("emulated": timed under qemu, shown and never compared with a device's).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.report.load import REPORT_FILES, RunData

SCHEMA = "edgeprune.report/1"
MODELS = ("dense", "pruned")


def decided_drop_text(candidate: dict[str, Any]) -> str:
    """A candidate's validation drop that decided, with the one-sided 95% bound the tolerance
    judged: '0.45 (<= 0.91)', '0.45 (point estimate)' when the split was too small for a
    bound, '-' for a run made before validation verdicts were recorded. The CLI table and the
    report print it alike."""
    v = candidate.get("validation_drop")
    if not v:
        return "-"
    bound = f"<= {v['bound']:.2f}" if v["rule"] == "bound" else "point estimate"
    return f"{v['points']:.2f} ({bound})"


def _ratio(before: float | None, after: float | None) -> float | None:
    return before / after if before and after else None


def _summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Accuracy, params, MACs, FLOPs: dense vs pruned with dense/pruned ratios."""
    d, p = summary["dense"], summary["pruned"]
    rows = [{"metric": "top-1 accuracy", "unit": "fraction", "dense": d["accuracy"],
             "pruned": p["accuracy"], "ratio": None,
             "change_points": (p["accuracy"] - d["accuracy"]) * 100}]
    for metric, unit, key, scale in (("parameters", "count", "params", 1),
                                     ("MACs per image", "count", "macs", 1),
                                     ("FLOPs per image (2 x MACs)", "count", "macs", 2)):
        rows.append({"metric": metric, "unit": unit, "dense": d[key] * scale,
                     "pruned": p[key] * scale, "ratio": _ratio(d[key], p[key])})
    return rows


def _files(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per exported file: size, precision, verification against PyTorch."""
    rows = []
    for tag in MODELS:
        for fmt, f in summary[tag].get("files", {}).items():
            rows.append({"model": tag, "format": fmt, "precision": f.get("precision"),
                         "path": f.get("path"), "size_bytes": f.get("size_bytes"),
                         "max_abs_diff": f.get("max_abs_diff"),
                         "top1_agreement": f.get("top1_agreement"), "runtime": f.get("runtime")})
    return rows


def _kind(latency_label: str) -> str:
    """'emulated' for a time qemu took (the label ends so), else 'measured'."""
    return "emulated" if latency_label.endswith(", emulated") else "measured"


def _compress_latency(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for tag in MODELS:
        for fmt, f in summary[tag].get("files", {}).items():
            if "latency_ms" in f:
                rows.append({"source": "compress", "model": tag, "format": fmt,
                             "precision": f.get("precision"), "path": f.get("path"),
                             "kind": _kind(f.get("latency_label", "")),
                             "where": f.get("latency_label", "host"),
                             "runtime": f.get("runtime"), "ms": dict(f["latency_ms"])})
    return rows


def _model_tags(summary: dict[str, Any] | None) -> dict[str, str]:
    """{file path relative to the run: 'dense' | 'pruned'}."""
    if not summary:
        return {}
    return {f["path"]: tag for tag in MODELS for f in summary[tag].get("files", {}).values()
            if "path" in f}


def _bench_latency(manifest: dict[str, Any], tags: dict[str, str]) -> list[dict[str, Any]]:
    """Rows from every `edgeprune bench --run` record: the measurement, and the target's
    roofline estimate as a separate row labelled estimated."""
    rows = []
    for i, record in enumerate(manifest.get("bench") or [], start=1):
        source = f"bench #{i}"
        threads = (record.get("options") or {}).get("threads")
        for r in record.get("rows", []):
            m = r.get("measurement") or {}
            base = {"source": source, "model": tags.get(r.get("model"), Path(
                str(r.get("model"))).stem), "format": r.get("format"),
                "precision": r.get("precision"), "path": r.get("model"),
                "created": record.get("created")}
            where = f"{r.get('label', 'host')}: {record.get('device', 'local')}"
            if threads:
                where += f", {threads} thread{'s' if threads > 1 else ''}"
            runtime = " ".join(str(m[k]) for k in ("runtime", "runtime_version") if m.get(k))
            if m.get("latency_ms"):
                kind = "emulated" if r.get("label") == "emulated" else "measured"
                rows.append({**base, "kind": kind, "where": where, "runtime": runtime,
                             "ms": dict(m["latency_ms"])})
            est = r.get("estimate")
            if est:
                rows.append({**base, "kind": "estimated",
                             "where": f"estimate for {est.get('target', record.get('target'))}, "
                                      f"{est.get('threads')} threads (roofline, not measured)",
                             "runtime": None, "ms": {"p50": est.get("latency_ms")},
                             "bound": est.get("bound")})
    return rows


def _layer_type(shapes: dict[str, list[int]], layer: str) -> str:
    shape = shapes.get(f"{layer}.weight")
    if not shape:
        return ""
    if len(shape) == 4:
        return f"conv {shape[2]}x{shape[3]}"
    return "linear" if len(shape) == 2 else ""


def _channels(run: RunData) -> list[dict[str, Any]]:
    """Channels per layer before/after pruning; protected layers (never pruned) too, with
    their width from architecture.json."""
    prune = run.manifest.get("stages", {}).get("prune", {})
    counts = {name: (int(b), int(a)) for name, (b, a) in (prune.get("channels") or {}).items()}
    for name in prune.get("protected") or []:
        shape = run.shapes.get(f"{name}.weight")
        if name not in counts and shape:
            counts[name] = (shape[0], shape[0])
    protected = set(prune.get("protected") or [])
    return [{"layer": name, "type": _layer_type(run.shapes, name), "before": before,
             "after": after, "kept": after / before if before else None,
             "protected": name in protected}
            for name, (before, after) in counts.items()]


def _score_stats(run: RunData) -> list[dict[str, Any]]:
    rows = []
    for name, s in run.scores.items():
        if s.size == 0:
            continue
        q = np.percentile(s, [0, 25, 50, 75, 100])
        rows.append({"layer": name, "channels": int(s.size), "min": q[0], "p25": q[1],
                     "median": q[2], "p75": q[3], "max": q[4], "mean": float(s.mean())})
    return [{k: float(v) if isinstance(v, np.floating) else v for k, v in r.items()}
            for r in rows]


def _versions(run: RunData, latency: list[dict[str, Any]]) -> dict[str, str]:
    """Versions recorded in the run: manifest, export sidecars, runtimes that measured."""
    found: dict[str, str] = {}
    for name in ("edgeprune", "python"):
        if run.manifest.get(name):
            found[name] = str(run.manifest[name])
    for side in run.sidecars.values():
        if side.get("torch"):
            found.setdefault("torch", str(side["torch"]))
        converter = (side.get("details") or {}).get("converter")
        if converter:
            name, _, version = str(converter).partition(" ")
            found.setdefault(name, version or "?")
    for row in latency:
        if row.get("runtime"):
            name, _, version = str(row["runtime"]).partition(" ")
            found.setdefault(name, version or "?")
    found.update({str(k): str(v) for k, v in (run.manifest.get("versions") or {}).items()})
    for name in ("torch", "onnxruntime", "ai-edge-litert"):
        found.setdefault(name, "not recorded in this run")
    return found


def _stages(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"stage": name, "wall_s": info.get("wall_s")}
            for name, info in manifest.get("stages", {}).items() if isinstance(info, dict)]


def _artefacts(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: a.get(k) for k in ("path", "kind", "size_bytes", "sha256")}
            for a in manifest.get("artefacts", []) if a.get("path") not in REPORT_FILES]


def _provenance(run: RunData, latency: list[dict[str, Any]]) -> dict[str, Any]:
    m = run.manifest
    hosts = {str((r.get("measurement") or {}).get("host", {}).get("cpu_model"))
             for b in m.get("bench") or [] for r in b.get("rows", [])} - {"None"}
    return {"command": m.get("command"), "created": m.get("created"),
            "finished": m.get("finished"), "config": run.config,
            "machine": m.get("machine"), "cpu": sorted(hosts), "python": m.get("python"),
            "seed": run.config.get("seed"), "versions": _versions(run, latency)}


def collect(run: RunData) -> dict[str, Any]:
    """The report's numbers as one JSON-ready dict (report.json)."""
    summary, stages = run.summary, run.manifest.get("stages", {})
    latency = (_compress_latency(summary) if summary else []) + _bench_latency(
        run.manifest, _model_tags(summary))
    finetune = stages.get("finetune") or {}
    prune = stages.get("prune") or {}
    return {
        "schema": SCHEMA,
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "run": {"name": run.run_dir.resolve().name.removeprefix(".").removesuffix(".partial"),
                "target": (summary or {}).get("target", run.config.get("target")),
                "criterion": run.config.get("criterion"),
                "flops_reduction_target": run.config.get("flops_reduction"),
                "flops_reduction_achieved": prune.get("flops_reduction"),
                "wall_s": (summary or {}).get("wall_s")},
        "summary": _summary_rows(summary) if summary else [],
        "candidates": (summary or {}).get("candidates", []),
        "shipped": {"file": (summary or {}).get("shipped"), "reason": (summary or {}).get("reason"),
                    "max_drop": (summary or {}).get("max_drop"),
                    "latency_budget_ms": (summary or {}).get("latency_budget_ms"),
                    "decided_by": (summary or {}).get("decided_by"),
                    "failed": (summary or {}).get("failed", [])},
        "files": _files(summary) if summary else [],
        "search": (summary or {}).get("search"),
        "latency": latency,
        "channels": _channels(run),
        "scores": _score_stats(run),
        "finetune": {"epochs": finetune.get("epochs"), "history": finetune.get("history", []),
                     "dense_accuracy": (summary or {}).get("dense", {}).get("accuracy")},
        "stages": _stages(run.manifest),
        "artefacts": _artefacts(run.manifest),
        "atlas": [p.relative_to(run.run_dir).as_posix() for p in run.atlas],
        "provenance": _provenance(run, latency),
    }
