"""Mistakes on the command line are one line naming the option (or argument) and the fix, with
exit code 2, instead of Typer's usage box; and the other inputs the CLI takes by name (a
--weights file, a run folder's summary.json, a --config file) fail the same way."""

from __future__ import annotations

import json

import pytest
from helpers import FINISHED_RUN, assert_one_line_error, run_cli


@pytest.mark.parametrize(("args", "match"), [
    (["compress", "--nope"], "no such option: --nope"),
    (["compress", "--nope"], "`edgeprune compress --help` lists what it takes"),
    (["bench", "m.onnx", "--bench-runs", "1"], "no such option: --bench-runs"),
    (["bench"], "missing argument 'models'; `edgeprune bench --help` lists"),
    (["targets", "calibrate", "--name", "pi"], "missing option '--device'"),
    (["bench", "m.onnx", "--threads", "four"],
     "--threads: input should be a valid integer"),
    (["bench", "m.onnx", "--threads", "four"], "give an integer at least 1"),
    (["explain", "--keep-ratio", "half"], "--keep-ratio: input should be a valid number"),
    (["score", "--criterion"], "option '--criterion' requires an argument"),
    (["nonsense"], "no such command 'nonsense'"),
    (["compress", "--verify=maybe"], "--verify"),
    # the model given the way another command takes it: the fix is spelled out
    (["compress", "torchvision:resnet18"], "edgeprune compress takes the model as an option, "
     "not an argument: `edgeprune compress --model torchvision:resnet18`"),
    (["train", "resnet20"], "`edgeprune train --model resnet20`"),
    (["prune", "--model", "demo"], "edgeprune prune takes the model as its first argument, "
     "not --model: `edgeprune prune MODEL [OPTIONS]`"),
    (["compress", "rpi4"], "got unexpected extra argument(s) (rpi4); `edgeprune compress"),
])
def test_a_parse_error_is_one_line_naming_the_option(capsys, tmp_path, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, match)
    assert len(err.strip().splitlines()) == 1 and "╭" not in err and "Usage:" not in err
    assert out == "" and list(tmp_path.iterdir()) == []


def test_help_and_no_arguments_still_show_the_help(capsys):
    code, out, _ = run_cli(capsys, "bench", "--help")
    assert code == 0 and "--threads" in out and "(range: 1<=x<=" in out
    code, out, err = run_cli(capsys)
    assert code == 2 and "Commands" in out + err


def test_export_refuses_a_weights_file_that_does_not_exist(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "export", "demo", "--weights", "/nonexistent/w.pt")
    assert_one_line_error(code, err, "--weights: file '/nonexistent/w.pt' does not exist")
    code, _, err = run_cli(capsys, "export", "demo", "--weights", str(tmp_path))
    assert_one_line_error(code, err, "is a directory")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", ["[]", "3", '"summary"'])
def test_report_on_a_summary_that_is_not_an_object_is_one_line(capsys, tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(FINISHED_RUN))
    (run / "summary.json").write_text(content)
    code, _, err = run_cli(capsys, "report", str(run))
    assert_one_line_error(code, err, "summary.json holds a JSON")
    assert not (run / "report.html").exists()


def test_a_config_that_is_not_utf8_is_one_line_naming_the_file(capsys, tmp_path):
    config = tmp_path / "latin1.toml"
    config.write_bytes('name = "café"\n'.encode("latin-1"))
    code, _, err = run_cli(capsys, "compress", "--config", str(config), "--runs-dir",
                           str(tmp_path / "runs"))
    assert_one_line_error(code, err, f"config {config} is not UTF-8 text")
    assert "unexpected" not in err and not (tmp_path / "runs").exists()
