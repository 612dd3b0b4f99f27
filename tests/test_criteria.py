"""Criteria: registry, score shapes, known answers (duplicates, dead filters, hand-computed
baselines), LRP conservation, determinism and hygiene."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm

from edgeprune.criteria import get_criterion, list_criteria
from edgeprune.criteria.am_images import AMConfig
from edgeprune.criteria.lrp import (
    START_RELEVANCE,
    canonical_model,
    input_box,
    lrp_composite,
    relevance_attributor,
    true_class_logit,
)
from edgeprune.errors import EdgepruneError
from edgeprune.models import create_model
from edgeprune.pruning import prune
from edgeprune.pruning.goals import LayerRatios

SHAPE = (1, 16, 16)
NUM_CLASSES = 4
MODELS = ["democnn", "resnet20", "mobilenetv2"]
AM_CRITERIA = {"actmax", "function"}
# Few AM steps keep the suite fast; the known-answer tests below use more where it matters.
FAST = {name: {"am": AMConfig(steps=2, batch=512)} for name in AM_CRITERIA}


pytestmark = pytest.mark.usefixtures("quiet_single_thread")


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
    crit = get_criterion(criterion, **FAST.get(criterion, {}))
    return crit.score(model, batches if crit.needs_data else None)


class _DepthwiseNet(nn.Module):
    """Stem, a depthwise-separable block with a residual add, and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
                                nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.pw(self.dw(x))
        return self.fc(x.mean((2, 3)))


def _any_model(name: str) -> nn.Module:
    if name == "depthwise":
        torch.manual_seed(0)
        return _DepthwiseNet().eval()
    return _model(name)


# AM optimizes every filter of every layer: on MobileNetV2 (17k filters) that takes minutes,
# so the AM criteria meet depthwise convolutions and residual adds in a small net instead.
SHAPE_CASES = [(c, m) for c in list_criteria() for m in MODELS + ["depthwise"]
               if not (c in AM_CRITERIA and m == "mobilenetv2")]


@pytest.mark.parametrize(("criterion", "model_name"), SHAPE_CASES)
def test_every_layer_gets_one_finite_score_per_output_channel(criterion, model_name, batches):
    model = _any_model(model_name)
    scores = _score(criterion, model, batches)
    layers = _layers(model)
    assert set(scores) == set(layers)
    for name, values in scores.items():
        assert values.shape == (layers[name].weight.shape[0],), name
        assert torch.isfinite(values).all(), name
        assert values.abs().sum() == pytest.approx(1.0, abs=1e-5), name  # normalized per layer


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


def _raw_relevance(model: nn.Module, batch, start: str = "one"
                   ) -> tuple[float, dict[str, float]]:
    """(starting relevance, summed relevance at each conv/linear output) for one batch."""
    x, y = batch
    names = list(_layers(model))
    with relevance_attributor(model, x[:1], input_box([batch]), 1e-6, names) as (attr, rec):
        output, _ = attr(x, partial(START_RELEVANCE[start], y))
    logits = float(output.detach().gather(1, y[:, None]).sum())
    return logits if start == "logit" else float(len(y)), \
        {n: float(v.sum()) for n, v in rec.totals.items()}


@pytest.mark.parametrize("start", ["one", "logit"])
def test_lrp_conserves_relevance_in_a_bias_free_relu_net(batches, start):
    """What the recorder captures is relevance, not a gradient: each layer's channel sum
    equals the starting relevance (1 per sample, or the true-class logits)."""
    start, per_layer = _raw_relevance(_bias_free_net(), batches[0], start)
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
    assert scores["3"][alive].min() > 1e-7  # absolute relevance: the dead go first
    assert set(torch.argsort(scores["3"])[:2].tolist()) == {5, 9}


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


# ------------------------------------------------------------------ known answers

PAIRS = [(1, 12), (3, 13), (5, 14), (7, 15)]  # (original, exact or scaled copy)


def _duplicate_net() -> nn.Sequential:
    """Layer "3" has 16 filters: 12 distinct ones and, for filters 1, 3, 5, 7 (made the
    largest, so L1 keeps them), an exact copy (12, 13) or a positively scaled copy (14, 15)."""
    torch.manual_seed(5)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, NUM_CLASSES)).eval()
    with torch.no_grad():
        w = net[3].weight
        w[[1, 3, 5, 7]] *= 3
        w[12], w[13], w[14], w[15] = w[1], w[3], 2 * w[5], 1.5 * w[7]
    return net


