"""`edgeprune sweep`: the grid runs once per cell, resumes after an interruption, shares the
criterion's scores, marks the Pareto fronts, and takes every compress option (and --config)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import run_cli

import edgeprune.jobs.sweep
from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write_text
from edgeprune.jobs.config import CompressConfig, dump_config
from edgeprune.jobs.runs import RunFolder
from edgeprune.jobs.sweep import pareto_front, parse_flops, run_sweep

PNG = b"\x89PNG\r\n\x1a\n"
# made-up but consistent figures: (criterion, flops) -> (accuracy, pruned p50 ms)
FIGURES = {("lrp", 0.3): (0.90, 0.80), ("lrp", 0.5): (0.86, 0.60),
           ("l1", 0.3): (0.88, 0.85), ("l1", 0.5): (0.87, 0.55)}


class FakeCompress:
    """Writes a run folder the way compress does (staged, then published) with the same
    files and keys, in milliseconds; records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, bool]] = []

    def __call__(self, config: CompressConfig, overwrite: bool = False, scores=None):
        return self.run(config, overwrite, scores)

    def run(self, config: CompressConfig, overwrite: bool = False, scores=None):
        cfg = config
        self.calls.append((cfg.criterion, cfg.flops_reduction, scores is not None))
        d = dataclasses.asdict(cfg) | {"formats": list(cfg.formats)}
        run = RunFolder.open(cfg.run_dir(), d, overwrite)
        acc, p50 = FIGURES.get((cfg.criterion, cfg.flops_reduction), (0.5, 1.0))
        if scores is None:
            scores = {"0": torch.rand(8), "3": torch.rand(16)}
        torch.save(scores, run.path("scores.pt"))
        run.record(run.work / "scores.pt", "scores", "score")
        run.stage_done("prune", wall_s=0.1, flops_reduction=cfg.flops_reduction + 0.01,
                       channels={"0": [8, 6], "3": [16, 10]}, protected=[])
        files = {fmt: {"path": f"models/pruned.{fmt}", "precision": "fp32", "size_bytes": 1000,
                       "latency_ms": {"p50": p50 * (1.2 if fmt == "tflite" else 1.0),
                                      "p90": p50 * 1.5, "mean": p50},
                       "latency_label": "host, 2 threads"} for fmt in cfg.formats}
        dense = {fmt: dict(f, latency_ms={"p50": 1.0, "p90": 1.2, "mean": 1.0})
                 for fmt, f in files.items()}
        summary = {"run_dir": str(run.final), "target": cfg.target,
                   "dense": {"accuracy": 0.91, "params": 2000, "macs": 10_000_000,
                             "files": dense},
                   "pruned": {"accuracy": acc, "params": 1000,
                              "macs": round(10_000_000 * (1 - cfg.flops_reduction)),
                              "files": files},
                   "wall_s": 0.1, "stages": run.manifest["stages"]}
        atomic_write_text(run.path("summary.json"), json.dumps(summary))
        return run.publish()


def base_config(tmp_path: Path, **changes) -> CompressConfig:
    return CompressConfig(model="democnn", dataset="synthetic", epochs=0.2, bench_runs=3,
                          bench_seconds=0.05, formats=("onnx", "tflite"),
                          out=str(tmp_path / "sweep"), **changes)


def test_pareto_front():
    # (cost, accuracy): b is beaten by a (cheaper, more accurate), d ties c but costs more
    assert pareto_front([(1, 0.9), (2, 0.8), (3, 0.95), (4, 0.95)]) == [True, False, True,
                                                                         False]


def test_grid_runs_every_cell_and_marks_the_fronts(tmp_path):
    fake = FakeCompress()
    result = run_sweep(base_config(tmp_path), ["lrp", "l1"], [0.5, 0.3], compress_fn=fake)
    sweep = tmp_path / "sweep"
    assert [c.name for c in result.cells] == ["lrp-30", "lrp-50", "l1-30", "l1-50"]
    assert all((sweep / c.name / "summary.json").is_file() for c in result.cells)
    rows = {r["cell"]: r for r in result.rows}
    assert result.latency_format == "tflite"  # rpi4 runs tflite
    # latency front (tflite p50 = 1.2 x table): l1-50 (0.66 ms, 0.87), lrp-50 is beaten by it,
    # lrp-30 (0.96 ms, 0.90) is the most accurate; l1-30 is beaten by lrp-30
    assert {k for k, r in rows.items() if r["pareto_latency"]} == {"l1-50", "lrp-30"}
    # FLOPs front: at 50% l1 (0.87) beats lrp (0.86); at 30% lrp (0.90) beats l1
    assert {k for k, r in rows.items() if r["pareto_flops"]} == {"l1-50", "lrp-30"}
    assert rows["l1-50"]["flops_reduction"] == pytest.approx(0.51)
    assert result.files["plot"].read_bytes().startswith(PNG)
    table = result.files["markdown"].read_text()
    assert table.count("\n| ") == 5 and "| l1-50 | l1 | 50% | 51.0% | 87.00% |" in table
    record = json.loads(result.files["json"].read_text())
    assert record["schema"] == "edgeprune.jobs.sweep/1" and len(record["rows"]) == 4
    assert 'criterion = "lrp"' in record["base_config"]


