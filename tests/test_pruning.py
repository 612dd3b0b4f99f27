"""One-shot pruning to a FLOPs target through Torch-Pruning's dependency graph."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from edgeprune.checkpoint import ArchRef, save_checkpoint
from edgeprune.console import is_quiet, set_quiet
from edgeprune.criteria import get_criterion
from edgeprune.errors import EdgepruneError
from edgeprune.models import create_model, load_model
from edgeprune.pruning import PrecomputedImportance, PruneResult, prune
from edgeprune.spec import InputSpec

NUM_CLASSES = 10
CASES = {  # model -> input shape (C, H, W)
    "democnn": (1, 28, 28),
    "resnet20": (3, 32, 32),
    "mobilenetv2": (3, 16, 16),
}


@pytest.fixture(autouse=True, scope="module")
def _quiet_single_thread():
    """Progress bars off; one intra-op thread (tiny tensors on a shared 2-core machine run
    far faster without OpenMP hand-offs)."""
    threads, quiet = torch.get_num_threads(), is_quiet()
    torch.set_num_threads(1)
    set_quiet(True)
    yield
    torch.set_num_threads(threads)
    set_quiet(quiet)


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
