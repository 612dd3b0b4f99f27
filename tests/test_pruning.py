"""Pruning through Torch-Pruning's dependency graph: goals (FLOPs, parameters, latency,
per-layer ratios), schedules, protection and kernel re-estimation."""

from __future__ import annotations

import json

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from edgeprune.criteria import get_criterion
from edgeprune.devices.targets import load_target
from edgeprune.errors import EdgepruneError
from edgeprune.models import create_model, load_model
from edgeprune.models.checkpoint import ArchRef, save_checkpoint
from edgeprune.pruning import (
    Iterative,
    LatencyBudget,
    LatencyModel,
    LayerByLayer,
    LayerRatios,
    ParamsReduction,
    PrecomputedImportance,
    PruneResult,
    Reestimate,
    model_cost,
    parse_layer_ratios,
    prune,
)
from edgeprune.spec import InputSpec

NUM_CLASSES = 10
CASES = {  # model -> input shape (C, H, W)
    "democnn": (1, 28, 28),
    "resnet20": (3, 32, 32),
    "mobilenetv2": (3, 16, 16),
}


pytestmark = pytest.mark.usefixtures("quiet_single_thread")


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, in_channels=CASES[name][0], num_classes=NUM_CLASSES).eval()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", params=list(CASES))
def pruned(request) -> tuple[str, nn.Module, dict, PruneResult]:
    """(name, input model, its state before pruning, result) at 50% FLOPs with L1 scores."""
    name = request.param
    model = _model(name)
    state = _state(model)
    result = prune(model, torch.zeros(1, *CASES[name]), criterion="l1", flops_reduction=0.5)
    return name, model, state, result


def test_reaches_the_flops_target_closely(pruned):
    name, _, _, result = pruned
    assert 0.5 <= result.flops_reduction < 0.6
    macs, params = tp.utils.count_ops_and_params(result.model, torch.zeros(1, *CASES[name]))
    assert (result.macs_after, result.params_after) == (int(macs), int(params))
    assert result.params_after < result.params_before
    assert result.search_steps > 1


def test_output_shape_is_unchanged(pruned):
    name, model, _, result = pruned
    x = torch.randn(2, *CASES[name])
    with torch.no_grad():
        assert result.model.eval()(x).shape == model(x).shape == (2, NUM_CLASSES)


def test_channels_are_rounded_and_above_the_floor(pruned):
    _, _, _, result = pruned
    convs = {n: m for n, m in result.model.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(result.channels) == set(convs)
    assert any(after < before for before, after in result.channels.values())
    for name, (before, after) in result.channels.items():
        assert convs[name].out_channels == after == convs[name].weight.shape[0]
        if after != before:
            assert after % 8 == 0 and after >= 8, name


def test_classifier_is_protected_and_input_model_untouched(pruned):
    name, model, state, result = pruned
    classifier = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert classifier and set(classifier) <= set(result.protected)
    after = model.state_dict()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert all(p.grad is None for p in model.parameters())


def test_pruned_model_round_trips_through_a_checkpoint(pruned, tmp_path):
    name, _, _, result = pruned
    c, h, w = CASES[name]
    spec = InputSpec(c, h, w, (0.5,) * c, (0.25,) * c, tuple(f"c{i}" for i in range(NUM_CLASSES)))
    path = tmp_path / "pruned.pt"
    save_checkpoint(path, result.model,
                    ArchRef(name, {"in_channels": c, "num_classes": NUM_CLASSES}), spec)
    loaded = load_model(str(path)).model
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model.eval()(x))