def test_scores_are_computed_once_per_criterion(tmp_path):
    fake = FakeCompress()
    result = run_sweep(base_config(tmp_path), ["lrp", "l1"], [0.3, 0.5], compress_fn=fake)
    assert [c[2] for c in fake.calls] == [False, True, False, True]
    first = torch.load(tmp_path / "sweep" / "lrp-30" / "scores.pt", weights_only=True)
    second = torch.load(tmp_path / "sweep" / "lrp-50" / "scores.pt", weights_only=True)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (tmp_path / "sweep" / "scores" / "l1.pt").is_file()
    assert [c.scores_reused for c in result.cells] == [False, True, False, True]


def test_cached_scores_are_not_reused_with_other_scoring_options(tmp_path):
    fake = FakeCompress()
    run_sweep(base_config(tmp_path), ["l1"], [0.3], compress_fn=fake)
    fake.calls.clear()
    other = dataclasses.replace(base_config(tmp_path), score_samples=64)
    run_sweep(other, ["l1"], [0.3], overwrite=True, compress_fn=fake)
    assert fake.calls == [("l1", 0.3, False)]  # recomputed, then cached under the new key
    meta = json.loads((tmp_path / "sweep" / "scores" / "l1.json").read_text())
    assert meta["score_samples"] == 64


def test_scores_are_cached_even_before_compress_takes_them(tmp_path):
    fake = FakeCompress()
    result = run_sweep(base_config(tmp_path), ["l1"], [0.3, 0.5],
                       compress_fn=lambda cfg, overwrite=False: fake.run(cfg, overwrite))
    assert [c[2] for c in fake.calls] == [False, False]
    assert (tmp_path / "sweep" / "scores" / "l1.pt").is_file()
    assert not any(c.scores_reused for c in result.cells)


def test_interrupted_sweep_resumes_with_the_missing_cell_only(tmp_path):
    fake = FakeCompress()
    run_sweep(base_config(tmp_path), ["lrp", "l1"], [0.3, 0.5], compress_fn=fake)
    sweep = tmp_path / "sweep"
    kept = (sweep / "lrp-30" / "manifest.json").read_text()
    shutil.rmtree(sweep / "l1-30")
    fake.calls.clear()
    result = run_sweep(base_config(tmp_path), ["lrp", "l1"], [0.3, 0.5], compress_fn=fake)
    assert fake.calls == [("l1", 0.3, True)]  # its scores come from the sweep's cache
    assert [c.status for c in result.cells] == ["skipped", "skipped", "ran", "skipped"]
    assert (sweep / "lrp-30" / "manifest.json").read_text() == kept
    assert len(result.rows) == 4


def test_finished_cells_made_with_other_options_are_refused(tmp_path):
    fake = FakeCompress()
    run_sweep(base_config(tmp_path), ["l1"], [0.3], compress_fn=fake)
    with pytest.raises(EdgepruneError, match=r"other options \(epochs 0.2 vs 1.0\).*--overwrite"):
        run_sweep(dataclasses.replace(base_config(tmp_path), epochs=1.0), ["l1"], [0.3],
                  compress_fn=fake)
    fake.calls.clear()
    run_sweep(dataclasses.replace(base_config(tmp_path), epochs=1.0), ["l1"], [0.3],
              overwrite=True, compress_fn=fake)
    assert fake.calls == [("l1", 0.3, True)]


