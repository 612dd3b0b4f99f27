"""Export stage: ONNX and TFLite files in every precision, written atomically with sidecars and
metadata, and verified against PyTorch.

Module fixtures export once and many tests read the results: an untrained democnn in fp32 on
real Fashion-MNIST images (parity), a democnn trained on the synthetic task in every precision
(accuracy, sizes, metadata, runtimes), and the shipped demo model in int8 (the issue's
accuracy and size thresholds). Failure tests use their own folders.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.data import load_demo_subset
from edgeprune.errors import EdgepruneError
from edgeprune.export import (
    EXPORTERS,
    Check,
    EvalSet,
    ExportError,
    ExportOptions,
    ExportResult,
    Runner,
    export_model,
    validate_outputs,
)
from edgeprune.export import (
    PRECISIONS as ALL_PRECISIONS,
)
from edgeprune.export.onnx import opset_for_onnxruntime
from edgeprune.export.precision import (
    MIN_CALIBRATION_SAMPLES,
    PREQUANTIZED,
)
from edgeprune.export.quiet import captured_stderr
from edgeprune.files import sha256_file
from edgeprune.models import create_model, demo_checkpoint_path, load_model
from edgeprune.spec import InputSpec

PRECISIONS = tuple(p for p in ALL_PRECISIONS if p not in PREQUANTIZED)
"""Precisions made from a float model (int8-qat needs a QAT model: see test_ship.py)."""

FORMATS = sorted(EXPORTERS)
TFLITE_RUNTIME_PYTHON = os.environ.get("EDGEPRUNE_TFLITE_RUNTIME_PYTHON")


@torch.library.custom_op("edgeprune_test::wiggle", mutates_args=())
def wiggle(x: torch.Tensor) -> torch.Tensor:
    """An op no exporter knows (a user's custom kernel)."""
    return x * 2


@wiggle.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Odd(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return wiggle(x)


class Wiggly(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.odd = Odd()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.odd(self.conv(x)).mean(dim=(2, 3))


class Gate(torch.nn.Module):
    """Data-dependent control flow: which branch runs depends on the input's values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) if x.sum() > 0 else -x.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, InputSpec]:
    """48 normalized Fashion-MNIST test images (1x28x28) and their spec."""
    bundle = load_demo_subset()
    x, _ = bundle.test.__getitems__(list(range(48)))
    return x, bundle.spec


@pytest.fixture(scope="module")
def exported(images, tmp_path_factory):
    """democnn (left in train mode on purpose) exported to both formats in fp32 once."""
    x, spec = images
    torch.manual_seed(0)
    model = create_model("democnn", 1, 10).train()
    before = copy.deepcopy(model.state_dict())
    out = tmp_path_factory.mktemp("export")
    results = export_model(model, spec, out, x[:32], formats=FORMATS)
    return model, before, {r.format: r for r in results}, out


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, synthetic):
    """democnn trained on the synthetic 4-class task, and that task's data."""
    return load_model(str(tiny_checkpoint)).model, synthetic


@pytest.fixture(scope="module")
def quantized(trained, tmp_path_factory):
    """The trained model in every format and precision, calibrated on 128 training images and
    evaluated on the 256 test images; keyed by (format, precision)."""
    model, data = trained
    x, y = data.test.__getitems__(list(range(len(data.test))))
    calib, _ = data.train.__getitems__(list(range(128)))
    out = tmp_path_factory.mktemp("quantized")
    results = export_model(model, data.spec, out, x[:32], formats=FORMATS, stem="tiny",
                           precisions=PRECISIONS, calibration=calib, eval_samples=(x, y),
                           summary={"pruned_from": "democnn", "flops_reduction": 0.5})
    return {(r.format, r.precision): r for r in results}, out, data


def listing(folder: Path) -> list[str]:
    """Every entry in `folder`, hidden temporaries included."""
    return sorted(os.listdir(folder)) if folder.exists() else []


def perturbed(exporter, offset: float):
    """A `runner` replacement for `exporter` whose outputs are shifted by `offset`."""
    original = type(exporter).runner

    def runner(path: Path, layout: str = "NCHW") -> Runner:
        inner = original(exporter, path, layout)
        return Runner(lambda x: inner(x) + offset, inner.input_name, inner.output_name)

    return runner


def run_file(path: Path, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """Run one (1, ...) input through a file with its runtime directly, not our runners;
    returns the raw output and the input tensor's description."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        return session.run(None, {inp.name: x})[0], {"shape": inp.shape, "type": inp.type}
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), detail


# ---------------------------------------------------------------- fp32 parity

@pytest.mark.parametrize("fmt", FORMATS)
def test_files_and_sidecar(exported, images, fmt):
    _, _, results, out = exported
    r: ExportResult = results[fmt]
    assert r.path == out / f"model.{fmt}" and r.path.is_file()
    assert r.sidecar == out / f"model.{fmt}.json"
    assert r.size_bytes == r.path.stat().st_size > 0
    assert r.path.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    meta = json.loads(r.sidecar.read_text())
    assert (meta["format"], meta["precision"], meta["layout"]) == (fmt, "fp32", "NCHW")
    assert meta["input_spec"] == images[1].to_dict()
    assert meta["labels"] == list(images[1].labels) and meta["compression"] is None
    assert meta["input_name"] and meta["output_name"]
    assert meta["input_shape"] == [1, 1, 28, 28] and meta["output_shape"] == [1, 10]
    assert meta["sha256"] == sha256_file(r.path)
    assert meta["verification"]["passed"] and meta["verification"]["samples"] == 32
    assert listing(out) == ["model.onnx", "model.onnx.json", "model.tflite", "model.tflite.json"]


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("fmt", FORMATS)
def test_outputs_match_pytorch(exported, fmt):
    r = exported[2][fmt]
    assert r.max_abs_diff <= 1e-4
    assert r.top1_agreement == 1.0 and r.verified
    assert r.accuracy is None  # no labels given
    assert r.wall_s > 0


def test_onnx_is_one_simplified_file(exported):
    import onnx
    from onnx.external_data_helper import uses_external_data

    r = exported[2]["onnx"]
    assert not list(r.path.parent.glob("*.data"))
    model = onnx.load(str(r.path), load_external_data=False)
    assert not any(uses_external_data(t) for t in model.graph.initializer)
    assert (r.details["opset"], r.details["exporter"]) == (18, "dynamo")
    assert 0 < r.details["nodes_after"] <= r.details["nodes_before"]
    assert len(model.graph.node) == r.details["nodes_after"]


def test_tflite_op_counts(exported):
    d = exported[2]["tflite"].details
    assert d["ops"]["CONV_2D"] >= 5 and d["ops"]["FULLY_CONNECTED"] == 1
    assert d["transposes"] == d["ops"].get("TRANSPOSE", 0) == 0  # one channel: no transpose
    assert d["layout"] == "NCHW"


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
    got, _ = run_file(results[fmt].path, fresh)
    np.testing.assert_allclose(got, reference, atol=1e-4, rtol=1e-4)
    assert np.abs(reference).max() > 1e-2  # the comparison is not trivially between zeros


# ---------------------------------------------------------------- every precision

def test_every_precision_is_published(quantized):
    results, out, _ = quantized
    assert set(results) == {(f, p) for f in FORMATS for p in PRECISIONS}
    names = {f"tiny{'' if p == 'fp32' else '.' + p}.{f}" for f, p in results}
    assert listing(out) == sorted(names | {n + ".json" for n in names})
    for (fmt, precision), r in results.items():
        meta = json.loads(r.sidecar.read_text())
        assert (meta["format"], meta["precision"], meta["file"]) == (fmt, precision, r.path.name)
        assert meta["compression"] == {"pruned_from": "democnn", "flops_reduction": 0.5}
        assert meta["verification"]["passed"] and meta["verification"]["eval_samples"] == 256


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_accuracy_next_to_pytorch(quantized, fmt, precision):
    r = quantized[0][(fmt, precision)]
    assert r.eval_samples == 256 and r.reference_accuracy > 0.9  # the model did learn
    drop = (r.reference_accuracy - r.accuracy) * 100
    assert precision == "fp32" or drop <= EXPORTERS[fmt].checks[precision].max_accuracy_drop
    if precision == "fp32":
        assert r.accuracy == r.reference_accuracy and r.max_abs_diff <= 1e-4
    else:
        assert r.max_abs_diff > 1e-6  # really a different number format


@pytest.mark.parametrize("fmt", FORMATS)
def test_sizes_shrink_with_precision(quantized, fmt):
    size = {p: quantized[0][(fmt, p)].size_bytes for p in PRECISIONS}
    assert 1.8 < size["fp32"] / size["fp16"] < 2.1
    assert size["fp32"] / size["int8"] >= 3.5
    assert size["fp32"] / size["int8-dynamic"] >= 3.5


def test_onnx_quantized_graphs(quantized):
    import onnx

    results = quantized[0]
    int8 = onnx.load(str(results[("onnx", "int8")].path))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    scales = [n for n in int8.graph.initializer if n.name.endswith("_scale") and n.dims]
    assert scales, "weights are quantized per channel (vector scales)"
    assert "ConvInteger" in {n.op_type for n in onnx.load(
        str(results[("onnx", "int8-dynamic")].path)).graph.node}
    fp16 = onnx.load(str(results[("onnx", "fp16")].path))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    for precision in PRECISIONS:  # every ONNX file keeps float32 input and output
        model = onnx.load(str(results[("onnx", precision)].path))
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_tflite_quantized_graphs(quantized):
    results = quantized[0]
    int8 = results[("tflite", "int8")].details
    assert int8["ops"]["QUANTIZE"] == 1 and int8["ops"]["DEQUANTIZE"] == 1  # float I/O
    assert int8["calibration_samples"] == 128 and int8["int8_io"] is False
    assert results[("tflite", "fp16")].details["ops"]["DEQUANTIZE"] >= 6  # one per weight
    assert "QUANTIZE" not in results[("tflite", "int8-dynamic")].details["ops"]


def test_onnx_metadata_props(quantized):
    import onnx

    r = quantized[0][("onnx", "int8")]
    props = {p.key: p.value for p in onnx.load(str(r.path)).metadata_props}
    spec = quantized[2].spec
    assert props["precision"] == "int8" and props["layout"] == "NCHW"
    assert json.loads(props["labels"]) == list(spec.labels)
    assert json.loads(props["input_shape"]) == [1, *spec.shape]
    assert json.loads(props["mean"]) == list(spec.mean)
    assert json.loads(props["std"]) == list(spec.std)
    assert json.loads(props["compression"]) == {"flops_reduction": 0.5,
                                                "pruned_from": "democnn"}
    assert InputSpec.from_dict(json.loads(props["input_spec"])) == spec


@pytest.mark.parametrize("precision", PRECISIONS)
def test_files_take_float_nchw_in_their_runtime(quantized, precision):
    """Each file straight in its runtime, fed as a device feeds it: float NCHW in."""
    results, _, data = quantized
    x, _ = data.test.__getitems__([0])
    for fmt in FORMATS:
        got, _ = run_file(results[(fmt, precision)].path, x.numpy())
        assert got.shape == (1, 4) and np.isfinite(got).all()


@pytest.mark.skipif(not TFLITE_RUNTIME_PYTHON, reason="set EDGEPRUNE_TFLITE_RUNTIME_PYTHON to "
                    "a python with tflite-runtime 2.14 and numpy<2 (see docs/EXPORT.md)")
def test_tflite_runtime_214_loads_every_file(quantized, int8_io_nhwc):
    """Older devices run tflite-runtime 2.14 (numpy 1.x), which cannot live beside this
    environment's numpy 2, so a separate interpreter loads and runs each file."""
    files = [str(r.path) for (fmt, _), r in quantized[0].items() if fmt == "tflite"]
    files.append(str(int8_io_nhwc[0].path))
    script = textwrap.dedent("""
        import sys, numpy as np, tflite_runtime
        from tflite_runtime.interpreter import Interpreter
        assert tflite_runtime.__version__.startswith("2.14"), tflite_runtime.__version__
        for path in sys.argv[1:]:
            it = Interpreter(model_path=path, num_threads=1)
            it.allocate_tensors()
            d = it.get_input_details()[0]
            it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
            it.invoke()
            out = it.get_tensor(it.get_output_details()[0]["index"])
            print(path, out.shape, out.dtype)
    """)
    proc = subprocess.run([TFLITE_RUNTIME_PYTHON, "-c", script, *files], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout.strip().splitlines()) == len(files)


# ---------------------------------------------------------------- the demo model's thresholds

@pytest.fixture(scope="module")
def demo_int8(tmp_path_factory):
    """The shipped demo model in fp32 and int8, evaluated on the 5,000 demo held-out images."""
    if not demo_checkpoint_path().is_file():
        pytest.fail(f"the demo checkpoint {demo_checkpoint_path()} is missing")
    loaded = load_model("demo")
    bundle = load_demo_subset()
    x, y = bundle.test.__getitems__(list(range(len(bundle.test))))
    calib, _ = bundle.train.__getitems__(list(range(0, len(bundle.train), 4)))
    out = tmp_path_factory.mktemp("demo")
    results = export_model(loaded.model, loaded.spec, out, x[:32], formats=FORMATS,
                           stem="demo", precisions=["fp32", "int8"], calibration=calib,
                           eval_samples=(x, y))
    return {(r.format, r.precision): r for r in results}


@pytest.mark.parametrize("fmt", FORMATS)
def test_demo_int8_within_one_point_and_smaller(demo_int8, fmt):
    fp32, int8 = demo_int8[(fmt, "fp32")], demo_int8[(fmt, "int8")]
    assert int8.eval_samples == 5000 and int8.reference_accuracy > 0.85
    assert (int8.reference_accuracy - int8.accuracy) * 100 <= 1.0
    assert fp32.size_bytes / int8.size_bytes >= 3.5


# ---------------------------------------------------------------- options

@pytest.fixture(scope="module")
def int8_io_nhwc(tmp_path_factory):
    """A 3-channel democnn as TFLite int8 with NHWC input and int8 input/output."""
    torch.manual_seed(0)
    spec = InputSpec(3, 16, 16, (0.5,) * 3, (0.25,) * 3, tuple("abcd"))
    model = create_model("democnn", 3, 4).eval()
    x = torch.randn(96, 3, 16, 16)
    out = tmp_path_factory.mktemp("nhwc")
    (r,) = export_model(model, spec, out, x[:16], formats=["tflite"], precisions=["int8"],
                        calibration=x, options=ExportOptions(nhwc=True, int8_io=True))
    return r, model, x


def test_nhwc_int8_io(int8_io_nhwc):
    r, model, x = int8_io_nhwc
    assert r.details["transposes"] == 0 and r.details["layout"] == "NHWC"
    assert r.details["int8_io"] and "QUANTIZE" not in r.details["ops"]
    meta = json.loads(r.sidecar.read_text())
    assert meta["layout"] == meta["input_spec"]["layout"] == "NHWC"
    assert meta["input_shape"] == [1, 16, 16, 3]
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(r.path))
    detail = interpreter.get_input_details()[0]
    assert detail["dtype"] == np.int8 and list(detail["shape"]) == [1, 16, 16, 3]
    assert detail["quantization"][0] > 0
    assert r.top1_agreement >= 0.9 and r.verified


def test_nchw_three_channels_has_one_transpose(tmp_path):
    torch.manual_seed(0)
    spec = InputSpec(3, 16, 16, (0.5,) * 3, (0.25,) * 3)
    (r,) = export_model(create_model("democnn", 3, 4), spec, tmp_path, torch.randn(4, 3, 16, 16),
                        formats=["tflite"])
    assert r.details["transposes"] == 1 and r.details["layout"] == "NCHW"


def test_onnx_opset_13_dynamic_batch_int8(trained, tmp_path):
    import onnx
    import onnxruntime as ort

    model, data = trained
    x, _ = data.train.__getitems__(list(range(80)))
    results = export_model(model, data.spec, tmp_path, x[:8], formats=["onnx"],
                           precisions=["fp32", "int8"], calibration=x,
                           options=ExportOptions(opset=13, dynamic_batch=True))
    reference = model(x[:5]).detach().numpy()
    for r in results:
        proto = onnx.load(str(r.path))
        assert r.details["opset"] == 13 and r.details["exporter"] == "torchscript"
        assert next(o.version for o in proto.opset_import if o.domain == "") == 13
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        assert json.loads(r.sidecar.read_text())["input_shape"] == [-1, 1, 16, 16]
        session = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": x[:5].numpy()})[0]
        assert got.shape == (5, 4)
        if r.precision == "fp32":
            np.testing.assert_allclose(got, reference, atol=1e-4, rtol=1e-4)


def test_opset_choice():
    assert opset_for_onnxruntime("1.20.1") == 18
    assert opset_for_onnxruntime("1.13.1") == 17
    assert opset_for_onnxruntime("1.11.0") == 15
    with pytest.raises(EdgepruneError, match="older than 1.6"):
        opset_for_onnxruntime("1.5.2")


def test_unsupported_opset_refused(images, tmp_path):
    x, spec = images
    with pytest.raises(EdgepruneError, match="opset 11 is not supported: choose 13 to"):
        export_model(create_model("democnn", 1, 10), spec, tmp_path, x[:2], formats=["onnx"],
                     options=ExportOptions(opset=11))
    assert listing(tmp_path) == []


# ---------------------------------------------------------------- failures leave nothing

@pytest.mark.parametrize("fmt", FORMATS)
def test_verification_failure_raises_and_writes_nothing(images, tmp_path, monkeypatch, fmt):
    x, spec = images
    exporter = EXPORTERS[fmt]
    monkeypatch.setattr(exporter, "runner", perturbed(exporter, 1e-2))
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=rf"^{fmt} fp32 failed verification: .*max\|diff\|"):
        export_model(create_model("democnn", 1, 10), spec, out, x[:4], formats=[fmt])
    assert listing(out) == []


def test_one_failed_file_publishes_none(images, tmp_path, monkeypatch):
    """The ONNX file passes, the TFLite one fails: neither is published."""
    x, spec = images
    monkeypatch.setattr(EXPORTERS["tflite"], "runner", perturbed(EXPORTERS["tflite"], 1e-2))
    with pytest.raises(ExportError, match="^tflite fp32"):
        export_model(create_model("democnn", 1, 10), spec, tmp_path, x[:2])
    assert listing(tmp_path) == []


def test_zero_tolerance_fails(images, tmp_path, monkeypatch):
    x, spec = images
    monkeypatch.setitem(EXPORTERS["onnx"].checks, "fp32", Check(0.0, 0.0, 1.0, None))
    monkeypatch.setattr(EXPORTERS["onnx"], "runner", perturbed(EXPORTERS["onnx"], 1e-7))
    with pytest.raises(ExportError, match=r"logits not within 0 \+ 0 x the sample's largest"):
        export_model(create_model("democnn", 1, 10), spec, tmp_path, x[:2], formats=["onnx"])
    assert listing(tmp_path) == []


def test_accuracy_loss_fails_with_numbers(trained, tmp_path, monkeypatch):
    model, data = trained
    x, y = data.test.__getitems__(list(range(100)))
    calib, _ = data.train.__getitems__(list(range(64)))
    monkeypatch.setitem(EXPORTERS["onnx"].checks, "int8", Check(None, 0.0, 0.9, -50.0))
    with pytest.raises(ExportError, match=r"^onnx int8 failed verification: top-1 \d+\.\d+% vs "
                       r"PyTorch's \d+\.\d+% on 100 labelled samples: .* more than -50 allowed"):
        export_model(model, data.spec, tmp_path, x[:8], formats=["onnx"],
                     precisions=["fp32", "int8"], calibration=calib, eval_samples=(x, y))
    assert listing(tmp_path) == []


def test_verify_false_publishes_with_numbers(images, tmp_path, monkeypatch, capsys):
    x, spec = images
    monkeypatch.setattr(EXPORTERS["onnx"], "runner", perturbed(EXPORTERS["onnx"], 1e-2))
    (r,) = export_model(create_model("democnn", 1, 10), spec, tmp_path, x[:2],
                        formats=["onnx"], verify=False)
    assert r.path.is_file() and r.max_abs_diff == pytest.approx(1e-2, rel=1e-3)
    assert not r.verified and not json.loads(r.sidecar.read_text())["verification"]["passed"]
    logged = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert logged.startswith("onnx fp32: ") and "max|diff| 1.0e-02" in logged
    assert "NOT VERIFIED" in logged


@pytest.mark.parametrize("fmt", FORMATS)
def test_unsupported_op_names_op_and_layer(tmp_path, fmt):
    spec = InputSpec(1, 8, 8, (0.0,), (1.0,))
    with pytest.raises(ExportError) as info:
        export_model(Wiggly(), spec, tmp_path, torch.randn(2, 1, 8, 8), formats=[fmt])
    message = str(info.value)
    assert message.startswith(f"{fmt} fp32 ") and "\n" not in message
    assert "op edgeprune_test.wiggle.default in layer 'odd' (Odd)" in message
    assert listing(tmp_path) == []


def test_data_dependent_control_flow_names_layer(tmp_path):
    spec = InputSpec(1, 8, 8, (0.0,), (1.0,))
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), Gate())
    with pytest.raises(ExportError, match=r"^cannot trace the model for export in layer '1' "
                       r"\(Gate\): GuardOnDataDependentSymNode"):
        export_model(model, spec, tmp_path, torch.randn(2, 1, 8, 8))
    assert listing(tmp_path) == []