def test_min_channels_and_round_to_are_respected():
    model = _model("democnn")
    result = prune(model, torch.zeros(1, *CASES["democnn"]), flops_reduction=0.5, round_to=4,
                   min_channels=22)
    assert result.flops_reduction >= 0.5
    for name, (before, after) in result.channels.items():
        if after != before:
            assert after % 4 == 0 and after >= 24, name


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Which original filters survive, found by matching weights."""
    return [next(i for i in range(len(original)) if torch.equal(original[i], row))
            for row in pruned]


def test_scores_decide_which_channels_go():
    model = _model("democnn")
    g = torch.Generator().manual_seed(0)
    scores = {n: 0.5 + 0.5 * torch.rand(m.weight.shape[0], generator=g)
              for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    doomed = [1, 4, 9, 16, 25, 30]
    scores["0"][doomed] = 0.0
    result = prune(model, torch.zeros(1, *CASES["democnn"]), scores=scores, criterion=None,
                   flops_reduction=0.5)
    kept = _kept_rows(model[0].weight.detach(), result.model[0].weight.detach())
    assert len(kept) < 32 and not set(doomed) & set(kept)
    assert set(kept) == set(scores["0"].argsort(descending=True)[: len(kept)].tolist())
    assert kept == sorted(kept)


def test_local_ranking_prunes_every_layer_alike():
    model = _model("democnn")
    result = prune(model, torch.zeros(1, *CASES["democnn"]), flops_reduction=0.4,
                   global_ranking=False)
    kept = [after / before for before, after in result.channels.values()]
    assert result.flops_reduction >= 0.4
    assert max(kept) < 1.0 and max(kept) - min(kept) <= 8 / 32  # one rounding step of 32


def test_group_importance_averages_coupled_layers_on_root_indices():
    """In resnet20 the stem and every stage-1 block's second conv share their output channels
    (residual sums): the group's score per channel is the mean over those convs."""
    model = _model("resnet20")
    scores = get_criterion("random").score(model)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, 3, 32, 32))
    names = {m: n for n, m in model.named_modules()}
    coupled = ["conv1", "layers.0.conv2", "layers.1.conv2", "layers.2.conv2"]
    expected = torch.stack([scores[n] for n in coupled]).mean(0)
    importance = PrecomputedImportance(scores, names)
    full = graph.get_pruning_group(model.conv1, function.prune_conv_out_channels, range(16))
    torch.testing.assert_close(importance(full), expected)
    some = graph.get_pruning_group(model.layers[1].conv2, function.prune_conv_out_channels,
                                   [3, 7, 11])
    torch.testing.assert_close(importance(some), expected[[3, 7, 11]])


