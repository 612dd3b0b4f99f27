"""report.html: one self-contained page (inline CSS, PNGs as data URIs, no script, no network)
rendered from the report's numbers and plots."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from html import escape
from typing import Any

from edgeprune.report.numbers import decided_drop_text

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1f2933;
 margin:0;background:#f5f7fa;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px 32px 48px;background:#fff}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.25em;margin:32px 0 8px;
 border-bottom:2px solid #d9e2ec;padding-bottom:4px}h3{font-size:1.05em;margin:20px 0 6px}
.sub{color:#52606d;margin:0 0 16px}table{border-collapse:collapse;margin:8px 0 12px;
 font-size:.92em}th,td{padding:4px 10px;border-bottom:1px solid #e4e7eb;text-align:left;
 vertical-align:top;white-space:nowrap}td.w{white-space:normal}th{background:#f0f4f8}td.n{text-align:right;font-variant-numeric:tabular-nums;
 white-space:nowrap}tr.est td{font-style:italic;color:#8d4a05}.badge{display:inline-block;
 font-size:.75em;font-style:normal;padding:0 6px;border-radius:8px;background:#fde8c8;
 color:#8d4a05;margin-left:6px}.good{color:#1d7a3a}.bad{color:#b42318}
figure{margin:12px 0 20px}figure img{max-width:100%;height:auto;border:1px solid #e4e7eb}
figcaption{font-size:.88em;color:#52606d;margin-top:4px}.note{font-size:.9em;color:#52606d}
pre{background:#f0f4f8;padding:10px 12px;overflow-x:auto;font-size:.85em;white-space:pre-wrap;
 word-break:break-all}.atlas{display:flex;flex-wrap:wrap;gap:12px}.atlas figure{margin:0;
 width:250px}.atlas img{width:100%}code{font-size:.92em}
"""


