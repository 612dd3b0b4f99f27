"""Export stage: ONNX and TFLite files written atomically, with sidecars, and matching PyTorch.

One democnn export per format is shared by most tests (module fixture); failure tests use
their own folders. Inputs are real Fashion-MNIST images from the embedded demo subset.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.checkpoint import sha256_file
from edgeprune.data import load_demo_subset
from edgeprune.errors import EdgepruneError
from edgeprune.export import (
    EXPORTERS,
    ExportError,
    ExportResult,
    Runner,
    export_model,
    validate_outputs,
)
from edgeprune.export.quiet import captured_stderr
from edgeprune.models import create_model
from edgeprune.spec import InputSpec

FORMATS = sorted(EXPORTERS)


@torch.library.custom_op("edgeprune_test::wiggle", mutates_args=())
def wiggle(x: torch.Tensor) -> torch.Tensor:
    """An op no exporter knows (a user's custom kernel)."""
    return x * 2


@wiggle.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Wiggly(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return wiggle(x).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, InputSpec]:
    """48 normalized Fashion-MNIST test images (1x28x28) and their spec."""
    bundle = load_demo_subset()
    x, _ = bundle.test.__getitems__(list(range(48)))
    return x, bundle.spec


@pytest.fixture(scope="module")
def exported(images, tmp_path_factory):
    """democnn (left in train mode on purpose) exported to both formats once."""
    x, spec = images
    torch.manual_seed(0)
    model = create_model("democnn", 1, 10).train()
    before = copy.deepcopy(model.state_dict())
    out = tmp_path_factory.mktemp("export")
    results = export_model(model, spec, out, x[:32], formats=FORMATS)
    return model, before, {r.format: r for r in results}, out


def listing(folder: Path) -> list[str]:
    """Every entry in `folder`, hidden temporaries included."""
    return sorted(os.listdir(folder)) if folder.exists() else []


def perturbed(exporter, offset: float):
    """A `runner` replacement for `exporter` whose outputs are shifted by `offset`."""
    original = type(exporter).runner

    def runner(path: Path) -> Runner:
        inner = original(exporter, path)
        return Runner(lambda x: inner(x) + offset, inner.input_name, inner.output_name)

    return runner


# ---------------------------------------------------------------- the shared export

@pytest.mark.parametrize("fmt", FORMATS)
def test_files_and_sidecar(exported, images, fmt):
    _, _, results, out = exported
    r: ExportResult = results[fmt]
    assert r.path == out / f"model.{fmt}" and r.path.is_file()
    assert r.sidecar == out / f"model.{fmt}.json"
    assert r.size_bytes == r.path.stat().st_size > 0
    meta = json.loads(r.sidecar.read_text())
    assert (meta["format"], meta["precision"], meta["layout"]) == (fmt, "fp32", "NCHW")
    assert meta["input_spec"] == images[1].to_dict()
    assert meta["input_name"] and meta["output_name"]
    assert meta["input_shape"] == [1, 1, 28, 28] and meta["output_shape"] == [1, 10]
    assert meta["sha256"] == sha256_file(r.path)
    assert meta["verification"]["passed"] and meta["verification"]["samples"] == 32
    assert listing(out) == ["model.onnx", "model.onnx.json", "model.tflite", "model.tflite.json"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_outputs_match_pytorch(exported, fmt):
    r = exported[2][fmt]
    assert r.max_abs_diff <= 1e-4
    assert r.top1_agreement == 1.0
    assert r.wall_s > 0


def test_onnx_is_one_simplified_file(exported):
    import onnx
    from onnx.external_data_helper import uses_external_data

    r = exported[2]["onnx"]
    assert not list(r.path.parent.glob("*.data"))
    model = onnx.load(str(r.path), load_external_data=False)
    assert not any(uses_external_data(t) for t in model.graph.initializer)
    assert r.details["opset"] == 18
    assert 0 < r.details["nodes_after"] <= r.details["nodes_before"]
    assert len(model.graph.node) == r.details["nodes_after"]


def test_tflite_op_counts(exported):
    d = exported[2]["tflite"].details
    assert d["ops"]["CONV_2D"] >= 5 and d["ops"]["FULLY_CONNECTED"] == 1
    assert d["transposes"] == d["ops"].get("TRANSPOSE", 0)


def test_input_model_untouched(exported):
    model, before, _, _ = exported
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_matches_torch_on_fresh_input(exported, images, fmt):
    """Independent of the validator and the exporters' runners: load the file directly."""
    model, _, results, _ = exported
    fresh = images[0][40:41].numpy()  # not among the 32 verification samples
    reference = copy.deepcopy(model).eval()(torch.from_numpy(fresh)).detach().numpy()
    path = str(results[fmt].path)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: fresh})[0]
    else:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], fresh)
        interpreter.invoke()
        got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, reference, atol=1e-4, rtol=1e-4)
    assert np.abs(reference).max() > 1e-2  # the comparison is not trivially between zeros


# ---------------------------------------------------------------- failures leave nothing

