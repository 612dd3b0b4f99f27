"""Every numeric option of every command has a documented range, checked before any work.

The options are found by walking the real command tree, so an option added without a range
fails here; Hypothesis then feeds each one values outside its range (negatives, zero, huge
numbers, NaN, infinity, non-numbers) through `edgeprune.cli.main` in-process and requires one
line of error output, exit code 2 and nothing created in the working or runs folder. The same
ranges hold for values from a TOML config (`--config`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pytest
import typer
from helpers import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edgeprune.cli import app, main
from edgeprune.errors import EdgepruneError
from edgeprune.jobs.bounds import BOUNDS, MAX_SEED, Bound, bound_of
from edgeprune.jobs.config import CompressConfig, load_config, merge

REQUIRED = {  # what each command needs besides the option under test, to get to parsing it
    ("bench",): ["model.onnx"],
    ("deploy",): ["run", "--device", "ssh://pi@raspberrypi"],
    ("report",): ["run"],
    ("targets", "calibrate"): ["--device", "ssh://pi@raspberrypi", "--name", "pi",
                               "--out", "pi.toml"],
}


@dataclass(frozen=True)
class NumericOption:
    command: tuple[str, ...]
    name: str
    flag: str
    bound: Bound

    def args(self, value: str) -> list[str]:
        runs = ["--runs-dir", "runs"] if self.command in (("compress",), ("sweep",)) else []
        return [*self.command, f"{self.flag}={value}", *REQUIRED.get(self.command, []), *runs]


def numeric_options() -> list[NumericOption]:
    """Every int or float option of every command, with the range it declares."""
    found: list[NumericOption] = []

    def walk(command, path: tuple[str, ...]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))
        for p in command.params:
            descriptor = getattr(p, "type_descriptor", None)
            if descriptor is not None and descriptor.annotation in (int, float):
                assert p.name in BOUNDS, f"{' '.join(path)} --{p.name} has no range in BOUNDS"
                found.append(NumericOption(path, p.name, max(p.opts, key=len),
                                           bound_of(p.name, path[-1])))

    walk(typer.main.get_command(app), ())
    return found


OPTIONS = numeric_options()


def outside(bound: Bound) -> st.SearchStrategy[str]:
    """Command-line texts of values outside `bound`: below, above, NaN, infinities, and
    texts that are not numbers at all (or not integers, for a count)."""
    below = st.floats(max_value=bound.low, allow_nan=False)
    above = st.floats(min_value=bound.high, allow_nan=False)
    texts = [st.one_of(below, above).filter(lambda v: not bound.contains(v)).map(repr),
             st.sampled_from(["nan", "-nan", "inf", "-inf", "infinity", "abc", "", "1,5",
                              "0x10", "1e", "--", "½", "1_000_000_000_000_000_000_000"])]
    if bound.integer:
        low, high = math.floor(bound.low), math.ceil(bound.high)
        texts += [st.integers(max_value=low - 1).map(str),
                  st.integers(min_value=high + 1).map(str),
                  st.sampled_from([str(10**20), str(-(10**20)), "1.5", "1e3"])]
    return st.one_of(texts)


def run_main(*args: str) -> tuple[int, str, str]:
    """`edgeprune ARGS` through the real entry point, in-process, in CliRunner's isolation."""
    runner = CliRunner()
    with runner.isolation() as streams:
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        out, err = streams[0].getvalue().decode(), streams[1].getvalue().decode()
    return code, out, err


