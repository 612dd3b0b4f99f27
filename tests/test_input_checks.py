"""One set of input checks for every command that loads a model with data (prune, score,
export, train, compress): class count against the dataset and input channels against the
first layer, each a one-line error that names the fix for the route the user took."""

from __future__ import annotations

import pytest
from helpers import assert_one_line_error, run_cli
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.jobs.loading import check_inputs, check_outputs
from edgeprune.spec import InputSpec

FACTORY = '''
from torch import nn


def wide(num_classes=1000):
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, num_classes))
'''


def _rgb_model(num_classes: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, num_classes))


@pytest.mark.parametrize("command", ["prune", "score", "export"])
def test_a_factory_with_another_class_count_is_told_its_keyword_argument(
        command, tmp_path, monkeypatch, capsys):
    (tmp_path / "user_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    extra = {"prune": ["--criterion", "l1", "--out", str(tmp_path / "p.pt")],
             "score": ["--criterion", "l1", "--out", str(tmp_path / "s.pt")],
             "export": ["--out", str(tmp_path / "e")]}[command]
    code, _, err = run_cli(capsys, command, "user_models:wide", "--dataset", "synthetic",
                           *extra)
    assert_one_line_error(code, err, "the model outputs (1, 1000) but the dataset has 4 "
                          "classes; build it with 4 classes: --model 'user_models:wide?"
                          "num_classes=4'")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == [
        "user_models.py"]  # nothing written


def test_a_checkpoint_with_another_class_count_is_told_to_bring_matching_weights() -> None:
    spec = InputSpec(3, 8, 8, (0.5,) * 3, (0.5,) * 3, tuple("abcd"))
    with pytest.raises(EdgepruneError, match="outputs \\(1, 10\\) but the dataset has 4 classes; "
                       "pass a checkpoint or --weights made for 4 classes"):
        check_outputs(_rgb_model(10), spec, 4, "runs/r/model.pt")


def test_a_three_channel_model_on_one_channel_inputs_names_the_layer_and_the_fix() -> None:
    spec = InputSpec(1, 64, 64, (0.5,), (0.5,), tuple("abcd"))
    with pytest.raises(EdgepruneError) as e:
        check_inputs(_rgb_model(), spec, "model.pt")
    assert str(e.value) == ("the model's first layer 0 takes 3-channel inputs but the inputs "
                            "have 1 (1x64x64); pass --input-size 3x64x64, or pass a checkpoint "
                            "or --weights made for 1 channels, or data with as many")
    with pytest.raises(EdgepruneError, match="--model 'timm:resnet18\\?in_chans=1'"):
        check_inputs(_rgb_model(), spec, "timm:resnet18")


def test_images_too_small_for_the_models_downsampling_name_the_fix() -> None:
    """ConvNeXt on 28x28 Fashion-MNIST failed with PyTorch's "Kernel size can't be greater
    than actual input size" and no way out."""
    model = nn.Sequential(nn.Conv2d(1, 8, 4, stride=4), nn.Conv2d(8, 8, 4, stride=4),
                          nn.Conv2d(8, 8, 4, stride=4), nn.Flatten(), nn.LazyLinear(4))
    spec = InputSpec(1, 28, 28, (0.5,), (0.5,), tuple("abcd"))
    with pytest.raises(EdgepruneError) as e:
        check_outputs(model, spec, 4)
    text = str(e.value)
    assert text.startswith("the model fails on a 1x28x28 input: RuntimeError:")
    assert "needs larger images than 28x28" in text and "--input-size 1x64x64" in text
    assert "\n" not in text


def test_an_in_memory_dataset_of_another_size_says_it_is_not_resized() -> None:
    """--input-size resizes an image folder only; on the demo data it cannot be the fix."""
    from edgeprune.data import load_demo_subset
    from edgeprune.jobs.loading import check_shape

    spec = InputSpec(1, 64, 64, (0.5,), (0.5,), tuple("abcdefghij"))
    with pytest.raises(EdgepruneError, match="gives 1x28x28 images; demo's images are not "
                       "resized: drop --input-size or use a model made for them"):
        check_shape(spec, load_demo_subset())


def test_matching_models_pass_and_keep_their_mode() -> None:
    model = _rgb_model().train()
    spec = InputSpec(3, 8, 8, (0.5,) * 3, (0.5,) * 3, tuple("abcd"))
    check_inputs(model, spec)
    check_outputs(model, spec, 4)
    assert model.training


def test_an_image_folder_is_resized_to_the_size_its_checkpoint_was_trained_at(tmp_path):
    """A checkpoint made at 3x32x32 is used on an image folder without --input-size again
    (the folder was read at the default 224 pixels and the command refused the model)."""
    from imagetree import CLASSES, make_tree

    from edgeprune.jobs.loading import load_model_and_data
    from edgeprune.models import create_model
    from edgeprune.models.checkpoint import ArchRef, save_checkpoint

    tree = make_tree(tmp_path / "photos", per_class=4)
    kwargs = {"in_channels": 3, "num_classes": len(CLASSES)}
    spec = InputSpec(3, 32, 32, (0.5,) * 3, (0.25,) * 3, tuple(CLASSES))
    save_checkpoint(tmp_path / "m.pt", create_model("democnn", **kwargs),
                    ArchRef("democnn", kwargs), spec)
    md = load_model_and_data(str(tmp_path / "m.pt"), dataset="imagefolder", data_dir=tree,
                             workers=0)
    assert md.spec.shape == md.data.spec.shape == (3, 32, 32)
    x, _ = next(iter(md.data.loader("train", batch_size=2)))
    assert tuple(x.shape[1:]) == (3, 32, 32) and md.model(x).shape == (2, len(CLASSES))
