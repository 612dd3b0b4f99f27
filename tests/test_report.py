"""The run report: report.json holds the run's numbers, report.html is one self-contained page
that headless Chromium renders with every number and image."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import run_cli

from edgeprune.errors import EdgepruneError
from edgeprune.files import sha256_file
from edgeprune.report import build_report

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "",
                             shutil.which("chromium-browser") or "") if p and Path(p).exists()),
                None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = 4  # channels, scores, latency, fine-tuning
ATLAS = 2


def _atlas_png(path: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(np.random.default_rng(seed).random((8, 8)), cmap="gray")
    ax.set_title(f"layer {seed}")
    fig.savefig(path)
    plt.close(fig)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_checkpoint) -> Path:
    """A real compress run (both formats), one real `bench --run` record and two atlas PNGs."""
    from edgeprune.devices.bench import BenchOptions
    from edgeprune.jobs.bench import append_to_run, bench_models, bench_record

    runs = tmp_path_factory.mktemp("runs")
    proc = subprocess.run(
        [sys.executable, "-m", "edgeprune", "compress", "--model", str(tiny_checkpoint),
         "--flops-reduction", "0.5",
         "--dataset", "synthetic", "--criterion", "l1", "--epochs", "1.2", "--score-samples",
         "32", "--bench-runs", "3", "--bench-seconds", "0.05", "--runs-dir", str(runs),
         "--name", "tiny", "--quiet"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = runs / "tiny"
    options = BenchOptions(threads=1, warmup=2, runs=3, min_seconds=0.02)
    rows = bench_models([run / "models" / "dense.onnx", run / "models" / "pruned.onnx"], "rpi4",
                        None, options)
    append_to_run(run, bench_record(rows, "rpi4", None, options, run))
    (run / "atlas").mkdir()
    for i in range(ATLAS):
        _atlas_png(run / "atlas" / f"layer{i}.png", i)
    build_report(run)
    return run


class _Page(HTMLParser):
    """Every tag's attributes, to check the page's references."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def _tags(html: str) -> list[tuple[str, dict[str, str]]]:
    page = _Page()
    page.feed(html)
    return page.tags


def expected_strings(run: Path) -> list[str]:
    """The summary numbers as the page must show them, from summary.json itself."""
    s = json.loads((run / "summary.json").read_text())
    d, p = s["dense"], s["pruned"]
    out = [f"{d['accuracy'] * 100:.2f}%", f"{p['accuracy'] * 100:.2f}%", f"{d['params']:,}",
           f"{p['params']:,}", f"{d['macs'] / 1e6:.2f} M", f"{p['macs'] / 1e6:.2f} M",
           f"{2 * p['macs'] / 1e6:.2f} M"]
    for m in (d, p):
        for f in m["files"].values():
            out += [f"{f['size_bytes']:,}", f"{f['latency_ms']['p50']:.3f} ms",
                    f"{f['latency_ms']['p90']:.3f} ms"]
    return out


