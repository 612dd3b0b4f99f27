"""Compress configs as TOML: loading, key/type errors, flag precedence, config.toml round trip."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from edgeprune import cli
from edgeprune.cli.options import config_from_cli
from edgeprune.errors import EdgepruneError
from edgeprune.jobs.config import (
    CompressConfig,
    config_from_dict,
    dump_config,
    load_config,
    merge,
)


def write(tmp_path: Path, text: str, name: str = "edgeprune.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_accepts_dashes_and_underscores(tmp_path):
    path = write(tmp_path, 'target = "rpi5"\nflops-reduction = 0.3\nbench_runs = 7\n'
                           'formats = ["onnx"]\nepochs = 2\nverify = false\n')
    assert load_config(path) == {"target": "rpi5", "flops_reduction": 0.3, "bench_runs": 7,
                                 "formats": ("onnx",), "epochs": 2.0, "verify": False}


@pytest.mark.parametrize("text, match", [
    ("flops_reductin = 0.3\n", "unknown key 'flops_reductin'; did you mean 'flops_reduction'?"),
    ("bench-run = 3\n", "unknown key 'bench-run'; did you mean 'bench_runs'?"),
    ("[compress]\nmodel = 'x'\n", "unknown key 'compress'"),
])
def test_unknown_keys_are_named_with_a_suggestion(tmp_path, text, match):
    with pytest.raises(EdgepruneError, match=match.replace("?", r"\?").replace("[", r"\[")):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("text, match", [
    ('flops_reduction = "half"\n', "'flops_reduction' must be a number, not 'half'"),
    ("batch_size = 1.5\n", "'batch_size' must be an integer, not 1.5"),
    ('verify = "yes"\n', "'verify' must be true or false"),
    ("formats = 3\n", "'formats' must be a list of strings"),
    ("seed = true\n", "'seed' must be an integer, not True"),
    ("bench-seconds = [1]\n", "'bench-seconds' must be a number"),
])
def test_wrong_types_are_named(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(EdgepruneError, match=match) as exc:
        load_config(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_bad_toml_and_missing_file_are_one_line_errors(tmp_path):
    with pytest.raises(EdgepruneError, match="is not valid TOML"):
        load_config(write(tmp_path, "model = \n"))
    with pytest.raises(EdgepruneError, match="cannot read config"):
        load_config(tmp_path / "nope.toml")


def test_precedence_defaults_then_file_then_flags(tmp_path):
    file = load_config(write(tmp_path, 'criterion = "l1"\nlr = 0.5\nepochs = 3\n'))
    cfg = merge(file, {"lr": 0.1, "weights": tmp_path / "w.pt"})
    assert (cfg.criterion, cfg.lr, cfg.epochs) == ("l1", 0.1, 3.0)
    assert cfg.weights == str(tmp_path / "w.pt")  # paths from the CLI become strings
    assert cfg.batch_size == CompressConfig().batch_size
    with pytest.raises(EdgepruneError, match="command line: 'lr' must be a number"):
        merge(file, {"lr": "fast"})


ODD = CompressConfig(model='dir "x"\\model\u00e9.pt', weights="w.pt", input_size="3x32x32",
                     dataset="imagefolder", data_dir="/data/tab\there", target="rpi5",
                     criterion="l2", flops_reduction=0.35, score_samples=64, epochs=0.2,
                     lr=1e-05, batch_size=32, formats=("tflite",), verify=False, bench_runs=3,
                     bench_seconds=0.05, eval_limit=100, seed=7, name="n", out=None,
                     runs_dir="runs")


@pytest.mark.parametrize("cfg", [CompressConfig(), ODD], ids=["defaults", "every-type"])
def test_dump_then_load_gives_the_same_config(tmp_path, cfg):
    text = dump_config(cfg)
    pytest.importorskip("tomllib").loads(text)  # valid TOML for any reader (Python 3.11+)
    assert merge(load_config(write(tmp_path, text, "config.toml")), {}) == cfg
    assert "# out =" in text  # unset options are listed, commented out
    # a run's config.json (lists, nulls) gives the same config too
    as_json = json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert config_from_dict(as_json) == cfg


def _probe_app() -> typer.Typer:
    """A command with flags named like CompressConfig fields, returning its resolved config."""
    app = typer.Typer()

    @app.command()
    def probe(ctx: typer.Context, lr: float = 0.01, batch_size: int = 128,
              criterion: str = "lrp", formats: str = "onnx,tflite",
              config: Annotated[Path | None, typer.Option("--config")] = None) -> None:
        typer.echo(json.dumps(dataclasses.asdict(config_from_cli(ctx, config))))

    return app


def test_config_from_cli_lets_only_explicit_flags_override(tmp_path):
    path = write(tmp_path, 'lr = 0.5\nbatch_size = 64\ncriterion = "l1"\n')
    runner = CliRunner()
    out = runner.invoke(_probe_app(), ["--config", str(path), "--lr", "0.2"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    assert (got["lr"], got["batch_size"], got["criterion"]) == (0.2, 64, "l1")
    assert got["formats"] == ["onnx", "tflite"]  # not in the file: the dataclass default
    # explicitly given with its default value still overrides the file
    got = json.loads(runner.invoke(_probe_app(), ["--config", str(path), "--batch-size",
                                                  "128"]).output)
    assert got["batch_size"] == 128
    # without --config every flag's value is used, as before
    got = json.loads(runner.invoke(_probe_app(), ["--formats", "onnx"]).output)
    assert (got["formats"], got["lr"]) == (["onnx"], 0.01)


class _Captured(Exception):
    pass


def test_compress_cli_reads_config_and_flags_override(tmp_path, monkeypatch, capsys):
    """The real `edgeprune compress --config`, stopped at the pipeline call."""
    import edgeprune.jobs.compress

    seen = {}

    def fake(cfg, overwrite=False, **_):
        seen["cfg"] = cfg
        raise _Captured

    monkeypatch.setattr(edgeprune.jobs.compress, "compress", fake)
    path = write(tmp_path, dump_config(dataclasses.replace(ODD, out=str(tmp_path / "run"))))
    monkeypatch.setattr(sys, "argv", ["edgeprune", "compress", "--config", str(path),
                                      "--seed", "3"])
    with pytest.raises(_Captured):
        cli.app()
    assert seen["cfg"] == dataclasses.replace(ODD, out=str(tmp_path / "run"), seed=3)
    monkeypatch.setattr(sys, "argv", ["edgeprune", "compress", "--config",
                                      str(write(tmp_path, "lr = 'x'\n", "bad.toml"))])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2 and "'lr' must be a number" in capsys.readouterr().err
