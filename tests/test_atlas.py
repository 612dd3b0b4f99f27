"""The filter atlas and the `explain` / `score` commands."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from helpers import assert_one_line_error, run_cli, sha

from edgeprune.criteria import get_criterion
from edgeprune.criteria.am_images import AMConfig
from edgeprune.errors import EdgepruneError
from edgeprune.jobs.explain import build_atlas, kept_channels
from edgeprune.models import create_model
from edgeprune.pruning import prune

SHAPE = (1, 16, 16)
FAST = AMConfig(steps=2)


pytestmark = pytest.mark.usefixtures("quiet_single_thread")


def _democnn():
    torch.manual_seed(0)
    return create_model("democnn", in_channels=1, num_classes=4).eval()


def test_kept_channels_are_the_ones_prune_keeps():
    """Same counts as prune() with compress's policy (uniform) and the same scores; in a chain
    without coupled layers the kept channels of a layer are its highest-scored ones."""
    model = _democnn()
    scores = get_criterion("random", seed=3).score(model)
    example = torch.zeros(1, *SHAPE)
    kept = kept_channels(model, example, scores, 0.5)
    result = prune(model, example, scores=scores, flops_reduction=0.5, global_ranking=False)
    for name, (_, after) in result.channels.items():
        assert len(kept[name]) == after, name
        top = torch.argsort(scores[name], descending=True)[:after]
        assert sorted(kept[name]) == sorted(top.tolist()), name
    assert kept["23"] == list(range(4))  # the classifier is protected


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_the_atlas_folder_gets_the_permissions_of_any_output(tmp_path, umask):
    """The published folder is not mkdtemp's private 0700, nor are its files 0600."""
    old = os.umask(umask)
    try:
        result = build_atlas(_democnn(), SHAPE, tmp_path / "atlas", criterion="l1", am=FAST,
                             layers=["0"], keep_ratio=0.5)
    finally:
        os.umask(old)
    assert stat.S_IMODE(result.out_dir.stat().st_mode) == 0o777 & ~umask
    for path in result.out_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


def test_atlas_writes_a_png_per_conv_layer_and_consistent_json(tmp_path):
    model = _democnn()
    result = build_atlas(model, SHAPE, tmp_path, criterion="actmax", am=FAST,
                         flops_reduction=0.5)
    convs = ["0", "3", "7", "10", "14", "17"]
    assert sorted(result.pngs) == sorted(convs)
    assert all(p.exists() and p.stat().st_size > 1000 for p in result.pngs.values())
    report = json.loads(result.json_path.read_text())
    assert report["criterion"] == "actmax" and report["am"]["steps"] == 2
    for name in convs:
        layer = report["layers"][name]
        assert sorted(layer["kept"] + layer["pruned"]) == list(range(layer["channels"]))
        grouped = [c for g in layer["groups"] for c in g]
        assert [g[0] for g in layer["groups"]] == sorted(
            layer["kept"], key=lambda c: grouped.index(c))  # one group per kept filter
        assert len(set(grouped)) == len(grouped)
        assert set(layer["invalid"]) <= set(layer["pruned"]) or not layer["invalid"]
    assert sum(len(report["layers"][n]["pruned"]) for n in convs) > 0
    assert set(result.timing) == {"am_s", "score_s", "prune_s", "draw_s"}


def test_atlas_with_a_keep_ratio_and_a_criterion_without_groups(tmp_path):
    model = _democnn()
    result = build_atlas(model, SHAPE, tmp_path, layers=["3"], criterion="l1", am=FAST,
                         keep_ratio=0.25)
    layer = json.loads(result.json_path.read_text())["layers"]["3"]
    l1 = get_criterion("l1").score(model)["3"]
    assert sorted(layer["kept"]) == sorted(torch.argsort(l1, descending=True)[:8].tolist())
    assert layer["groups"] is None and list(result.pngs) == ["3"]


def test_atlas_rejects_layers_that_are_not_convs(tmp_path):
    with pytest.raises(EdgepruneError, match="not a conv layer"):
        build_atlas(_democnn(), SHAPE, tmp_path, layers=["23"], am=FAST)


@pytest.mark.parametrize(("option", "value"), [("keep_ratio", 2.0), ("keep_ratio", 0.0),
                                               ("flops_reduction", 1.0)])
def test_atlas_rejects_a_ratio_out_of_range_before_any_work(tmp_path, option, value):
    """The Python API checks the ranges the command line does, before anything is written."""
    with pytest.raises(EdgepruneError, match=f"--{option.replace('_', '-')} {value} must be"):
        build_atlas(_democnn(), SHAPE, tmp_path / "atlas", am=FAST, **{option: value})
    assert not (tmp_path / "atlas").exists()


SYNTHETIC = ["--dataset", "synthetic", "--input-size", "1x16x16", "--quiet"]


def test_explain_command_writes_the_atlas_and_refuses_to_overwrite(capsys, tmp_path):
    out = tmp_path / "atlas"
    args = ["explain", "resnet20", "--layers", "conv1,layers.0.conv1", "--am-steps", "2",
            "--score-samples", "32", "--keep-ratio", "0.5", "--out", str(out), *SYNTHETIC]
    code, stdout, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert sorted(summary["pngs"]) == ["conv1", "layers.0.conv1"]
    assert sorted(p.name for p in out.iterdir()) == ["atlas.json", "conv1.png",
                                                       "layers.0.conv1.png"]
    first = sha(out / "atlas.json")
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, "pass --overwrite")
    assert sha(out / "atlas.json") == first
    code, _, err = run_cli(capsys, *args, "--overwrite", "--criterion", "l1")
    assert code == 0, err
    assert json.loads((out / "atlas.json").read_text())["criterion"] == "l1"
    assert [p.name for p in tmp_path.iterdir()] == ["atlas"]  # no staging folder left


def test_a_failing_atlas_leaves_no_folder(tmp_path):
    with pytest.raises(EdgepruneError, match="not a conv layer"):
        build_atlas(_democnn(), SHAPE, tmp_path / "atlas", layers=["23"], am=FAST)
    assert list(tmp_path.iterdir()) == []


def test_score_command_prints_and_saves(capsys, tmp_path):
    path = tmp_path / "scores.json"
    code, out, err = run_cli(capsys, "score", "democnn", "--criterion", "hrank",
                             "--score-samples", "32", "--out", str(path), *SYNTHETIC)
    assert code == 0, err
    assert "hrank scores (32 samples" in out
    saved = json.loads(path.read_text())
    assert saved["criterion"] == "hrank" and len(saved["layers"]["3"]) == 32


def test_score_samples_per_class_takes_that_many_of_each_class(capsys):
    code, out, err = run_cli(capsys, "score", "democnn", "--criterion", "lrp",
                             "--samples-per-class", "3", "--json", *SYNTHETIC)
    assert code == 0, err
    assert json.loads(out)["samples"] == 3 * 4  # the synthetic set has 4 classes


@pytest.mark.parametrize(("args", "match"), [
    (["--criterion", "actmx"], "did you mean 'actmax'"),
    (["--criterion", "lrp", "--samples-per-class", "0"], "--samples-per-class 0 must be"),
])
def test_score_command_rejects_bad_options_in_one_line(capsys, args, match):
    code, _, err = run_cli(capsys, "score", "democnn", *args, *SYNTHETIC)
    assert_one_line_error(code, err, match)