@pytest.mark.parametrize("fmt", FORMATS)
def test_verification_failure_raises_and_writes_nothing(images, tmp_path, monkeypatch, fmt):
    x, spec = images
    exporter = EXPORTERS[fmt]
    monkeypatch.setattr(exporter, "runner", perturbed(exporter, 1e-2))
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=rf"^{fmt} fp32 does not match PyTorch .*max\|diff\|"):
        export_model(create_model("democnn", 1, 10), spec, out, x[:4], formats=[fmt])
    assert listing(out) == []


def test_zero_tolerance_fails(images, tmp_path, monkeypatch):
    x, spec = images
    monkeypatch.setattr(EXPORTERS["onnx"], "atol", 0.0)
    monkeypatch.setattr(EXPORTERS["onnx"], "rtol", 0.0)
    monkeypatch.setattr(EXPORTERS["onnx"], "runner", perturbed(EXPORTERS["onnx"], 1e-7))
    with pytest.raises(ExportError, match="atol=0 rtol=0"):
        export_model(create_model("democnn", 1, 10), spec, tmp_path, x[:2], formats=["onnx"])
    assert listing(tmp_path) == []


def test_verify_false_publishes_with_numbers(images, tmp_path, monkeypatch, capsys):
    x, spec = images
    monkeypatch.setattr(EXPORTERS["onnx"], "runner", perturbed(EXPORTERS["onnx"], 1e-2))
    (r,) = export_model(create_model("democnn", 1, 10), spec, tmp_path, x[:2],
                        formats=["onnx"], verify=False)
    assert r.path.is_file() and r.max_abs_diff == pytest.approx(1e-2, rel=1e-3)
    assert not json.loads(r.sidecar.read_text())["verification"]["passed"]
    logged = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert logged.startswith("onnx fp32: ") and "max|diff| 1.0e-02" in logged
    assert "NOT VERIFIED" in logged


@pytest.mark.parametrize("fmt", FORMATS)
def test_unsupported_op_is_one_line_export_error(tmp_path, fmt):
    spec = InputSpec(1, 8, 8, (0.0,), (1.0,))
    with pytest.raises(ExportError) as info:
        export_model(Wiggly(), spec, tmp_path, torch.randn(2, 1, 8, 8), formats=[fmt])
    message = str(info.value)
    assert message.startswith(f"{fmt} fp32 ") and "wiggle" in message and "\n" not in message
    assert listing(tmp_path) == []


def test_wrong_samples_shape(images, tmp_path):
    x, spec = images
    with pytest.raises(EdgepruneError, match=r"\(4, 1, 16, 16\).*\(N, 1, 28, 28\)"):
        export_model(create_model("democnn", 1, 10), spec, tmp_path, torch.zeros(4, 1, 16, 16))
    assert listing(tmp_path) == []


def test_unknown_format_suggests(images, tmp_path):
    x, spec = images
    with pytest.raises(EdgepruneError, match="did you mean 'onnx'"):
        export_model(create_model("democnn", 1, 10), spec, tmp_path, x[:1], formats=["onxx"])


# ---------------------------------------------------------------- residual network

def test_resnet_with_residual_adds_exports(tmp_path):
    torch.manual_seed(0)
    spec = InputSpec(1, 16, 16, (0.5,), (0.25,))
    samples = torch.randn(8, 1, 16, 16)
    results = export_model(create_model("resnet20", 1, 10), spec, tmp_path, samples)
    by_format = {r.format: r for r in results}
    assert set(by_format) == set(FORMATS)
    assert all(r.max_abs_diff <= 1e-4 and r.top1_agreement == 1.0 for r in results)
    assert by_format["tflite"].details["ops"]["ADD"] == 9
    assert by_format["onnx"].details["nodes_after"] > 0


# ---------------------------------------------------------------- validator and helpers

def test_validator_reports_and_raises():
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((5, 3)).astype(np.float32)
    reference = samples * 2
    ok = validate_outputs(reference, lambda s: s * 2, samples, atol=1e-6, rtol=0)
    assert (ok.max_abs_diff, ok.top1_agreement, ok.num_samples, ok.passed) == (0, 1.0, 5, True)
    loose = validate_outputs(reference, lambda s: s * 2 + 0.5, samples, 1e-3, 1e-3,
                             strict=False)
    assert loose.max_abs_diff == pytest.approx(0.5) and not loose.passed
    assert loose.top1_agreement == 1.0  # a constant shift keeps the argmax
    with pytest.raises(ExportError, match=r"^x fp32 does not match .*max\|diff\| 5\.00e-01"):
        validate_outputs(reference, lambda s: s * 2 + 0.5, samples, 1e-3, 1e-3, label="x fp32")
    with pytest.raises(ExportError, match="NaN"):
        validate_outputs(reference, lambda s: s * np.nan, samples, 1e-3, 1e-3)
    with pytest.raises(ExportError, match="output shape"):
        validate_outputs(reference, lambda s: s[:, :2], samples, 1e-3, 1e-3)


def test_captured_stderr_replays_only_on_failure(capfd):
    with captured_stderr():
        os.write(2, b"native chatter\n")
    assert "native chatter" not in capfd.readouterr().err
    with pytest.raises(RuntimeError), captured_stderr():
        os.write(2, b"native context\n")
        raise RuntimeError("boom")
    assert "native context" in capfd.readouterr().err