def _lowest(scores: torch.Tensor, n: int) -> set[int]:
    return set(torch.argsort(scores, stable=True)[:n].tolist())


# fmcluster clusters into k = keep count clusters: asking for the 4 lowest of 16 is keeping 12
# (the pruner sets `keep`; see the test through prune() below).
DUPLICATE_OPTIONS = {"actmax": {"am": AMConfig(steps=16)}, "function": {"am": AMConfig(steps=16)},
                     "fmcluster": {"keep": {"3": 12}}}


@pytest.mark.parametrize("criterion", sorted(DUPLICATE_OPTIONS))
def test_redundancy_criteria_drop_one_of_each_duplicate_first_and_l1_does_not(criterion,
                                                                               batches):
    net = _duplicate_net()
    crit = get_criterion(criterion, **DUPLICATE_OPTIONS[criterion])
    lowest = _lowest(crit.score(net, batches)["3"], len(PAIRS))
    assert all(len(lowest & set(pair)) == 1 for pair in PAIRS), sorted(lowest)
    kept_groups = crit.groups("3", keep=16 - len(PAIRS))
    assert all(any(set(pair) <= set(g) for g in kept_groups) for pair in PAIRS), kept_groups
    l1_lowest = _lowest(get_criterion("l1").score(net)["3"], len(PAIRS))
    assert not l1_lowest & {c for pair in PAIRS for c in pair}, sorted(l1_lowest)


def test_fmcluster_at_its_defaults_through_the_pruner_removes_one_of_each_duplicate(batches):
    """With default options the first scoring clusters into ceil(0.5 * 16) = 8 clusters, which
    misses a pair; the pruner scores again with k = the keep count (12) and removes exactly
    one filter of each duplicate pair."""
    net = _duplicate_net()
    first = _lowest(get_criterion("fmcluster").score(net, batches)["3"], len(PAIRS))
    assert not all(len(first & set(pair)) == 1 for pair in PAIRS), sorted(first)
    result = prune(net, batches[0][0][:1], criterion="fmcluster", batches=batches, round_to=1,
                   goal=LayerRatios({"3": len(PAIRS) / 16}))
    removed = set(range(16)) - set(result.kept["3"])
    assert len(removed) == len(PAIRS)
    assert all(len(removed & set(pair)) == 1 for pair in PAIRS), sorted(removed)


def _dead_democnn() -> nn.Module:
    model = _model("democnn")
    with torch.no_grad():
        model[3].weight[5].zero_()    # dead filter: zero weights (BatchNorm at its defaults)
        model[4].bias[9] = -1e4       # never active: its ReLU output is always 0
    return model


DEAD_CRITERIA = {"actmax": {"am": AMConfig(steps=8)}, "function": {"am": AMConfig(steps=8)},
                 "fmcluster": {}, "concept": {}, "hrank": {}, "lrp": {}}


@pytest.mark.parametrize("criterion", sorted(DEAD_CRITERIA))
def test_dead_filters_score_zero(criterion, batches):
    """A dead and a never-active filter: AM cannot excite them (invalid), they carry no
    relevance, no variance, no rank, and no image votes for them."""
    crit = get_criterion(criterion, **DEAD_CRITERIA[criterion])
    scores = crit.score(_dead_democnn(), batches)["3"]
    assert scores[[5, 9]].abs().max() < 1e-7
    alive = torch.ones(32, dtype=torch.bool)
    alive[[5, 9]] = False
    assert scores[alive].abs().min() > 1e-7 or criterion == "concept"
    if criterion in ("actmax", "function", "fmcluster"):
        assert crit.redundancy["3"].invalid.nonzero().flatten().tolist() == [5, 9]
    if criterion == "concept":
        assert crit.votes["3"][[5, 9]].tolist() == [0.0, 0.0]
        assert crit.votes["3"].sum() > 0


# ----------------------------------------- actmax: colour and texture similarity on their own

