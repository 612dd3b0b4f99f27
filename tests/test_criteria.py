"""Criteria: registry, score shapes, L1 by hand, LRP conservation and hygiene."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm

from edgeprune.console import is_quiet, set_quiet
from edgeprune.criteria import get_criterion, list_criteria
from edgeprune.criteria.lrp import (
    canonical_model,
    input_box,
    lrp_composite,
    relevance_attributor,
    true_class_logit,
)
from edgeprune.errors import EdgepruneError
from edgeprune.models import create_model

SHAPE = (1, 16, 16)
NUM_CLASSES = 4
MODELS = ["democnn", "resnet20", "mobilenetv2"]


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


@pytest.fixture(scope="module")
def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, *SHAPE, generator=g), torch.arange(8) % NUM_CLASSES)
            for _ in range(2)]


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, in_channels=SHAPE[0], num_classes=NUM_CLASSES).eval()


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _score(criterion: str, model: nn.Module, batches) -> dict[str, torch.Tensor]:
    crit = get_criterion(criterion)
    return crit.score(model, batches if crit.needs_data else None)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("criterion", list_criteria())
def test_every_layer_gets_one_finite_score_per_output_channel(criterion, model_name, batches):
    model = _model(model_name)
    scores = _score(criterion, model, batches)
    layers = _layers(model)
    assert set(scores) == set(layers)
    for name, values in scores.items():
        assert values.shape == (layers[name].weight.shape[0],), name
        assert torch.isfinite(values).all(), name
        assert values.abs().sum() == pytest.approx(1.0, abs=1e-5), name  # normalized per layer
        if criterion != "lrp":  # relevance is signed (see test_lrp_is_non_negative_...)
            assert (values >= 0).all(), name


def test_l1_matches_hand_computation():
    model = _model("democnn")
    scores = get_criterion("l1").score(model)
    for name, layer in _layers(model).items():
        w = layer.weight.detach()
        per_filter = torch.stack([w[k].abs().sum() for k in range(w.shape[0])])
        torch.testing.assert_close(scores[name], per_filter / per_filter.sum())


def _bias_free_net() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 10, 3, padding=1, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, NUM_CLASSES, bias=False),
    ).eval()


class _ResidualBlock(nn.Module):
    """x + relu(conv(x)): a functional add whose inputs are non-negative."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.relu(self.conv(x))


def _bias_free_residual_net() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.ReLU(), _ResidualBlock(6),
        _ResidualBlock(6), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6, NUM_CLASSES, bias=False),
    ).eval()


def _raw_relevance(model: nn.Module, batch) -> tuple[float, dict[str, float]]:
    """(starting relevance, summed relevance at each conv/linear output) for one batch."""
    x, y = batch
    names = list(_layers(model))
    with relevance_attributor(model, x[:1], input_box([batch]), 1e-6, names) as (attr, rec):
        output, _ = attr(x, partial(true_class_logit, y))
    start = float(output.detach().gather(1, y[:, None]).sum())
    return start, {n: float(v.sum()) for n, v in rec.totals.items()}


def test_lrp_conserves_relevance_in_a_bias_free_relu_net(batches):
    """What the recorder captures is relevance, not a gradient: each layer's channel sum
    equals the starting relevance (the true-class logits)."""
    start, per_layer = _raw_relevance(_bias_free_net(), batches[0])
    assert abs(start) > 1e-3
    for name, total in per_layer.items():
        assert total == pytest.approx(start, rel=1e-3), name


def test_lrp_splits_relevance_at_functional_residual_adds(batches):
    """All relevance passes the stem and the classifier, and it is split (not copied) between
    each block's branch and skip: the functional adds became zennit Sum layers (Norm rule)."""
    start, per_layer = _raw_relevance(_bias_free_residual_net(), batches[0])
    assert per_layer["0"] == pytest.approx(start, rel=1e-3)
    assert per_layer["6"] == pytest.approx(start, rel=1e-3)
    for branch in ("2.conv", "3.conv"):
        assert abs(per_layer[branch]) < abs(start)


def _bn_net() -> nn.Sequential:
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, NUM_CLASSES),
    ).eval()
    for bn in (net[1], net[4]):
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    return net


