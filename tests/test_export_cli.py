"""`edgeprune export`: the command runs the library end to end on a checkpoint and refuses bad
input before writing anything."""

from __future__ import annotations

import json
import sys

import pytest
import typer
from typer.testing import CliRunner

from edgeprune.cli.export import export
from edgeprune.errors import EdgepruneError
from edgeprune.jobs.export import default_stem, export_files

app = typer.Typer()
app.command()(export)
app.command("noop")(lambda: None)  # two commands, so `export` is a subcommand as in edgeprune


def invoke(*args: str):
    return CliRunner().invoke(app, ["export", *args])


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "files"
    result = invoke(str(tiny_checkpoint), "--dataset", "synthetic", "--format", "onnx,tflite",
                    "--precision", "fp32,int8", "--calibration-samples", "64",
                    "--eval-samples", "128", "--out", str(out), "--nhwc", "--opset", "17",
                    "--dynamic-batch", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), out


def test_export_command_writes_verified_files(exported):
    rows, out = exported
    assert [(r["format"], r["precision"]) for r in rows] == [
        ("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8")]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        n + s for n in ("tiny.onnx", "tiny.int8.onnx", "tiny.tflite", "tiny.int8.tflite")
        for s in ("", ".json"))
    for r in rows:
        assert r["verified"] and r["eval_samples"] == 128 and r["accuracy"] > 0.9
    by = {(r["format"], r["precision"]): r for r in rows}
    assert by[("onnx", "fp32")]["details"]["opset"] == 17
    assert by[("onnx", "int8")]["details"]["dynamic_batch"] is True
    assert by[("tflite", "int8")]["details"]["layout"] == "NHWC"
    assert by[("tflite", "int8")]["details"]["calibration_samples"] == 64
    meta = json.loads((out / "tiny.int8.tflite.json").read_text())
    assert meta["input_spec"]["layout"] == "NHWC" and meta["input_shape"] == [1, 16, 16, 1]


def test_table_output(tiny_checkpoint, tmp_path):
    result = invoke(str(tiny_checkpoint), "--dataset", "synthetic", "--format", "onnx",
                    "--eval-samples", "0", "--out", str(tmp_path), "--quiet")
    assert result.exit_code == 0, result.output
    assert "tiny.onnx" in result.stdout and "max |diff|" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx", "tiny.onnx.json"]


def test_dataset_shape_mismatch_refused(tiny_checkpoint, tmp_path):
    result = invoke(str(tiny_checkpoint), "--dataset", "demo", "--out", str(tmp_path / "o"))
    assert isinstance(result.exception, EdgepruneError)
    assert "expects 1x16x16 inputs but dataset demo gives 1x28x28" in str(result.exception)
    assert not (tmp_path / "o").exists()


def test_too_few_calibration_samples_refused(tiny_checkpoint, tmp_path):
    result = invoke(str(tiny_checkpoint), "--dataset", "synthetic", "--precision", "int8",
                    "--calibration-samples", "10", "--out", str(tmp_path / "o"))
    assert isinstance(result.exception, EdgepruneError)
    assert "at least 64 real samples, got 10" in str(result.exception)
    assert not (tmp_path / "o").exists()


def test_unknown_precision_refused_before_loading(tmp_path):
    with pytest.raises(EdgepruneError, match="unknown precision 'fp8'"):
        export_files(model="no/such/model.pt", precisions="fp32,fp8", out=tmp_path)


def test_default_stem():
    assert default_stem(None) == default_stem("demo") == "demo"
    assert default_stem("torchvision:resnet18") == "resnet18"
    assert default_stem("mypkg.models:small_net") == "small_net"
    assert default_stem("runs/x/model.pt") == "model"


def test_registered_in_edgeprune(capsys, tmp_path):
    """Through the registered command, `edgeprune export` errors are one line, exit 2."""
    from edgeprune.cli import app as real_app
    from edgeprune.cli import main

    names = [c.name or c.callback.__name__ for c in real_app.registered_commands]
    if "export" not in names:
        pytest.skip("edgeprune.cli does not register `export` yet")
    old, sys.argv = sys.argv, ["edgeprune", "export", "demo", "--precision", "int9"]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = old
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "unknown precision 'int9'" in err and "Traceback" not in err