def test_wrong_samples_shape(images, tmp_path):
    x, spec = images
    with pytest.raises(EdgepruneError, match=r"\(4, 1, 16, 16\).*\(N, 1, 28, 28\)"):
        export_model(create_model("democnn", 1, 10), spec, tmp_path, torch.zeros(4, 1, 16, 16))
    assert listing(tmp_path) == []


def test_too_few_calibration_samples_refused(images, tmp_path):
    x, spec = images
    with pytest.raises(EdgepruneError, match=rf"at least {MIN_CALIBRATION_SAMPLES} real "
                       r"samples, got 48"):
        export_model(create_model("democnn", 1, 10), spec, tmp_path, x[:4],
                     precisions=["int8"], calibration=x)
    with pytest.raises(EdgepruneError, match=r"at least .* got 4"):  # default: the samples
        export_model(create_model("democnn", 1, 10), spec, tmp_path, x[:4],
                     precisions=["int8"])
    assert listing(tmp_path) == []


@pytest.mark.parametrize("signal", [1.0, 1e-14])
def test_int8_of_vanishing_relu6_activations_is_refused_before_a_device_does(
        images, tmp_path, signal):
    """A ReLU6 output whose calibrated scale makes round(6 / scale) overflow int32 is what
    TFLite's kernels refuse when they prepare the op (an untrained MobileNetV2's file loaded
    on x86 and was refused on aarch64); the same model with a real signal exports."""
    from edgeprune.export.tflite_quant import vanishing_activations

    x, _ = images
    calib = torch.cat([x, x.flip(-1)])  # 96 images
    spec = InputSpec(1, 28, 28, (0.5,), (0.5,), tuple("abcd"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU6(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU6(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    with torch.no_grad():
        model[0].weight.mul_(signal)
        model[0].bias.mul_(signal)
    out = tmp_path / "out"
    if signal < 1:
        with pytest.raises(ExportError, match=r"tflite int8: 1 layer output never left .* "
                           r"\(first: ReLU6_1, scale .*e-1\d\); TFLite on ARM refuses"):
            export_model(model, spec, out, x[:8], formats=["tflite"], precisions=["int8"],
                         calibration=calib, verify=False)
        assert not out.exists()
        return
    result = export_model(model, spec, out, x[:8], formats=["tflite"], precisions=["int8"],
                          calibration=calib, verify=False)[0]
    assert vanishing_activations(result.path.read_bytes()) == []


@pytest.mark.parametrize("signal", [1e-9, 0.0])
def test_int8_of_a_dead_layer_gets_a_range_xnnpack_accepts(images, tmp_path, signal):
    """A conv whose outputs stay ~1e-9 (or 0) on every calibration sample (ResNet-50 pruned
    and exported without fine-tuning) got an output scale so small against its inputs' that
    XNNPACK refused the whole file ("failed to create XNNPACK runtime"); its range is widened
    to the smallest XNNPACK accepts, named in the sidecar, and the file verifies."""
    from edgeprune.export.tflite_quant import below_requantization_limit

    x, _ = images
    spec = InputSpec(1, 28, 28, (0.5,), (0.5,), tuple("abcd"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    with torch.no_grad():
        model[2].bias.fill_(-1e3)  # every channel dead after the ReLU ...
        model[2].bias[0] = 0.0
        model[2].weight[0].mul_(signal)  # ... but one, which carries `signal`
    result = export_model(model, spec, tmp_path / "out", x[:8], formats=["tflite"],
                          precisions=["int8"], calibration=torch.cat([x, x.flip(-1)]))[0]
    assert result.verified and result.top1_agreement == 1.0
    assert below_requantization_limit(result.path.read_bytes()) == {}
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["details"]["widened_ranges"] == ["ReLU_3"]


class _WithFourierPositions(torch.nn.Module):
    """A conv plus timm EdgeNeXt's Fourier position encoding, which divides positions by
    temperature powers from 1 to ~5600."""

    def __init__(self) -> None:
        super().__init__()
        from timm.models.edgenext import PositionalEncodingFourier

        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.positions = PositionalEncodingFourier(hidden_dim=8, dim=8)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = y + self.positions((y.shape[0], y.shape[2], y.shape[3]))
        return self.head(y.mean((2, 3)))


def test_int8_keeps_a_division_by_small_constants_in_float(images, tmp_path):
    """Quantized to int8 with the range 0..5600, EdgeNeXt's divisor 1 fell on its zero point
    and the TFLite kernel stopped ("div.cc data[i] != zero_point was not true"); DIV stays
    float."""
    pytest.importorskip("timm")
    x, _ = images
    spec = InputSpec(1, 28, 28, (0.5,), (0.5,), tuple("abcd"))
    torch.manual_seed(0)
    result = export_model(_WithFourierPositions().eval(), spec, tmp_path / "out", x[:8],
                          formats=["tflite"], precisions=["int8"],
                          calibration=torch.cat([x, x.flip(-1)]))[0]
    assert result.verified and result.details["ops"].get("DIV") == 2


def test_calibration_of_wrong_shape_refused(images, tmp_path):
    x, spec = images
    with pytest.raises(EdgepruneError, match=r"calibration samples have shape \(64, 3, 28, "
                       r"28\) but .* expects \(N, 1, 28, 28\) with N >= 64"):
        export_model(create_model("democnn", 1, 10), spec, tmp_path, x[:4],
                     precisions=["fp32", "int8"], calibration=torch.zeros(64, 3, 28, 28))
    assert listing(tmp_path) == []


def test_bad_eval_samples_refused(images, tmp_path):
    x, spec = images
    model = create_model("democnn", 1, 10)
    with pytest.raises(EdgepruneError, match="48 images but 3 labels"):
        export_model(model, spec, tmp_path, x[:4], eval_samples=(x, torch.zeros(3)))
    with pytest.raises(EdgepruneError, match=r"labels span 0\.\.12 but the model has 10"):
        export_model(model, spec, tmp_path, x[:4], eval_samples=(x[:2], torch.tensor([0, 12])))


def test_unknown_names_suggest(images, tmp_path):
    x, spec = images
    model = create_model("democnn", 1, 10)
    with pytest.raises(EdgepruneError, match="did you mean 'onnx'"):
        export_model(model, spec, tmp_path, x[:1], formats=["onxx"])
    with pytest.raises(EdgepruneError, match="unknown precision 'int4'; choose from fp32"):
        export_model(model, spec, tmp_path, x[:1], precisions=["int4"])


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

FP32 = Check(atol=1e-3, rtol=1e-3, min_agreement=1.0, max_accuracy_drop=None)


def test_validator_reports_and_raises():
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((5, 3)).astype(np.float32)
    reference = samples * 2
    ok = validate_outputs(reference, lambda s: s * 2, samples, replace(FP32, atol=1e-6, rtol=0))
    assert (ok.max_abs_diff, ok.top1_agreement, ok.num_samples, ok.passed) == (0, 1.0, 5, True)
    loose = validate_outputs(reference, lambda s: s * 2 + 0.5, samples, FP32, strict=False)
    assert loose.max_abs_diff == pytest.approx(0.5) and not loose.passed
    assert loose.top1_agreement == 1.0  # a constant shift keeps the argmax
    with pytest.raises(ExportError, match=r"^x fp32 failed verification: .*max\|diff\| 5\.00e-01"):
        validate_outputs(reference, lambda s: s * 2 + 0.5, samples, FP32, label="x fp32")
    with pytest.raises(ExportError, match="NaN"):
        validate_outputs(reference, lambda s: s * np.nan, samples, FP32)
    with pytest.raises(ExportError, match="output shape"):
        validate_outputs(reference, lambda s: s[:, :2], samples, FP32)


def test_validator_agreement_and_accuracy():
    reference = np.array([[3.0, 0.0], [0.0, 3.0], [1.0, 1.00001], [2.0, 0.0]])
    flipped = reference.copy()
    flipped[2] = [1.00001, 1.0]  # a near-tie flips within tolerance: not a disagreement
    m = validate_outputs(reference, lambda s: flipped[int(s[0, 0])][None], np.arange(
        4.0)[:, None], FP32)
    assert m.passed and m.top1_agreement == 0.75
    int8 = Check(None, 0.0, min_agreement=0.9, max_accuracy_drop=1.0)
    swapped = reference[:, ::-1]
    runner = lambda s: swapped[int(s[0, 0])][None]  # noqa: E731
    with pytest.raises(ExportError, match=r"top-1 agrees with PyTorch on 0\.0% of 4 samples"):
        validate_outputs(reference, runner, np.arange(4.0)[:, None], int8)
    labelled = EvalSet(np.arange(4.0)[:, None], np.array([0, 1, 0, 0]), 1.0)
    m = validate_outputs(reference, runner, np.arange(4.0)[:, None], int8, strict=False,
                         eval_set=labelled)
    assert m.accuracy == 0.25 and m.eval_samples == 4  # 1 of 4: only the near-tie right
    assert m.failures == ("top-1 25.00% vs PyTorch's 100.00% on 4 labelled samples: 75.00 "
                          "points lost (95% interval 30.06 to 95.44), more than 1 allowed",)


def test_captured_stderr_replays_only_on_failure(capfd):
    with captured_stderr():
        os.write(2, b"native chatter\n")
    assert "native chatter" not in capfd.readouterr().err
    with pytest.raises(RuntimeError), captured_stderr():
        os.write(2, b"native context\n")
        raise RuntimeError("boom")
    assert "native context" in capfd.readouterr().err


def test_a_quantization_aware_model_is_exported_on_its_own(images, tmp_path):
    x, spec = images
    model = create_model("democnn", 1, 10)
    with pytest.raises(EdgepruneError, match="int8-qat files come from an already quantized"):
        export_model(model, spec, tmp_path, x[:4], formats=["tflite"],
                     precisions=["fp32", "int8-qat"])
    with pytest.raises(EdgepruneError, match="onnx cannot be exported at int8-qat"):
        export_model(model, spec, tmp_path, x[:4], formats=["onnx"], precisions=["int8-qat"])
    with pytest.raises(ExportError, match="needs the PT2E quantizer"):
        export_model(model, spec, tmp_path, x[:4], formats=["tflite"], precisions=["int8-qat"])
    assert listing(tmp_path) == []