def test_a_failing_cell_does_not_stop_the_others(tmp_path):
    fake = FakeCompress()

    def flaky(cfg, overwrite=False, scores=None):
        if cfg.flops_reduction == 0.5:
            raise EdgepruneError("at most 42.0% of the MACs can be removed")
        return fake(cfg, overwrite, scores)

    with pytest.raises(EdgepruneError, match=r"2 of 4 sweep cells failed \(lrp-50, l1-50: at "
                       r"most 42.0% .*sweep.md compares the others"):
        run_sweep(base_config(tmp_path), ["lrp", "l1"], [0.3, 0.5], compress_fn=flaky)
    record = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [c["status"] for c in record["cells"]] == ["ran", "failed", "ran", "failed"]
    assert len(record["rows"]) == 2 and (tmp_path / "sweep" / "pareto.png").is_file()
    fake.calls.clear()
    run_sweep(base_config(tmp_path), ["lrp", "l1"], [0.3, 0.5], compress_fn=fake)  # retry
    assert [c[:2] for c in fake.calls] == [("lrp", 0.5), ("l1", 0.5)]


@pytest.mark.parametrize("criteria, flops, match", [
    (["lrpp"], [0.3], "unknown criterion 'lrpp'; did you mean 'lrp'"),
])
def test_bad_grid_fails_before_running(tmp_path, criteria, flops, match):
    fake = FakeCompress()
    with pytest.raises(EdgepruneError, match=match):
        run_sweep(base_config(tmp_path), criteria, flops, compress_fn=fake)
    assert fake.calls == []


def test_flops_list_is_checked():
    assert parse_flops("0.5, 0.3,0.5") == [0.3, 0.5]
    with pytest.raises(EdgepruneError, match="between 0 and 0.95"):
        parse_flops("0.3,1.2")
    with pytest.raises(EdgepruneError, match="'half' is not a number"):
        parse_flops("half")


def test_sweep_command_takes_compress_options_and_config(tmp_path, monkeypatch, capsys):
    fake = FakeCompress()
    monkeypatch.setattr(edgeprune.jobs.sweep, "compress", fake)
    config = tmp_path / "edgeprune.toml"
    config.write_text(dump_config(CompressConfig(model="democnn", dataset="synthetic", lr=0.5,
                                                 epochs=3, formats=("onnx",))))
    code, out, err = run_cli(
        capsys, "sweep", "--criteria", "l1,lrp", "--flops", "0.3", "--config", str(config),
        "--epochs", "0.2", "--out", str(tmp_path / "sw"), "--quiet", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [c["status"] for c in result["cells"]] == ["ran", "ran"]
    cell_cfg = json.loads((tmp_path / "sw" / "l1-30" / "config.json").read_text())
    assert (cell_cfg["lr"], cell_cfg["epochs"], cell_cfg["formats"]) == (0.5, 0.2, ["onnx"])
    assert cell_cfg["criterion"] == "l1" and cell_cfg["flops_reduction"] == 0.3
    assert cell_cfg["out"] == str(tmp_path / "sw" / "l1-30")
    assert result["latency_format"] == "onnx"  # the only format exported
    code, out, err = run_cli(capsys, "sweep", "--criteria", "l1,lrp", "--flops", "0.3",
                                   "--config", str(config), "--epochs", "0.2", "--out",
                                   str(tmp_path / "sw"))
    assert code == 0, err
    assert "0 ran, 2 already finished" in " ".join(out.split())


@pytest.mark.slow
def test_real_sweep_resumes(tmp_path, tiny_checkpoint):
    """2 criteria x 2 FLOPs levels of real compress runs; one cell deleted, only it reruns."""
    base = CompressConfig(model=str(tiny_checkpoint), dataset="synthetic", epochs=0.2,
                          score_samples=32, bench_runs=3, bench_seconds=0.05,
                          formats=("onnx",), out=str(tmp_path / "sweep"))
    first = run_sweep(base, ["lrp", "l1"], [0.3, 0.5])
    assert [c.status for c in first.cells] == ["ran"] * 4
    assert first.files["plot"].read_bytes().startswith(PNG)
    assert any(r["pareto_latency"] for r in first.rows)
    sweep = tmp_path / "sweep"
    stamps = {c.name: (sweep / c.name / "manifest.json").stat().st_mtime_ns
              for c in first.cells}
    shutil.rmtree(sweep / "lrp-50")
    second = run_sweep(base, ["lrp", "l1"], [0.3, 0.5])
    assert [c.status for c in second.cells] == ["skipped", "ran", "skipped", "skipped"]
    for name, stamp in stamps.items():
        if name != "lrp-50":
            assert (sweep / name / "manifest.json").stat().st_mtime_ns == stamp
    assert len(second.rows) == 4