def _two_level(n_low: int, n_high: int) -> Tensor:
    """A 1x4x4 image with n_low pixels at 0 and n_high at 1, in a scattered order."""
    values = torch.tensor([0.0] * n_low + [1.0] * n_high)
    return values[torch.randperm(16, generator=torch.Generator().manual_seed(n_low))] \
        .reshape(1, 1, 4, 4)


def test_colour_similarity_is_the_histogram_intersection():
    """Histograms (8/16, 8/16) and (12/16, 4/16) intersect in 0.5 + 0.25 = 0.75 (a cosine of
    the histograms would give 0.89); pixel order does not matter; disjoint values give 0."""
    from edgeprune.criteria.actmax import colour_similarity

    a, d = _two_level(8, 8), _two_level(12, 4)
    shuffled = a.flatten()[torch.randperm(16, generator=torch.Generator().manual_seed(9))]
    mid = torch.full((1, 1, 4, 4), 0.5)
    s = colour_similarity(torch.cat([a, d, shuffled.reshape(1, 1, 4, 4), mid]), bins=16)
    assert float(s[0, 1]) == pytest.approx(0.75)
    assert float(s[0, 2]) == pytest.approx(1.0)
    assert float(s[0, 3]) == pytest.approx(0.0)
    assert float(s[1, 3]) == pytest.approx(0.0)


def _texture_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """(1 + cos) / 2 of the off-diagonal products z_i z_j (i != j) of two standardized 3x3
    images (one patch each): sum_{i!=j} z_i z_j w_i w_j = (z.w)^2 - sum z_i^2 w_i^2."""
    z, w = (a - a.mean()).ravel(), (b - b.mean()).ravel()
    dot = (z @ w) ** 2 - np.sum(z ** 2 * w ** 2)
    norm_z = np.sqrt((z @ z) ** 2 - np.sum(z ** 4))
    norm_w = np.sqrt((w @ w) ** 2 - np.sum(w ** 4))
    return float((1 + dot / (norm_z * norm_w)) / 2)


def test_texture_similarity_matches_the_gram_cosine_by_hand():
    from edgeprune.criteria.actmax import texture_similarity

    g = torch.Generator().manual_seed(3)
    images = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64).float()
    s = texture_similarity(images)
    for i in range(4):
        for j in range(4):
            expected = _texture_by_hand(images[i].double().numpy(), images[j].double().numpy())
            assert float(s[i, j]) == pytest.approx(expected, abs=1e-5), (i, j)
    # brightness and contrast do not change a texture, and the sign of a pattern neither
    changed = torch.cat([images[:1], 3 * images[:1] + 2, -images[:1]])
    torch.testing.assert_close(texture_similarity(changed), torch.ones(3, 3))


def test_actmax_weights_colour_against_texture():
    """Filter 1's AM image is filter 0's with its pixels shuffled (same colours, another
    texture); filter 2's is filter 0's at a third of the contrast (same texture, other
    colours). Colour alone keeps 0 then 2, texture alone keeps 0 then 1."""
    from edgeprune.criteria.actmax import ActMax
    from edgeprune.criteria.am_images import LayerAM

    g = torch.Generator().manual_seed(4)
    base = torch.rand(1, 1, 8, 8, generator=g)
    shuffled = base.flatten()[torch.randperm(64, generator=g)].reshape(1, 1, 8, 8)
    images = torch.cat([base, shuffled, base / 3 + 0.6])
    am = {"0": LayerAM(images, gain=torch.tensor([3.0, 2.0, 1.0]), peak=torch.ones(3))}
    net = nn.Sequential(nn.Conv2d(1, 3, 3))
    orders = {}
    for weight in (1.0, 0.0):
        crit = ActMax(colour_weight=weight)
        crit.from_images(net, am)
        orders[weight] = crit.redundancy["0"].order.tolist()
    assert orders == {1.0: [0, 2, 1], 0.0: [0, 1, 2]}


def test_am_is_scale_invariant_and_raises_the_activation():
    from edgeprune.criteria.am_images import visualize

    net = _duplicate_net()
    am = visualize(net, SHAPE, ["3"], AMConfig(steps=12))["3"]
    torch.testing.assert_close(am.images[12], am.images[1])   # exact copy
    torch.testing.assert_close(am.images[14], am.images[5], rtol=1e-4, atol=1e-5)  # 2x copy
    assert (am.gain > 0).all()
    assert not am.invalid().any()
    assert am.images.shape == (16, *SHAPE)