def test_report_json_holds_the_runs_numbers(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rows = {r["metric"]: r for r in report["summary"]}
    assert rows["top-1 accuracy"]["pruned"] == summary["pruned"]["accuracy"]
    assert rows["parameters"]["dense"] == summary["dense"]["params"]
    assert rows["MACs per image"]["pruned"] == summary["pruned"]["macs"]
    assert rows["MACs per image"]["ratio"] == pytest.approx(
        summary["dense"]["macs"] / summary["pruned"]["macs"])
    assert {(f["model"], f["format"]) for f in report["files"]} == {
        (m, f) for m in ("dense", "pruned") for f in ("onnx", "tflite")}
    channels = {c["layer"]: [c["before"], c["after"]] for c in report["channels"]
                if not c["protected"]}
    assert channels == manifest["stages"]["prune"]["channels"]
    kinds = {(r["source"], r["kind"]) for r in report["latency"]}
    assert kinds == {("compress", "measured"), ("bench #1", "measured"),
                     ("bench #1", "estimated")}
    assert all("not measured" in r["where"] for r in report["latency"]
               if r["kind"] == "estimated")
    assert len(report["finetune"]["history"]) == 2
    assert {s["layer"] for s in report["scores"]} >= set(channels)
    versions = report["provenance"]["versions"]
    for pkg in ("edgeprune", "torch", "onnxruntime", "ai-edge-litert"):
        assert versions[pkg] != "not recorded in this run", pkg
    assert report["provenance"]["seed"] == 0
    assert report["atlas"] == [f"atlas/layer{i}.png" for i in range(ATLAS)]


def test_report_html_is_self_contained(run_dir):
    html = (run_dir / "report.html").read_text()
    tags = _tags(html)
    assert not [t for t, _ in tags if t in ("script", "link", "iframe", "object", "embed")]
    for tag, attrs in tags:
        for key in ("src", "href", "srcset", "action"):
            assert not attrs.get(key, "").startswith(("http:", "https:", "//")), (tag, attrs)
    assert "url(" not in html.split("</style>")[0]  # no CSS fetches either
    images = [a["src"] for t, a in tags if t == "img"]
    assert len(images) == PLOTS + ATLAS
    for src in images:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1])
        assert data.startswith(PNG) and len(data) > 2000
    for text in expected_strings(run_dir):
        assert text in html, text
    assert html.count('class="badge">estimate') >= 2  # estimates are labelled as such
    assert "edgeprune compress --model" in html and "seed = 0" in html


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                    "(apt-get install chromium)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    """Chromium loads the page offline, every image decodes (naturalWidth > 0) and the summary
    numbers are in the rendered DOM; a screenshot is taken of the whole page."""
    probe = tmp_path / "probe.html"
    # a test-only copy with a script that writes each image's decoded width into the DOM
    probe.write_text((run_dir / "report.html").read_text().replace(
        "</body>", "<script>window.addEventListener('load', () => document.body.setAttribute("
        "'data-widths', [...document.images].map(i => i.complete ? i.naturalWidth : -1)"
        ".join(',')));</script></body>"))
    dom = _chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "net::ERR" not in dom.stderr and "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    widths = dom.stdout.split('data-widths="', 1)[1].split('"', 1)[0].split(",")
    assert len(widths) == PLOTS + ATLAS and all(int(w) > 100 for w in widths), widths
    for text in expected_strings(run_dir):
        assert text in dom.stdout, text
    shot = tmp_path / "report.png"
    proc = _chromium([f"--screenshot={shot}", "--window-size=1280,4000",
                      (run_dir / "report.html").as_uri()], tmp_path)
    assert proc.returncode == 0 and shot.read_bytes().startswith(PNG), proc.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert (pixels.mean(axis=2) < 0.9).mean() > 0.05  # not a blank page


def test_report_command_regenerates_and_keeps_the_manifest_true(run_dir, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    (run / "report.html").unlink()
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["artefacts"].append({"path": "report.html", "kind": "report", "stage": "report",
                                  "size_bytes": 1, "sha256": "stale"})
    (run / "manifest.json").write_text(json.dumps(manifest))
    code, out, err = run_cli(capsys, "report", str(run), "--json")
    assert code == 0, err
    paths = json.loads(out)
    assert Path(paths["html"]) == run / "report.html" and (run / "report.html").is_file()
    entry = next(a for a in json.loads((run / "manifest.json").read_text())["artefacts"]
                 if a["path"] == "report.html")
    assert entry["sha256"] == sha256_file(run / "report.html")


def test_report_works_on_a_run_with_only_a_manifest(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"edgeprune": "0.1.0", "stages": {},
                                                   "artefacts": [],
                                                   "config": {"criterion": "l1", "seed": 3}}))
    html_path, json_path = build_report(run)
    html = html_path.read_text()
    assert "<img" not in html and "did not finish" in html and "No latency" in html
    assert "None" not in html  # what the run did not record is left out, not printed as None
    assert json.loads(json_path.read_text())["provenance"]["seed"] == 3


def test_report_needs_a_run_folder(tmp_path):
    with pytest.raises(EdgepruneError, match="holds no manifest.json"):
        build_report(tmp_path)