def test_lrp_merges_batchnorm_into_the_preceding_conv(batches):
    """Scores of a conv+BN net equal those of the same net with BN folded by hand."""
    net = _bn_net()
    folded = nn.Sequential(fuse_conv_bn_eval(net[0], net[1]), nn.Identity(), nn.ReLU(),
                           fuse_conv_bn_eval(net[3], net[4]), nn.Identity(), nn.ReLU(),
                           *net[6:]).eval()
    lrp = get_criterion("lrp")
    with_bn, by_hand = lrp.score(net, batches), lrp.score(folded, batches)
    for name in ("0", "3"):
        torch.testing.assert_close(with_bn[name], by_hand[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_name", MODELS)
def test_every_batchnorm_is_paired_with_its_conv(model_name):
    model = _model(model_name)
    _, canonizers = canonical_model(model, torch.zeros(1, *SHAPE))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(canonizers[0].pairs) == n_bn


def test_lrp_is_non_negative_when_the_start_and_classifier_are():
    """alpha1-beta0 keeps relevance non-negative; only the classifier's epsilon rule (or a
    negative true-class logit) brings negative relevance, so with non-negative classifier
    weights every score is >= 0."""
    model = _bias_free_net()
    with torch.no_grad():
        model[-1].weight.abs_()
    g = torch.Generator().manual_seed(3)
    scores = get_criterion("lrp").score(model, [(torch.randn(8, *SHAPE, generator=g),
                                                 torch.arange(8) % NUM_CLASSES)])
    for name, values in scores.items():
        assert (values >= 0).all(), name


def test_lrp_gives_dead_and_never_active_filters_no_relevance(batches):
    model = _model("democnn")
    with torch.no_grad():
        model[3].weight[5].zero_()    # dead filter: zero weights (BatchNorm at its defaults)
        model[4].bias[9] = -1e4       # never active: its ReLU output is always 0
    scores = get_criterion("lrp").score(model, batches)
    assert scores["3"][5].abs() < 1e-7
    assert scores["3"][9].abs() < 1e-7
    alive = torch.ones(32, dtype=torch.bool)
    alive[[5, 9]] = False
    assert scores["3"][alive].abs().min() > 1e-7


@pytest.mark.parametrize("criterion", list_criteria())
def test_scores_are_deterministic(criterion, batches):
    model = _model("resnet20")
    first, second = _score(criterion, model, batches), _score(criterion, model, batches)
    for name in first:
        assert torch.equal(first[name], second[name]), name


def _hooks_and_attributes(model: nn.Module) -> dict[str, tuple]:
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                  "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks")
    return {n: (tuple(sorted(vars(m))), m.training,
                tuple(len(getattr(m, h, {})) for h in hook_dicts))
            for n, m in model.named_modules()}


@pytest.mark.parametrize("criterion", list_criteria())
def test_scoring_leaves_the_callers_model_untouched(criterion, batches):
    model = create_model("resnet20", in_channels=1, num_classes=NUM_CLASSES).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = _hooks_and_attributes(model)
    _score(criterion, model, batches)
    after = model.state_dict()
    assert state.keys() == after.keys()
    for key, value in state.items():
        assert torch.equal(value, after[key]), key
    assert _hooks_and_attributes(model) == before
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_canonizers_are_undone_on_the_working_copy(batches):
    """zennit reverts the BatchNorm merge on context exit (checked on the traced copy that
    scoring works on; the caller's model is never canonized at all)."""
    work, canonizers = canonical_model(_model("resnet20"), batches[0][0][:1])
    state = {k: v.clone() for k, v in work.state_dict().items()}
    composite = lrp_composite(*input_box(batches), epsilon=1e-6, canonizers=canonizers)
    x, y = batches[0]
    with Gradient(model=work, composite=composite) as attributor:
        merged_bias = work.get_submodule("conv1").bias
        attributor(x, partial(true_class_logit, y))
    assert merged_bias is not None
    assert work.get_submodule("conv1").bias is None
    for key, value in work.state_dict().items():
        assert torch.equal(value, state[key]), key


class _ControlFlowNet(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if x.mean() > -1e9:
            x = x * 1.0
        return self.fc(x.mean((2, 3)))


def test_lrp_falls_back_when_fx_cannot_trace(batches):
    net = _ControlFlowNet().eval()
    _, canonizers = canonical_model(net, batches[0][0][:1])
    assert isinstance(canonizers[0], SequentialMergeBatchNorm)
    scores = get_criterion("lrp").score(net, batches)
    assert set(scores) == {"features.0", "fc"}
    assert all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in scores.values())


class _UnusedLayerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU())
        self.unused = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


@pytest.mark.parametrize("criterion", list_criteria())
def test_layers_forward_never_calls_still_get_scores(criterion, batches):
    scores = _score(criterion, _UnusedLayerNet().eval(), batches)
    assert set(scores) == {"features.0", "fc", "unused"} and scores["unused"].shape == (8,)
    if criterion == "lrp":
        assert torch.equal(scores["unused"], torch.zeros(8))


def test_unknown_criterion_names_the_closest():
    with pytest.raises(EdgepruneError, match="did you mean 'lrp'"):
        get_criterion("lpr")


def test_unknown_option_is_rejected():
    with pytest.raises(EdgepruneError, match="did you mean 'epsilon'"):
        get_criterion("lrp", epsilon_=1e-3)
    with pytest.raises(EdgepruneError, match="no option"):
        get_criterion("l1", p=3)


def test_lrp_without_data_is_a_user_error():
    with pytest.raises(EdgepruneError, match="needs reference data"):
        get_criterion("lrp").score(_model("democnn"), None)