@dataclass
class Image:
    """One embedded PNG with its caption."""

    name: str
    png: bytes
    alt: str
    caption: str = ""

    def html(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        cap = f"<figcaption>{escape(self.caption)}</figcaption>" if self.caption else ""
        return (f'<figure id="fig-{escape(self.name)}"><img src="data:image/png;base64,{data}" '
                f'alt="{escape(self.alt)}">{cap}</figure>')


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def mega(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} M"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def ms(x: float | None, approx: bool = False) -> str:
    return "-" if x is None else f"{'~' if approx else ''}{x:.3f} ms"


def ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _row(cells: list[str], numeric: tuple[int, ...] = (), cls: str = "",
         wrap: tuple[int, ...] = ()) -> str:
    kinds = {**{i: ' class="w"' for i in wrap}, **{i: ' class="n"' for i in numeric}}
    tds = "".join(f"<td{kinds.get(i, '')}>{c}</td>" for i, c in enumerate(cells))
    return f'<tr class="{cls}">{tds}</tr>' if cls else f"<tr>{tds}</tr>"


def _table(head: list[str], rows: list[str]) -> str:
    ths = "".join(f"<th>{escape(h)}</th>" for h in head)
    return f"<table><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _summary_table(report: dict[str, Any]) -> str:
    rows = []
    for r in report["summary"]:
        if r["unit"] == "fraction":
            change = r["change_points"]
            cls = "good" if change >= 0 else "bad"
            rows.append(_row([escape(r["metric"]), pct(r["dense"]), pct(r["pruned"]),
                              f'<span class="{cls}">{change:+.2f} points</span>'], (1, 2, 3)))
        else:
            fmt = count if r["metric"] == "parameters" else mega
            rows.append(_row([escape(r["metric"]), fmt(r["dense"]), fmt(r["pruned"]),
                              ratio(r["ratio"])], (1, 2, 3)))
    files = {(f["model"], f["format"]): f for f in report["files"]}
    for (tag, fmt), f in files.items():
        other = files.get(("pruned", fmt))
        if tag != "dense" or other is None:
            continue
        rows.append(_row([f"{escape(fmt)} {escape(f['precision'] or '')} file size",
                          size(f["size_bytes"]), size(other["size_bytes"]),
                          ratio(_div(f["size_bytes"], other["size_bytes"]))], (1, 2, 3)))
    rows += _latency_summary_rows(report["latency"])
    return _table(["", "dense", "pruned", "dense / pruned"], rows)


def _shipped(report: dict[str, Any]) -> str:
    """Which file was shipped and why, and every candidate beside it."""
    shipped, candidates = report["shipped"], report["candidates"]
    if not candidates:
        return '<p class="note">This run made no candidate files (an older run).</p>'
    chosen = shipped.get("file")
    lead = (f"<p><b>Shipped: {escape(chosen['name'])}</b> (<code>ship/"
            f"{escape(chosen['path'].rsplit('/', 1)[-1])}</code>): {escape(shipped['reason'])}."
            "</p>" if chosen else
            f'<p class="bad"><b>Nothing shipped:</b> {escape(shipped["reason"] or "")}.</p>')
    rows = []
    for c in candidates:
        sp = c.get("speedup") or {}
        drop = c.get("drop_points")
        cls = "good" if c.get("within_tolerance") else "bad"
        mark = "shipped" if chosen and c["path"] == chosen["path"] else ""
        budget = "" if c.get("meets_budget") is None else (
            "meets budget" if c["meets_budget"] else "over budget")
        rows.append(_row([escape(c["name"]), pct(c.get("accuracy")),
                          f'<span class="{cls}">{0.0 - drop:+.2f} points</span>'
                          if drop is not None else "-", escape(decided_drop_text(c)),
                          size(c["size_bytes"]),
                          ms((c.get("latency_ms") or {}).get("p50")),
                          f"{sp['value']:.2f}x ({sp['low']:.2f}-{sp['high']:.2f})"
                          if sp else "-", ms(c.get("estimate_ms"), approx=True)
                          + (f" ({c['estimate_speedup']:.2f}x)" if c.get("estimate_speedup")
                             else ""),
                          escape(" ".join(x for x in (mark, budget) if x))],
                         (1, 2, 3, 4, 5, 6, 7)))
    for f in shipped.get("failed") or []:
        rows.append(_row([escape(f["name"]), "-", "-", "-", "-", "-", "-", "-",
                          f'<span class="bad">failed at {escape(f["stage"])}: '
                          f'{escape(f["reason"])}</span>'], ()))
    where = escape(candidates[0].get("latency_label", ""))
    if where.endswith(", emulated"):  # qemu's times: shown, never a speed claim
        where += ' <span class="badge">emulated: not a device\'s speed</span>'
    budget = (f", latency budget {shipped['latency_budget_ms']:g} ms"
              if shipped.get("latency_budget_ms") else "")
    note = (f'<p class="note">Accuracy: top-1 of each file in its runtime on the test images, '
            f"against dense fp32 (tolerance {shipped.get('max_drop', 1.0):g} points{budget}); "
            "the validation drop, with the one-sided 95% upper bound the tolerance judged, "
            "is what decided. "
            f"Latency: p50 measured on {where}, every file timed in turn in the same rounds; "
            "speedup over dense fp32 with its lowest and highest round. Estimate: the "
            "target's roofline, never a measurement, with its speedup over dense fp32."
            + (f" <b>Decided by: {escape(shipped['decided_by'])}.</b>"
               if shipped.get("decided_by") else "") + "</p>")
    return lead + _table(["candidate", "top-1", "vs dense fp32", "validation drop (bound)",
                          "size", "p50", "speedup", "estimate", ""], rows) + note


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _latency_summary_rows(latency: list[dict[str, Any]]) -> list[str]:
    """Dense vs pruned latency per format and measurement source; estimates marked."""
    pairs: dict[tuple, dict[str, dict]] = {}
    for r in latency:
        key = (r["source"], r["kind"], r["format"], r.get("precision"), r["where"])
        pairs.setdefault(key, {})[r["model"]] = r
    latest_bench = max((r["source"] for r in latency if r["source"] != "compress"),
                       default=None, key=lambda s: int(s.split("#")[-1]))
    rows = []
    for (source, kind, fmt, prec, where), by_model in pairs.items():
        d, p = by_model.get("dense"), by_model.get("pruned")
        if d is None or p is None or source not in ("compress", latest_bench):
            continue
        est = kind == "estimated"
        for q in ("p50",) if est else ("p50", "p90"):
            a, b = d["ms"].get(q), p["ms"].get(q)
            label = (f"{escape(fmt)} {escape(prec or '')} latency {'' if est else q} "
                     f"<span class=\"note\">({escape(where)})</span>")
            if est or kind == "emulated":
                label += f'<span class="badge">{"estimate" if est else "emulated"}</span>'
            rows.append(_row([label, ms(a, est), ms(b, est), ratio(_div(a, b))], (1, 2, 3),
                             "est" if est else ""))
    return rows


def _files_table(files: list[dict[str, Any]]) -> str:
    rows = [_row([escape(f["model"]), escape(f["format"]), escape(f["precision"] or "-"),
                  f"<code>{escape(f['path'] or '')}</code>", size(f["size_bytes"]),
                  count(f["size_bytes"]),
                  "-" if f["max_abs_diff"] is None else f"{f['max_abs_diff']:.1e}",
                  pct(f["top1_agreement"])], (4, 5, 6, 7)) for f in files]
    return _table(["model", "format", "precision", "file", "size", "bytes",
                   "max |diff| vs PyTorch", "top-1 agreement"], rows)


def _latency_table(latency: list[dict[str, Any]]) -> str:
    rows = []
    for r in latency:
        est = r["kind"] == "estimated"
        q = r["ms"]
        kind = 'estimated<span class="badge">estimate</span>' if est else "measured"
        rows.append(_row([escape(r["source"]), escape(r["model"]),
                          f"{escape(r['format'] or '')} {escape(r.get('precision') or '')}",
                          kind, escape(r["where"]), ms(q.get("p50"), est), ms(q.get("p90")),
                          ms(q.get("p99")), ms(q.get("mean")), escape(r.get("runtime") or "-")],
                         (5, 6, 7, 8), "est" if est else "", wrap=(4,)))
    return _table(["source", "model", "format", "kind", "where", "p50", "p90", "p99", "mean",
                   "runtime"], rows)


def _figure(images: dict[str, Image], name: str, missing: str) -> str:
    return images[name].html() if name in images else f'<p class="note">{escape(missing)}</p>'


def _provenance(report: dict[str, Any], config_toml: str) -> str:
    prov = report["provenance"]
    versions = _table(["package", "version"], [
        _row([escape(k), escape(v)]) for k, v in prov["versions"].items()])
    machine = escape(prov.get("machine") or "not recorded")
    if prov.get("cpu"):
        machine += f" ({escape(', '.join(prov['cpu']))})"
    stages = _table(["stage", "wall time"], [
        _row([escape(s["stage"]), "-" if s["wall_s"] is None else f"{s['wall_s']:.1f} s"], (1,))
        for s in report["stages"]])
    return (f"<h3>Command</h3><pre>{escape(prov.get('command') or 'not recorded')}</pre>"
            f"<p>Reproduce it with <code>edgeprune compress --config "
            f"{escape(report['run']['name'])}/config.toml --name NEW_NAME</code> (the resolved "
            "config below; without a new --name or --out it would replace this run only with "
            f"--overwrite).</p><h3>Resolved config</h3><pre>{escape(config_toml)}</pre>"
            f"<p>Seed: <b>{escape(str(prov.get('seed')))}</b> &middot; machine: {machine} "
            f"{_python(prov)}{_when(prov)}</p>"
            f"<h3>Versions</h3>{versions}<h3>Stage wall times</h3>{stages}")


def _python(prov: dict[str, Any]) -> str:
    return f" &middot; Python {escape(str(prov['python']))}" if prov.get("python") else ""


def _when(prov: dict[str, Any]) -> str:
    parts = [f"{label} {escape(str(prov[key]))}" for key, label in
             (("created", "started"), ("finished", "finished")) if prov.get(key)]
    return " &middot; " + ", ".join(parts) if parts else ""


def _artefacts(report: dict[str, Any]) -> str:
    return _table(["file", "kind", "size", "sha256"], [
        _row([f"<code>{escape(a['path'] or '')}</code>", escape(a["kind"] or ""),
              size(a["size_bytes"]), f"<code>{escape((a['sha256'] or '')[:16])}...</code>"],
             (2,)) for a in report["artefacts"]])


def _header(report: dict[str, Any]) -> str:
    run = report["run"]
    bits = [f"{label} <b>{escape(str(run[key]))}</b>" for key, label in
            (("target", "target"), ("criterion", "criterion")) if run.get(key)]
    if run.get("flops_reduction_target") is not None:
        achieved = run.get("flops_reduction_achieved")
        bits.append(f"FLOPs reduction asked {run['flops_reduction_target']:.0%}" + (
            f", achieved {achieved:.1%}" if achieved is not None else ""))
    if run.get("wall_s"):
        bits.append(f"run took {run['wall_s']:.0f} s")
    return (f"<h1>edgeprune report: {escape(run['name'])}</h1>"
            f"<p class=\"sub\">{' &middot; '.join(bits)} &middot; report generated "
            f"{escape(report['generated'])}</p>")


def render(report: dict[str, Any], images: dict[str, Image], atlas: list[Image],
           config_toml: str) -> str:
    """The whole page as one string."""
    summary = (_summary_table(report) + "<h3>Exported files</h3>" + _files_table(
        report["files"])) if report["summary"] else (
        '<p class="note">This run holds no summary.json (it did not finish).</p>')
    latency = ('<p class="note">Measured latencies are timings on the machine named in each '
               "row; estimates are roofline figures for the target computed from its profile, "
               "never measurements. Runs store percentiles, not every timing, so the plot shows "
               "p50/p90 bars instead of full distributions.</p>"
               + _figure(images, "latency", "No latency was measured in this run.")
               + (_latency_table(report["latency"]) if report["latency"] else ""))
    atlas_html = ("<h2>Filter atlas</h2><div class=\"atlas\">"
                  + "".join(a.html() for a in atlas) + "</div>") if atlas else ""
    body = (_header(report) + "<h2>Shipped file</h2>" + _shipped(report)
            + "<h2>Summary: dense vs pruned</h2>" + summary
            + "<h2>Latency</h2>" + latency
            + ("<h2>Level search</h2>" + _figure(images, "search", "No latency estimates.")
               if report.get("search") else "")
            + "<h2>What was pruned</h2>"
            + _figure(images, "channels", "No channel counts recorded (no prune stage).")
            + _figure(images, "scores", "No criterion scores stored (no scores.pt).")
            + "<h2>Fine-tuning</h2>"
            + _figure(images, "finetune", "No fine-tuning history recorded.")
            + atlas_html
            + "<h2>Reproduce</h2>" + _provenance(report, config_toml)
            + "<h2>Files in this run</h2>" + _artefacts(report))
    title = escape(f"edgeprune report: {report['run']['name']}")
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{title}</title><style>{CSS}</style></head><body><main>{body}</main>"
            f"</body></html>\n")