class _BufferScaled(nn.Module):
    """Scales conv `b`'s output by a per-channel buffer the dependency graph does not know."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 32, 3, padding=1)
        self.c = nn.Conv2d(32, 16, 3, padding=1)
        self.fc = nn.Linear(16, NUM_CLASSES)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b(torch.relu(self.a(x)))) * self.scale.view(1, -1, 1, 1)
        return self.fc(torch.relu(self.c(x)).mean((2, 3)))


def test_layers_the_graph_cannot_prune_are_protected_not_fatal():
    torch.manual_seed(0)
    model = _BufferScaled().eval()
    x = torch.zeros(1, 1, 16, 16)
    result = prune(model, x, flops_reduction=0.3)
    assert "b" in result.protected and result.channels["b"] == (32, 32)
    assert result.flops_reduction >= 0.3
    assert result.model(x).shape == (1, NUM_CLASSES)


class _UnusedLayerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3))
        self.unused = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def test_layers_outside_the_traced_graph_are_protected():
    result = prune(_UnusedLayerNet().eval(), torch.zeros(1, 1, 12, 12), flops_reduction=0.3)
    assert "unused" in result.protected and result.channels["unused"] == (16, 16)
    assert result.channels["features.0"][1] < 16


def test_lrp_scores_drive_pruning_without_a_backward_by_the_caller():
    model = _model("democnn")
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(10, *CASES["democnn"], generator=g), torch.arange(10))]
    result = prune(model, torch.zeros(1, *CASES["democnn"]), criterion="lrp", batches=batches)
    assert result.flops_reduction >= 0.5
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(EdgepruneError, match="needs reference batches"):
        prune(model, torch.zeros(1, *CASES["democnn"]), criterion="lrp")


@pytest.mark.parametrize("kwargs, message", [
    ({"flops_reduction": 0.99}, "at most"),
    ({"flops_reduction": 1.5}, "must be in"),
    ({"scores": {"0": torch.ones(5)}}, "5 entries"),
    ({"scores": {"nope": torch.ones(5)}}, "not a Conv2d"),
])
def test_user_mistakes_raise_one_error_type(kwargs, message):
    with pytest.raises(EdgepruneError, match=message):
        prune(_model("democnn"), torch.zeros(1, *CASES["democnn"]), **kwargs)


# ------------------------------------------------------------------------- goals

def test_params_goal_is_met_and_counted_on_the_pruned_model():
    model, x = _model("resnet20"), torch.zeros(1, *CASES["resnet20"])
    result = prune(model, x, goal=ParamsReduction(0.4))
    assert 0.4 <= result.params_reduction < 0.5
    assert tp.utils.count_ops_and_params(result.model, x)[1] == result.params_after
    assert result.goal == "-40% parameters"


def test_latency_budget_is_met_by_the_targets_prediction():
    model, x = _model("resnet20"), torch.zeros(1, *CASES["resnet20"])
    dense_ms = LatencyModel.for_target(load_target("rpi4")).predict_ms(model, x)
    result = prune(model, x, goal=LatencyBudget(0.6 * dense_ms, load_target("rpi4")))
    lat = result.latency
    assert lat.target == "rpi4" and lat.threads == 4 and lat.scale == 1.0
    assert lat.predicted_before_ms == pytest.approx(dense_ms)
    assert 0.5 * dense_ms < lat.predicted_after_ms <= 0.6 * dense_ms
    rpi4 = LatencyModel.for_target(load_target("rpi4"))
    assert rpi4.predict_ms(result.model, x) == pytest.approx(lat.predicted_after_ms)


def test_a_measurement_of_the_dense_model_calibrates_the_prediction():
    model, x = _model("democnn"), torch.zeros(1, *CASES["democnn"])
    raw = LatencyModel.for_target(load_target("x86-64"), threads=1).predict_ms(model, x)
    budget = LatencyBudget(3.0, load_target("x86-64"), threads=1, measured_dense_ms=5.0)
    result = prune(model, x, goal=budget)
    lat = result.latency
    assert lat.scale == pytest.approx(5.0 / raw) and lat.predicted_before_ms == pytest.approx(5.0)
    assert lat.measured_before_ms == 5.0 and lat.predicted_after_ms <= 3.0


def test_the_roofline_cost_counts_conv_and_linear_macs():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    cost = model_cost(model, torch.zeros(1, 3, 4, 4))
    assert cost.macs == 8 * 4 * 4 * 3 * 9 + 128 * 10
    assert cost.weight_bytes == 4 * sum(p.numel() for p in model.parameters())
    # input + conv + relu + flatten + linear outputs; batch norm is folded away
    assert cost.activation_bytes == 4 * (48 + 128 + 128 + 128 + 10)


def test_layer_ratios_prune_only_the_named_groups():
    model, x = _model("resnet20"), torch.zeros(1, *CASES["resnet20"])
    result = prune(model, x, goal=LayerRatios({"layers.3.conv1": 0.5, "layers.0.conv1": 0.5}))
    changed = {n for n, (before, after) in result.channels.items() if after != before}
    assert changed == {"layers.3.conv1", "layers.0.conv1"}
    assert result.channels["layers.3.conv1"] == (32, 16)
    assert result.schedule == "one-shot" and result.search_steps == 1


def test_keeping_the_residual_stream_prunes_only_the_convs_inside_the_blocks():
    """ResNet-20 with residual_stream="keep": the stem, every block's last conv and the
    projection shortcuts (all writing to a stream) keep their width; the blocks' first convs
    carry the whole -50%; the model still computes the same function of the kept channels."""
    model, x = _model("resnet20"), torch.zeros(1, *CASES["resnet20"])
    result = prune(model, x, criterion="l1", flops_reduction=0.5, global_ranking=False,
                   round_to=4, residual_stream="keep")
    changed = {n for n, (before, after) in result.channels.items() if after != before}
    assert changed == {f"layers.{i}.conv1" for i in range(9)}
    stream = {"conv1", "layers.3.shortcut.0", "layers.6.shortcut.0",
              *(f"layers.{i}.conv2" for i in range(9))}
    assert stream <= set(result.protected)
    assert all("residual stream" in result.protected_reasons[n] for n in stream)
    assert result.flops_reduction >= 0.5
    coupled = prune(model, x, criterion="l1", flops_reduction=0.5, global_ranking=False,
                    round_to=4)
    assert {"conv1", "layers.0.conv2"} <= {n for n, (b, a) in coupled.channels.items() if a != b}


def test_keeping_the_stream_of_torchvision_models():
    """Bottleneck ResNets keep conv3 and the downsample convs (the stem feeds a downsample
    conv, not the stream, so it is pruned); MobileNetV2 keeps the projections of the blocks
    that have a skip, and still prunes its expansions."""
    from torchvision.models import mobilenet_v2
    from torchvision.models.resnet import Bottleneck, ResNet

    x = torch.zeros(1, 3, 32, 32)
    torch.manual_seed(0)
    bottleneck = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10).eval()
    result = prune(bottleneck, x, criterion="l1", flops_reduction=0.3, global_ranking=False,
                   residual_stream="keep")
    changed = {n for n, (b, a) in result.channels.items() if a != b}
    assert changed == {"conv1", *(f"layer{i}.0.conv{j}" for i in range(1, 5) for j in (1, 2))}
    mbv2 = prune(mobilenet_v2(num_classes=10).eval(), x, criterion="l1", flops_reduction=0.3,
                 global_ranking=False, residual_stream="keep")
    kept_whole = {n for n, (b, a) in mbv2.channels.items() if a == b}
    assert "features.3.conv.2" in kept_whole  # block 3 adds its input back
    assert "features.3.conv.0.0" not in kept_whole  # its expansion is pruned
    assert mbv2.model(x).shape == (1, 10)


def test_keeping_the_stream_of_a_plain_network_changes_nothing():
    model, x = _model("democnn"), torch.zeros(1, *CASES["democnn"])
    kept = prune(model, x, criterion="l1", flops_reduction=0.5, residual_stream="keep")
    plain = prune(model, x, criterion="l1", flops_reduction=0.5)
    assert kept.channels == plain.channels
    with pytest.raises(EdgepruneError, match="residual_stream 'coupled': choose prune"):
        prune(model, x, criterion="l1", residual_stream="coupled")


@pytest.mark.parametrize("kwargs, message", [
    ({"flops_reduction": 0.5, "goal": ParamsReduction(0.5)}, "not both"),
    ({"goal": LayerRatios({"nope": 0.5})}, "not a Conv2d"),
    ({"goal": LayerRatios({"23": 0.5})}, "is protected: classifier"),
    ({"goal": LayerRatios({"0": 0.5}), "schedule": Iterative()}, "one shot"),
])
def test_goal_mistakes_raise_one_error_type(kwargs, message):
    with pytest.raises(EdgepruneError, match=message):
        prune(_model("democnn"), torch.zeros(1, *CASES["democnn"]), **kwargs)


@pytest.mark.parametrize("make, message", [
    (lambda: LatencyBudget(0), "must be positive"),
    (lambda: ParamsReduction(1.0), "must be in"),
    (lambda: LayerRatios({"a": 1.2}), "must be in"),
    (lambda: Iterative(step=0), "must be in"),
    (lambda: parse_layer_ratios("conv1:0.5"), "NAME=RATIO"),
])
def test_bad_goal_values_are_rejected(make, message):
    with pytest.raises(EdgepruneError, match=message):
        make()


def test_layer_ratio_text_is_parsed():
    assert parse_layer_ratios("a.b=0.5, c=0.25,") == {"a.b": 0.5, "c": 0.25}


# --------------------------------------------------------------------- schedules

class _CountingL1:
    """The l1 criterion, counting how often (and on how wide a model) it is asked."""

    name, needs_data = "counting-l1", False

    def __init__(self) -> None:
        self.calls: list[int] = []

    def score(self, model, batches=None):
        self.calls.append(sum(m.out_channels for m in model.modules()
                              if isinstance(m, nn.Conv2d)))
        return get_criterion("l1").score(model)


def test_iterative_steps_remove_a_share_of_filters_then_stop_at_the_goal():
    model, x = _model("resnet20"), torch.zeros(1, *CASES["resnet20"])
    seen: list[tuple[int, int]] = []
    crit = _CountingL1()
    result = prune(model, x, criterion=crit, flops_reduction=0.3,
                   schedule=Iterative(step=0.1, between=lambda m, s: seen.append(
                       (s.index, s.figures.filters))))
    filters = [s["filters"] for s in result.steps]
    prunable = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    assert len(result.steps) >= 3 and result.steps[-1]["final"]
    assert seen == [(s["step"], s["filters"]) for s in result.steps[:-1]]
    for k, f in enumerate(filters[:-1], 1):  # each step at least 10% more of the filters
        assert f <= prunable - 0.1 * k * prunable
    assert filters == sorted(filters, reverse=True)
    assert crit.calls[0] == prunable and crit.calls[1:] == filters[:-1]  # re-scored per step
    assert 0.3 <= result.flops_reduction < 0.4
    assert result.schedule == "iterative"


def test_iterative_steps_can_fine_tune_in_between():
    model, x = _model("democnn"), torch.zeros(1, *CASES["democnn"])

    def nudge(m: nn.Module, step) -> None:  # stands in for a brief fine-tune
        with torch.no_grad():
            m[0].weight.mul_(1.5)

    first = model[0].weight.detach().clone()
    result = prune(model, x, flops_reduction=0.3, schedule=Iterative(step=0.1, between=nudge))
    assert len(result.steps) >= 2
    kept = result.kept["0"]
    ratio = result.model[0].weight.detach() / first[kept]
    assert torch.allclose(ratio, torch.full_like(ratio, 1.5 ** (len(result.steps) - 1)))


def test_layer_by_layer_goes_in_forward_order_on_the_already_pruned_model():
    model, x = _model("resnet20"), torch.zeros(1, *CASES["resnet20"])
    layers: list[str] = []
    crit = _CountingL1()
    result = prune(model, x, criterion=crit, flops_reduction=0.4,
                   schedule=LayerByLayer(between=lambda m, s: layers.append(s.layer)))
    order = [s["layer"] for s in result.steps if "layer" in s]
    assert order[:3] == ["conv1", "layers.0.conv1", "layers.1.conv1"]
    assert layers == order[:-1] and len(crit.calls) >= len(order)
    assert crit.calls == sorted(crit.calls, reverse=True)
    assert result.flops_reduction >= 0.4 and result.schedule == "layer-by-layer"


def test_given_scores_follow_the_kept_channels_between_steps():
    model, x = _model("democnn"), torch.zeros(1, *CASES["democnn"])
    scores = get_criterion("l1").score(model)
    result = prune(model, x, scores=scores, criterion=None, flops_reduction=0.4,
                   schedule=Iterative(step=0.1))
    kept = result.kept["0"]
    assert set(kept) == set(scores["0"].argsort(descending=True)[: len(kept)].tolist())


# ---------------------------------------------------------- kernel re-estimation

def _layer_error(original: nn.Module, pruned: nn.Module, name: str, kept: list[int] | None,
                 x: torch.Tensor) -> float:
    """Relative error of `name`'s outputs in the pruned model vs the original's."""
    outs = {}
    hooks = [m.get_submodule(name).register_forward_hook(
        lambda _m, _i, o, key=key: outs.__setitem__(key, o)) for key, m in
        (("a", original), ("b", pruned))]
    with torch.no_grad():
        original(x), pruned(x)
    for h in hooks:
        h.remove()
    want = outs["a"] if kept is None else outs["a"][:, kept]
    return float((outs["b"] - want).norm() / want.norm())


def test_reestimation_lowers_the_next_layers_reconstruction_error(tiny_checkpoint, synthetic):
    model = load_model(str(tiny_checkpoint)).model.eval()
    x = torch.zeros(1, *synthetic.spec.shape)
    train = [synthetic.train.__getitems__(range(i, i + 64)) for i in range(0, 256, 64)]
    held_out = synthetic.test.__getitems__(range(128))[0]
    plain = prune(model, x, batches=train, flops_reduction=0.5)
    refit = prune(model, x, batches=train, flops_reduction=0.5, reestimate=True)
    assert plain.channels == refit.channels and not plain.refits
    names = [f.layer for f in refit.refits]
    assert names and all(f.error_after < f.error_before for f in refit.refits)
    first = names[0]  # the first layer after a pruned one sees exactly the same inputs
    before = _layer_error(model, plain.model, first, refit.kept.get(first), held_out)
    after = _layer_error(model, refit.model, first, refit.kept.get(first), held_out)
    assert after < 0.8 * before
    logits = _layer_error(model, refit.model, names[-1], None, held_out)
    assert logits < _layer_error(model, plain.model, names[-1], None, held_out)


def test_reestimation_needs_data():
    with pytest.raises(EdgepruneError, match="needs batches"):
        prune(_model("democnn"), torch.zeros(1, *CASES["democnn"]), reestimate=True)


def test_reestimate_options_bound_the_samples_used():
    model, x = _model("democnn"), torch.zeros(1, *CASES["democnn"])
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, *CASES["democnn"], generator=g), torch.zeros(16))] * 3
    result = prune(model, x, batches=batches, reestimate=Reestimate(samples=20, rows=256))
    assert result.refits and all(f.error_after <= f.error_before for f in result.refits)


# --------------------------------------------------------------------------- CLI

def _invoke(*args: str):
    import typer
    from typer.testing import CliRunner

    from edgeprune.cli.prune import prune as prune_command

    app = typer.Typer()
    app.command()(prune_command)
    return CliRunner().invoke(app, list(args))


def test_prune_command_saves_a_checkpoint_that_loads_pruned(tmp_path):
    out = tmp_path / "pruned.pt"
    result = _invoke("democnn", "--dataset", "synthetic", "--criterion", "l1",
                     "--params-reduction", "0.3", "--target", "x86-64", "--out", str(out),
                     "--json", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["goal"] == "-30% parameters" and summary["params_reduction"] >= 0.3
    loaded = load_model(str(out))
    widths = {n: m.out_channels for n, m in loaded.model.named_modules()
              if isinstance(m, nn.Conv2d)}
    assert widths == {n: after for n, (_, after) in summary["channels"].items()}
    assert all(w % 16 == 0 for w in widths.values())  # x86-64's SIMD width
    assert loaded.model(torch.zeros(2, 1, 16, 16)).shape == (2, 4)
    assert loaded.meta["pruned"]["params_after"] == summary["params_after"]


def test_prune_command_keeps_the_residual_stream_when_asked(tmp_path):
    out = tmp_path / "inner.pt"
    result = _invoke("resnet20", "--dataset", "synthetic", "--criterion", "l1", "--uniform",
                     "--residual-stream", "keep", "--flops-reduction", "0.3", "--target",
                     "x86-64", "--out", str(out),
                     "--json", "--quiet")
    assert result.exit_code == 0, result.output
    channels = json.loads(result.stdout)["channels"]
    changed = {n for n, (before, after) in channels.items() if after != before}
    assert changed and all(n.endswith(".conv1") and n != "conv1" for n in changed)


def test_prune_command_runs_a_latency_goal_iteratively_with_fine_tuning(tmp_path):
    out = tmp_path / "pruned.pt"
    result = _invoke("democnn", "--dataset", "synthetic", "--criterion", "l1",
                     "--latency-ms", "0.06", "--target", "rpi4", "--schedule", "iterative",
                     "--step", "0.2", "--step-epochs", "0.1", "--reestimate",
                     "--score-samples", "64", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    summary = torch.load(out, weights_only=True)["meta"]["pruned"]
    assert summary["schedule"] == "iterative" and len(summary["steps"]) >= 2
    assert summary["latency"]["predicted_after_ms"] <= 0.06 < summary["latency"][
        "predicted_before_ms"]
    assert summary["refits"]
    assert "pruned for rpi4" in _invoke("democnn", "--dataset", "synthetic", "--criterion",
                                        "l1", "--out", str(tmp_path / "b.pt")).stdout


@pytest.mark.parametrize("kwargs, message", [
    ({"flops_reduction": 0.3, "latency_ms": 5.0}, "choose one goal"),
    ({"schedule": "gradual"}, "unknown schedule"),
])
def test_command_mistakes_are_one_error(kwargs, message, tmp_path):
    from edgeprune.jobs.prune import prune_file

    with pytest.raises(EdgepruneError, match=message):
        prune_file("democnn", dataset="synthetic", criterion="l1",
                   out=tmp_path / "p.pt", **kwargs)


def test_prune_command_measures_dense_and_pruned_side_by_side(tmp_path):
    out = tmp_path / "pruned.pt"
    result = _invoke("democnn", "--dataset", "synthetic", "--criterion", "l1",
                     "--target", "x86-64", "--threads", "1", "--latency-ms", "0.08",
                     "--measure-on", "local", "--out", str(out), "--json", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    measured, latency = summary["measured"], summary["latency"]
    assert measured["on"] == "local" and measured["format"] == "onnx"
    assert measured["pruned_ms"] > 0 and measured["dense_ms"] > 0
    assert latency["measured_before_ms"] == measured["dense_ms"]  # the calibration
    assert latency["predicted_before_ms"] == pytest.approx(measured["dense_ms"])
    assert latency["measured_after_ms"] == measured["pruned_ms"]
    assert latency["predicted_after_ms"] <= 0.08


class _LayerScaled(nn.Module):
    """A conv block with a per-channel scale outside any conv/linear layer (as in ConvNeXt)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(16, 1, 1))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head((self.conv(x) * self.scale).mean((2, 3)))


def test_torch_prunings_graph_warnings_become_one_line(capsys):
    """Torch-Pruning warns over several lines on every graph build; the user sees one line."""
    import warnings

    from edgeprune.console import set_quiet

    set_quiet(False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = prune(_LayerScaled(), torch.zeros(1, 3, 8, 8), criterion="l1",
                           flops_reduction=0.4, round_to=4)
    finally:
        set_quiet(True)
    assert not [w for w in caught if "Unwrapped parameters" in str(w.message)]
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "outside conv/linear" in ln]
    assert len(lines) == 1 and "1 parameter outside" in lines[0] and "scale" in lines[0]
    assert result.model.scale.shape[0] == result.model.conv.out_channels < 16