def assert_refused(option: NumericOption, code: int, out: str, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (option, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), (option, err)
    assert option.flag in lines[0], (option, err)
    assert out == ""


def test_every_numeric_option_has_a_range_shown_in_its_help():
    assert len(OPTIONS) > 80
    for option in {o.command: o for o in OPTIONS}.values():
        code, out, _ = run_main(*option.command, "--help")
        assert code == 0 and "(range:" in out.replace("\n", " ")


@settings(max_examples=250, deadline=2000, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_values_outside_the_range_are_one_line_exit_2_and_create_nothing(tmp_path, data):
    option = data.draw(st.sampled_from(OPTIONS), label="option")
    value = data.draw(outside(option.bound), label="value")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code, out, err = run_main(*option.args(value))
    finally:
        os.chdir(cwd)
    assert_refused(option, code, out, err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: f"{'-'.join(o.command)}{o.flag}")
def test_each_option_refuses_both_ends_and_nan(tmp_path, monkeypatch, option):
    """The deterministic edges of every range, so no option is left to chance."""
    monkeypatch.chdir(tmp_path)
    b = option.bound
    step = 1 if b.integer else 1e-9 * max(1.0, abs(b.high))
    below = b.low if b.low_open else b.low - (1 if b.integer else max(1e-9, abs(b.low) * 1e-9))
    above = b.high if b.high_open else b.high + step
    for value in (below, above, "nan", "abc"):
        text = str(int(value)) if b.integer and not isinstance(value, str) else str(value)
        assert_refused(option, *run_main(*option.args(text)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "match"), [
    (["compress", "--bench-runs", "99999999999999999999"], "--bench-runs 99999999999999999999 "
     "must be at least 1, at most 1000000"),
    (["bench", "m.onnx", "--threads", "100000"], "--threads 100000 must be at least 1"),
    (["explain", "--keep-ratio", "2"], "--keep-ratio 2.0 must be more than 0, at most 1"),
    (["compress", "--seed", "99999999999999999999"], f"at most {MAX_SEED}"),
    (["prune", "--round-to", "0"], "--round-to 0 must be at least 1"),
    (["explain", "--am-steps", "-1"], "--am-steps -1 must be at least 1"),
    (["train", "--epochs", "0"], "--epochs 0.0 must be more than 0"),
    (["compress", "--max-drop", "inf"], "--max-drop inf must be at least 0"),
])
def test_the_reported_values_are_refused_before_any_work(capsys, tmp_path, monkeypatch,
                                                          args, match):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *args, "--runs-dir", "runs") if args[0] == "compress" \
        else run_cli(capsys, *args)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the same ranges in a config

CONFIG_FIELDS = sorted(n for n in BOUNDS if hasattr(CompressConfig(), n))


@settings(max_examples=150, deadline=None, database=None)
@given(data=st.data())
def test_a_config_value_outside_the_range_is_refused_like_the_flag(data):
    name = data.draw(st.sampled_from(CONFIG_FIELDS), label="key")
    bound = bound_of(name)
    values = st.one_of(st.integers(max_value=math.floor(bound.low) - 1),
                       st.integers(min_value=math.ceil(bound.high) + 1)) if bound.integer \
        else st.one_of(st.floats(max_value=bound.low), st.floats(min_value=bound.high))
    values = values.filter(lambda v: not bound.contains(v))
    value = data.draw(values, label="value")
    with pytest.raises(EdgepruneError) as err:
        merge({name: value}, {})
    text = str(err.value)
    assert "\n" not in text and (name in text or name.replace("_", "-") in text), text


def test_a_config_file_with_huge_counts_is_refused_and_leaves_no_run(tmp_path, capsys):
    config = tmp_path / "c.toml"
    for line, match in [("bench_runs = 99999999999999999999", "--bench-runs"),
                        ("threads = 100000", "--threads 100000"),
                        ("seed = 99999999999999999999", "--seed"),
                        ("bench-rounds = 0", "--bench-rounds 0")]:
        config.write_text(line + "\n")
        code, _, err = run_cli(capsys, "compress", "--config", str(config), "--runs-dir",
                               str(tmp_path / "runs"))
        assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "runs").exists()
    config.write_text("threads = 2\nseed = 4294967295\n")
    assert load_config(config) == {"threads": 2, "seed": MAX_SEED}


def test_bounds_describe_themselves():
    assert Bound(1, 10).expected() == "at least 1, at most 10"
    assert Bound(0, 1, integer=False, low_open=True, high_open=True).expected() == \
        "between 0 and 1"
    assert Bound(0, 5, zero="off").expected() == "0 (off) or more, at most 5"
    assert Bound(0, 1, integer=False, low_open=True).shown() == "0<x<=1"
    assert not Bound(0, 1, integer=False).contains(float("nan"))
    assert not Bound(0, 1).contains(True)