def test_fpgm_matches_hand_computation():
    model = _model("democnn")
    scores = get_criterion("fpgm").score(model)
    for name, layer in _layers(model).items():
        w = layer.weight.detach().flatten(1).abs().pow(2)  # Torch-Pruning's |w|^p, p = 2
        total = torch.cdist(w, w).sum(0)
        torch.testing.assert_close(scores[name], total / total.sum())


def test_taylor_matches_hand_computation(batches):
    model = _model("democnn")
    scores = get_criterion("taylor").score(model, batches)
    work = _model("democnn")
    for x, y in batches:
        (nn.functional.cross_entropy(work(x), y, reduction="sum") / len(y)).backward()
    for name, layer in _layers(work).items():
        value = (layer.weight * layer.weight.grad).abs().flatten(1).sum(1).detach()
        torch.testing.assert_close(scores[name], value / value.sum(), rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())


def test_hrank_matches_hand_computation(batches):
    model = _model("democnn")
    scores = get_criterion("hrank").score(model, batches)
    with torch.no_grad():
        maps = torch.cat([model[:6](x) for x, _ in batches])  # conv 3 -> BN 4 -> ReLU 5
    ranks = torch.linalg.matrix_rank(maps.double()).double().mean(0)
    torch.testing.assert_close(scores["3"], (ranks / ranks.sum()).float())


