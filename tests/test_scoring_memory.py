"""Scoring in bounded memory: criteria accumulate per-channel statistics batch by batch, so the
scores do not depend on how the reference images are batched, and the compact summaries
(running correlation sums, histogram quantiles) give what the whole maps gave."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.criteria import CRITERIA, get_criterion
from edgeprune.criteria.am_images import AMConfig
from edgeprune.criteria.concept import BINS, UnitQuantile
from edgeprune.criteria.fmcluster import CorrelationSums
from edgeprune.data import make_synthetic
from edgeprune.models import create_model

pytestmark = pytest.mark.usefixtures("quiet_single_thread")

SHAPE = (1, 16, 16)
DATA_CRITERIA = sorted(n for n, c in CRITERIA.items() if c.needs_data)
FAST = {"actmax": {"am": AMConfig(steps=2, batch=512)},
        "function": {"am": AMConfig(steps=2, batch=512)}}


def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, *SHAPE, generator=g), torch.arange(n) % 4


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_scores_do_not_depend_on_how_the_reference_images_are_batched(criterion):
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1, num_classes=4).eval()
    x, y = _images(24)
    whole = get_criterion(criterion, **FAST.get(criterion, {})).score(model, [(x, y)])
    split = get_criterion(criterion, **FAST.get(criterion, {})).score(
        model, [(x[i:i + 5], y[i:i + 5]) for i in range(0, 24, 5)])
    assert whole.keys() == split.keys()
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-6,
                                   msg=f"{criterion} {name}")


def _reference_abs_correlation(maps: torch.Tensor) -> torch.Tensor:
    x = maps.transpose(0, 1).reshape(maps.shape[1], -1).double()
    x = x - x.mean(1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True)
    return (x @ x.T).abs()


def test_correlation_sums_over_batches_match_the_correlation_of_all_maps():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(30, 3, 5, 5, generator=g)
    maps = torch.cat([base, base[:, :1] * -2 + 0.1 * torch.randn(30, 1, 5, 5, generator=g),
                      torch.full((30, 1, 5, 5), 7.0)], dim=1) + 1000.0  # a far offset
    sums = CorrelationSums()
    for part in maps.split(7):
        sums.add(part)
    similarity, flat = sums.abs_correlation()
    assert flat.tolist() == [False, False, False, False, True]  # the constant unit
    torch.testing.assert_close(similarity[:4, :4].double(),
                               _reference_abs_correlation(maps[:, :4]), rtol=0, atol=1e-5)
    assert similarity[0, 3] > 0.95  # the near-copy of unit 0, sign flipped


def _exact_thresholds(maps: torch.Tensor, size: tuple[int, int], quantile: float
                      ) -> torch.Tensor:
    up = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    flat = up.transpose(0, 1).flatten(1)
    k = int(torch.tensor(quantile * flat.shape[1]).ceil())
    return flat.topk(k, dim=1).values[:, -1]


@pytest.mark.parametrize("kind", ["continuous", "constant per image", "saturated"])
def test_histogram_quantile_gives_the_top_k_masks_to_its_resolution(kind):
    g = torch.Generator().manual_seed(0)
    maps = torch.relu(torch.randn(40, 6, 4, 4, generator=g))
    if kind == "constant per image":  # a Linear unit's map: one value per image, many ties
        maps = maps.mean((2, 3), keepdim=True).expand(-1, -1, 4, 4).contiguous()
    elif kind == "saturated":  # ReLU6: many values exactly at the top
        maps = (maps * 8).clamp(max=6.0)
    size, quantile = (12, 12), 0.05
    quantiles = UnitQuantile(maps.transpose(0, 1).flatten(1).amax(1), quantile)
    for refine in (True, False):
        for part in maps.split(9):
            quantiles.add(part, size)
        if refine:
            quantiles.refine()
    got = quantiles.thresholds()
    exact = _exact_thresholds(maps, size, quantile)
    peaks = maps.transpose(0, 1).flatten(1).amax(1)
    assert torch.all(got <= exact + 1e-6)
    assert torch.all(got >= exact - peaks / BINS**2 - 1e-6)
    up = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    differ = (up >= got.view(1, -1, 1, 1)) != (up >= exact.view(1, -1, 1, 1))
    gap = (exact.view(1, -1, 1, 1) - up).abs() / peaks.view(1, -1, 1, 1)
    assert torch.all(gap[differ] <= 1 / BINS**2)  # only values as close as the resolution
    assert differ.sum() <= 0.001 * differ.numel()


def test_units_that_never_fire_enough_get_no_threshold():
    maps = torch.zeros(10, 2, 3, 3)
    maps[0, 1, 0, 0] = 1.0  # one positive value: fewer than the quantile asks for
    quantiles = UnitQuantile(maps.transpose(0, 1).flatten(1).amax(1), 0.5)
    quantiles.add(maps, (3, 3))
    quantiles.refine()
    quantiles.add(maps, (3, 3))
    assert quantiles.thresholds().tolist() == [0.0, 0.0]


def test_synthetic_images_are_generated_in_chunks_from_one_random_stream():
    data = make_synthetic(shape=(3, 8, 8), n_train=150, n_test=10)
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand((4, 3, 4, 4), generator=g)
    templates = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    templates = (templates + templates.flip(-1)) / 2
    templates = (templates - templates.amin()) / (templates.amax() - templates.amin())
    y = torch.arange(150) % 4
    x = (0.6 * templates[y] + 0.4 * torch.rand((150, 3, 8, 8), generator=g)) * 255
    assert torch.equal(data.train.images, x.round().clamp(0, 255).to(torch.uint8))


def test_score_batch_must_be_positive():
    result = CliRunner().invoke(app, ["score", "demo", "--score-batch", "0"])
    assert result.exit_code != 0
    assert "--score-batch" in result.output


def test_auto_score_batch_keeps_a_batch_of_feature_maps_under_the_budget():
    from edgeprune.criteria.feature_maps import BATCH_BYTES, feature_map_bytes
    from edgeprune.jobs.loading import MAX_SCORE_BATCH, score_batch_size
    from edgeprune.spec import InputSpec

    model = create_model("resnet20", in_channels=3, num_classes=4).eval()
    small = InputSpec(3, 32, 32, (0.5,) * 3, (0.25,) * 3, ("a", "b", "c", "d"))
    large = InputSpec(3, 224, 224, (0.5,) * 3, (0.25,) * 3, ("a", "b", "c", "d"))
    assert score_batch_size(model, small) == MAX_SCORE_BATCH
    per_image = feature_map_bytes(model, large.shape)
    batch = score_batch_size(model, large)
    assert batch * per_image <= BATCH_BYTES < (batch + 1) * per_image
    assert score_batch_size(model, large, requested=3) == 3
