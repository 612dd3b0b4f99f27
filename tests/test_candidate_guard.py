"""A run survives its candidates: one file that cannot be made is recorded with its reason and
the best of the others ships; a failure after stages have finished keeps their files to resume
from; quantization-aware training captures random layers in their eval behaviour, so the
converter has no sampling op to lower."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

import edgeprune.jobs.compress as compress_job
import edgeprune.jobs.compress_files as compress_files
from edgeprune.export import ExportOptions, export_model
from edgeprune.jobs.compress import compress
from edgeprune.training import TrainConfig
from edgeprune.training.qat import train_qat

GUARD = dict(flops_reduction=0.5, dataset="synthetic", epochs=1, batch_size=32, lr=0.05,
             bench_runs=3, bench_seconds=0, bench_rounds=2, score_samples=64, criterion="l1",
             formats=("tflite",), qat_epochs=0)
LOWERING = "Lowering not found: aten.bernoulli.p"


def test_a_candidate_that_fails_to_export_is_listed_with_its_reason_and_the_run_ships(
        tiny_checkpoint, tmp_path, monkeypatch):
    real = compress_files.export_model

    def failing(model, spec, out_dir, samples, **kwargs):
        if kwargs.get("stem") == "pruned" and kwargs.get("precisions") == ["int8"]:
            raise RuntimeError(f"{LOWERING}\nwhile converting")
        return real(model, spec, out_dir, samples, **kwargs)

    monkeypatch.setattr(compress_files, "export_model", failing)
    result = compress(model=str(tiny_checkpoint), out=str(tmp_path / "run"), **GUARD)
    assert result.failed == [{"name": "pruned int8 tflite", "stage": "export",
                              "reason": f"RuntimeError: {LOWERING}"}]
    names = [c["name"] for c in result.candidates]
    assert names == ["dense fp32 tflite", "dense int8 tflite", "pruned fp32 tflite"]
    assert result.shipped is not None and result.shipped["name"] in names
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["failed"] == result.failed
    html = (result.run_dir / "report.html").read_text()
    assert f"failed at export: RuntimeError: {LOWERING}" in html
    assert not list((result.run_dir / "models").glob("pruned.int8*"))


def test_a_failure_after_finished_stages_keeps_their_files_and_the_run_resumes(
        tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "run"
    partial = tmp_path / ".run.partial"

    def broken(*args, **kwargs):
        raise RuntimeError("the bench runner crashed")

    monkeypatch.setattr(compress_job, "bench_candidates", broken)
    with pytest.raises(RuntimeError, match="the bench runner crashed"):
        compress(model=str(tiny_checkpoint), out=str(out), **GUARD)
    assert not out.exists() and partial.is_dir()
    verified = sorted(p.name for p in (partial / "models").glob("*.tflite"))
    assert "dense.tflite" in verified and "pruned.tflite" in verified
    stages = json.loads((partial / "manifest.json").read_text())["stages"]
    assert {"export-dense", "export-pruned"} <= set(stages)
    monkeypatch.undo()
    result = compress(model=str(tiny_checkpoint), out=str(out), **GUARD)
    assert result.shipped is not None and not partial.exists()


class _Residual(nn.Module):
    """A conv block with dropout and stochastic depth on its residual branch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.2))
        self.drop = StochasticDepth(0.3, "row")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        return self.head(x + self.drop(self.branch(x)))


def test_quantization_aware_training_of_a_model_with_stochastic_depth_converts(
        synthetic, tmp_path):
    torch.manual_seed(0)
    model = _Residual()
    qat = train_qat(model, synthetic, TrainConfig(epochs=0.25, lr=0.01, batch_size=32),
                    evaluate=False)
    ops = {str(n.target) for n in qat.model.graph.nodes if n.op == "call_function"}
    assert not any("bernoulli" in op for op in ops), ops
    x = torch.stack([synthetic.test[i][0] for i in range(8)])
    result = export_model(qat.model, synthetic.spec, tmp_path, x, formats=["tflite"],
                          stem="sd", verify=False, precisions=["int8-qat"],
                          options=ExportOptions(quantizer=qat.quantizer))[0]
    assert result.path.is_file() and result.size_bytes > 0
    assert model.drop.training  # the user's model is left as it was