def test_concept_votes_follow_real_masks():
    """Unit 0 sees +x, unit 1 sees -x; the images are bright on the left half, which is also
    the given concept mask: every image votes for unit 0 alone."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=g) * 0.1
    x[..., :4] += 1.0
    x[..., 4:] -= 1.0
    masks = torch.zeros(6, 8, 8, dtype=torch.bool)
    masks[..., :4] = True
    crit = get_criterion("concept", top_fraction=0.5, unit_quantile=0.25)
    scores = crit.score(net, [(x, torch.zeros(6, dtype=torch.long), masks)])
    assert crit.votes["0"].tolist() == [6.0, 0.0]
    assert scores["0"][0] > 0.99


def _object_detector_net() -> nn.Sequential:
    """Input channel 0 holds a bright square (the object), channel 1 background noise. In
    layer "0", unit 0 sees the object, unit 1 the noise, unit 2 a little of both; layer "2"
    passes the object on as its unit 0 and mixes the rest into unit 1; the class logit reads
    layer "2"'s unit 0 alone. So the true-class Grad-CAM on layer "2" (the default CAM layer:
    the last conv with a map larger than 1x1) lights up the object, and the object units are
    the right answer by construction."""
    net = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.ReLU(),
                        nn.Conv2d(3, 2, 1, bias=False), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2, bias=False)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 0.2]]).view(3, 2, 1, 1))
        net[2].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]).view(2, 3, 1, 1))
        net[6].weight.copy_(torch.tensor([[4.0, 0.0], [-4.0, 0.0]]))
    return net


def test_concept_grad_cam_votes_for_the_units_that_see_the_object():
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(8, 2, 16, 16)
    for i in range(8):
        r, c = torch.randint(0, 12, (2,), generator=g).tolist()
        x[i, 0, r:r + 4, c:c + 4] = 1.0
    x[:, 1] = torch.rand(8, 16, 16, generator=g) * 0.5
    crit = get_criterion("concept", top_fraction=1 / 3)
    scores = crit.score(_object_detector_net(), [(x, torch.zeros(8, dtype=torch.long))])
    assert crit.votes["0"].tolist() == [8.0, 0.0, 0.0]
    assert crit.votes["2"].tolist() == [8.0, 0.0]
    assert int(scores["0"].argmax()) == 0 and int(scores["2"].argmax()) == 0


def test_concept_votes_at_the_cutoff_do_not_depend_on_unit_order():
    """Two votes per image; three units tie for the second: they share it equally, and
    reordering the units reorders the votes and nothing else."""
    from edgeprune.criteria.concept import majority_votes

    iou = torch.tensor([[0.5, 0.3, 0.3, 0.3, 0.0, 0.1],
                        [0.0, 0.0, 0.0, 0.9, 0.2, 0.0]])
    votes = majority_votes(iou, top_fraction=2 / 6)
    torch.testing.assert_close(votes, torch.tensor([1, 1 / 3, 1 / 3, 4 / 3, 1, 0]))
    assert float(votes.sum()) == pytest.approx(4.0)  # m = 2 votes per image
    for seed in range(5):
        order = torch.randperm(6, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(majority_votes(iou[:, order], 2 / 6), votes[order])


def test_concept_masks_follow_the_imagefolder_convention(tmp_path):
    from PIL import Image

    from edgeprune.data import load_imagefolder
    from edgeprune.data.concept_masks import mask_batches, mask_path

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            (tmp_path / "masks" / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((6, 6), 40 * i + 20, np.uint8)).save(
                    tmp_path / split / cls / f"{i}.jpg")
                mask = np.zeros((6, 6), np.uint8)
                mask[:, : 2 + i] = 255
                Image.fromarray(mask).save(tmp_path / "masks" / split / cls / f"{i}.png")
    data = load_imagefolder(tmp_path, (1, 12, 12))
    assert mask_path(tmp_path, tmp_path / "train/a/1.jpg") == tmp_path / "masks/train/a/1.png"
    (x, y, m), = mask_batches(data.train, tmp_path, n=4)
    assert x.shape == (4, 1, 12, 12) and m.shape == (4, 12, 12) and m.dtype == torch.bool
    assert sorted(m[:, 0].sum(1).tolist()) == [4, 4, 6, 6]  # 2 or 3 of 6 columns, scaled x2
    assert mask_batches(data.train, tmp_path / "train", n=4) is None  # no masks/ there


def test_redundancy_orders_keep_one_per_block():
    """Three blocks of mutually identical channels: keeping three keeps one of each, the
    strongest of its block, whichever ordering builds the groups."""
    from edgeprune.criteria.redundancy import agglomerative_order, cluster_labels, diverse_order

    block = torch.tensor([0, 1, 0, 2, 1, 0, 2])
    similarity = (block[:, None] == block[None, :]).float() * 0.9 + 0.05
    strength = torch.tensor([1.0, 5.0, 3.0, 2.0, 4.0, 0.5, 6.0])
    invalid = torch.zeros(7, dtype=torch.bool)
    for redundancy in (diverse_order(similarity, strength, invalid),
                       agglomerative_order(1 - similarity, strength, invalid)):
        assert set(redundancy.order[:3].tolist()) == {2, 1, 6}
        groups = sorted(sorted(g) for g in redundancy.groups(3))
        assert groups == [[0, 2, 5], [1, 4], [3, 6]]
        assert redundancy.scores()[2] > redundancy.scores()[0]
    labels = cluster_labels(1 - similarity, 3)
    assert len(set(labels.tolist())) == 3
    assert all((labels[block == b] == labels[block == b][0]).all() for b in range(3))


def test_lrp_samples_per_class_uses_that_many_images(batches):
    model = _model("democnn")
    few = get_criterion("lrp", samples_per_class=1).score(model, batches)
    first = [(torch.cat([x for x, _ in batches])[:4], torch.arange(4))]
    torch.testing.assert_close(few["3"], get_criterion("lrp").score(model, first)["3"])


# ------------------------------------------------------------------ BatchNorm re-calibration

def test_recalibrate_bn_re_estimates_statistics_without_touching_weights(batches):
    from edgeprune.pruning.bn_recalibration import recalibrate_bn

    model = _bn_net().train()
    model[8].train(False)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k
               and "num_batches" not in k}
    recalibrate_bn(model, batches)
    with torch.no_grad():
        conv_out = torch.cat([model[0](x) for x, _ in batches])
    torch.testing.assert_close(model[1].running_mean, conv_out.mean((0, 2, 3)),
                               rtol=1e-4, atol=1e-5)
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model[1].training and not model[8].training and model[1].momentum == 0.1


def test_recalibrate_bn_weights_every_image_the_same_and_skips_single_image_batches():
    from edgeprune.pruning.bn_recalibration import recalibrate_bn

    model = _bn_net()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(21, *SHAPE, generator=g) * 2 + 1
    recalibrate_bn(model, [(x[:4],), (x[4:20],), (x[20:],)])  # 4, 16 and a lone image
    with torch.no_grad():
        conv_out = model[0](x)
    torch.testing.assert_close(model[1].running_mean, conv_out.mean((0, 2, 3)),
                               rtol=1e-4, atol=1e-5)


def test_recalibrate_bn_without_images_or_on_failure_keeps_the_old_statistics(batches):
    from edgeprune.pruning.bn_recalibration import recalibrate_bn

    model = _bn_net()
    with torch.no_grad():
        model[1].running_mean.fill_(3.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recalibrate_bn(model, [])
    recalibrate_bn(model, batches, max_samples=0)
    with pytest.raises(RuntimeError):
        recalibrate_bn(model, [batches[0], (torch.randn(4, 3, 5, 5),)])  # wrong channels
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key


class _InPlaceResidual(nn.Module):
    """conv -> BN, then an in-place add (as torchvision's BasicBlock does) and ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        out += 10.0
        return self.fc(torch.relu(out).mean((2, 3)))


def test_feature_maps_are_read_before_later_in_place_ops(batches):
    from edgeprune.criteria.feature_maps import collect_maps

    model = _InPlaceResidual().eval()
    maps = collect_maps(model, batches, ["conv"])["conv"]
    with torch.no_grad():
        expected = torch.cat([model.bn(model.conv(x)) for x, _ in batches])
    torch.testing.assert_close(maps, expected)


def test_residual_stream_channels_are_read_at_the_sum(batches):
    """conv2 and the shortcut conv feed the residual sum: their channels are the stream's, read
    at the sum (the input of the block's second ReLU call) and through that ReLU; conv1 is read
    after its BatchNorm and first ReLU call."""
    from edgeprune.criteria.feature_maps import collect_maps, find_taps

    model = _model("resnet20")
    taps = find_taps(model)
    for name in ("layers.3.conv2", "layers.3.shortcut.0"):
        tap = taps[name]
        assert (tap.module, tap.call, tap.read_input) == ("layers.3.relu", 1, True), name
    assert (taps["layers.3.conv1"].module, taps["layers.3.conv1"].call) == ("layers.3.bn1", 0)
    maps = collect_maps(model, batches, ["layers.3.conv1", "layers.3.conv2"])
    block = model.layers[3]
    with torch.no_grad():
        h = torch.cat([model.layers[:3](model.relu(model.bn1(model.conv1(x))))
                       for x, _ in batches])
        inner = torch.relu(block.bn1(block.conv1(h)))
        stream = torch.relu(block.bn2(block.conv2(inner)) + block.shortcut(h))
    torch.testing.assert_close(maps["layers.3.conv1"], inner)
    torch.testing.assert_close(maps["layers.3.conv2"], stream)


def test_redundancy_groups_follow_any_kept_set():
    from edgeprune.criteria.redundancy import Redundancy

    redundancy = Redundancy(order=torch.tensor([0, 1, 2, 3, 4]),
                            parent=torch.tensor([-1, 0, 1, 0, -1]),
                            invalid=torch.tensor([False, False, False, False, True]))
    assert redundancy.groups(2) == [[0, 3], [1, 2]]
    # the pruner kept 1 and 3 (not a prefix of the order): 2 walks up to 1, 0 has no kept parent
    assert redundancy.groups_for({1, 3}) == [[1, 2], [3]]


@pytest.mark.parametrize("criterion", ["gradient", "act-taylor"])
def test_lrp_paper_baselines_match_hand_computation(criterion, batches):
    """|sum g| and |sum a*g| at each conv's output, g the summed cross-entropy gradient,
    normalized per layer."""
    model = _bn_net()
    scores = get_criterion(criterion).score(model, batches)
    conv = model[3]
    total = torch.zeros(8, dtype=torch.float64)
    for x, y in batches:
        a = model[:3](x)
        out = conv(a).requires_grad_(True)
        logits = model[6:](torch.relu(model[4](out)))
        g = torch.autograd.grad(nn.functional.cross_entropy(logits, y, reduction="sum"), out)[0]
        term = g * out if criterion == "act-taylor" else g
        total += term.detach().double().sum((0, 2, 3))
    expected = total.abs() / total.abs().sum()
    torch.testing.assert_close(scores["3"], expected.float(), rtol=1e-4, atol=1e-6)


# ------------------------------------------- lrp (the authors' rules) against a hand-computed LRP

class _ResidualTiny(nn.Module):
    """conv1 -> ReLU -> conv2, added back to conv1's output -> ReLU -> pool -> linear, every
    layer with a (positive) bias."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            for layer in (self.conv1, self.conv2, self.fc):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.5)
                layer.bias.copy_(torch.rand(layer.bias.shape, generator=g) * 0.5 + 0.2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv1(x))
        return self.fc(self.pool(torch.relu(self.conv2(h) + h)).flatten(1))


def _hand_lrp(net: _ResidualTiny, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """The authors' LRP written out: relevance 1 on the true class; epsilon at the linear
    layer; Norm (proportional) at the average pool and the residual sum; alpha1-beta0 at conv2
    with its bias ignored; ReLUs pass relevance through. Per-layer scores: sum of |R| at each
    conv's output, normalized."""
    eps = 1e-6
    with torch.no_grad():
        z1 = net.conv1(x)
        h = torch.relu(z1)
        z2 = net.conv2(h)
        s = z2 + h
        r = torch.relu(s)
        p = net.pool(r).flatten(1)
        out = net.fc(p)
        rel_out = nn.functional.one_hot(y, out.shape[1]).float()
        rel_p = p * ((rel_out / (out + eps * torch.where(out >= 0, 1.0, -1.0))) @ net.fc.weight)
        area = r.shape[2] * r.shape[3]
        rel_r = r * (rel_p / (p * area + 1e-12))[:, :, None, None]
        rel_s = rel_r                                          # ReLU: pass
        rel_z2 = z2 * rel_s / s
        rel_h_res = h * rel_s / s
    hh = h.clone().requires_grad_(True)
    zp = nn.functional.conv2d(hh, net.conv2.weight.clamp(min=0), None, padding=1)
    (zp * (rel_z2 / (zp + 1e-6)).detach()).sum().backward()
    rel_h = hh.detach() * hh.grad + rel_h_res
    rel_z1 = rel_h                                             # ReLU: pass
    raw = {"conv1": rel_z1.abs().sum((0, 2, 3)), "conv2": rel_z2.abs().sum((0, 2, 3))}
    return {k: v / v.sum() for k, v in raw.items()}


def test_lrp_matches_a_hand_computed_alpha1_beta0_without_bias():
    net = _ResidualTiny().eval()
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(6, 1, 8, 8, generator=g), torch.arange(6) % 3
    expected = _hand_lrp(net, x, y)
    scores = get_criterion("lrp").score(net, [(x, y)])
    for name, values in expected.items():
        torch.testing.assert_close(scores[name], values, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("wrong", ["logit start", "bias kept", "epsilon rule", "z+ rule"])
def test_the_hand_computed_check_fails_a_wrong_rule(monkeypatch, wrong):
    """Each way of getting LRP wrong that the authors' code rules out moves the scores off
    the hand computation, so the test above can tell a wrong rule from the right one."""
    from zennit.rules import Epsilon as EpsilonRule
    from zennit.rules import ZPlus

    import edgeprune.criteria.lrp as lrp

    net = _ResidualTiny().eval()
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(6, 1, 8, 8, generator=g), torch.arange(6) % 3
    options = {"logit start": {"start": "logit"}, "bias kept": {"ignore_bias": False}}
    if wrong in ("epsilon rule", "z+ rule"):
        rule = EpsilonRule() if wrong == "epsilon rule" else ZPlus()
        original = lrp.lrp_composite

        def composite(low, high, epsilon, canonizers, ignore_bias=True):
            made = original(low, high, epsilon, canonizers, ignore_bias)
            made.layer_map = [(t, rule if t is lrp.Convolution else r)
                              for t, r in made.layer_map]
            return made

        monkeypatch.setattr(lrp, "lrp_composite", composite)
    scores = get_criterion("lrp", **options.get(wrong, {})).score(net, [(x, y)])
    expected = _hand_lrp(net, x, y)
    assert any(not torch.allclose(scores[n], v, rtol=1e-3, atol=1e-5)
               for n, v in expected.items())
