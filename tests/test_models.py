"""Model zoo, model references and the checkpoint format."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.models import create_model, demo_checkpoint_path, list_models, load_model
from edgeprune.models.checkpoint import ArchRef, parameter_shapes, save_checkpoint
from edgeprune.spec import InputSpec, parse_input_size

SPEC = InputSpec(1, 28, 28, (0.5,), (0.5,), tuple("abcdefghij"))


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
def test_zoo_models_build_for_any_channels_and_classes(name, in_channels, size):
    model = create_model(name, in_channels=in_channels, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_channels, size, size)).shape == (2, 7)


def test_zoo_parameter_counts_match_the_papers():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(create_model("resnet20")) - 0.27e6) < 0.01e6  # He et al.: 0.27M
    assert abs(count(create_model("resnet56")) - 0.85e6) < 0.01e6  # 0.85M
    assert abs(count(create_model("vgg16_bn")) - 14.7e6) < 0.1e6  # CIFAR VGG-16: ~14.7M


def test_unknown_zoo_name_suggests_close_match():
    with pytest.raises(EdgepruneError, match="did you mean 'resnet20'"):
        create_model("resnet_20")


def test_torchvision_reference_adapts_input_channels():
    loaded = load_model("torchvision:resnet18", in_channels=1, num_classes=5)
    with torch.no_grad():
        assert loaded.model(torch.randn(1, 1, 32, 32)).shape == (1, 5)


def test_unknown_torchvision_model_is_one_line_error():
    with pytest.raises(EdgepruneError, match="torchvision has no model"):
        load_model("torchvision:resnet1000")


def test_import_string_with_weights(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        "import torch.nn as nn\n"
        "def tiny():\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),"
        " nn.Flatten(), nn.Linear(4, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ref = load_model("mynets:tiny").model
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    loaded = load_model("mynets:tiny", weights=tmp_path / "w.pt")
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded.model(x), ref(x))


@pytest.mark.parametrize("ref,match", [
    ("no_such_pkg.mod:factory", "cannot import 'no_such_pkg.mod'"),
    ("json:no_such_factory", "has no callable 'no_such_factory'"),
])
def test_bad_import_strings(ref, match):
    with pytest.raises(EdgepruneError, match=match):
        load_model(ref)


def test_mismatched_weights_name_the_keys(tmp_path):
    torch.save(create_model("resnet20", 1, 10).state_dict(), tmp_path / "r20.pt")
    with pytest.raises(EdgepruneError, match="do not match the model.*missing"):
        load_model("democnn", weights=tmp_path / "r20.pt", in_channels=1)


@pytest.mark.parametrize("content", [b"not a checkpoint", b""])
def test_unreadable_model_file(tmp_path, content):
    (tmp_path / "broken.pt").write_bytes(content)
    with pytest.raises(EdgepruneError, match="cannot read model file"):
        load_model(str(tmp_path / "broken.pt"))


def test_missing_model_file(tmp_path):
    with pytest.raises(EdgepruneError, match="does not exist"):
        load_model(str(tmp_path / "nope.pt"))


@pytest.mark.parametrize("content", [b"hello\n", b"not a checkpoint", b""])
def test_a_file_that_is_not_torch_save_says_so_whatever_torch_raised(tmp_path, content):
    """A text file made torch.load raise KeyError('101'), which reached the user as ': 101'."""
    (tmp_path / "text.pt").write_bytes(content)
    with pytest.raises(EdgepruneError, match="text.pt: it is empty, damaged or not a "
                       "torch.save file; give an edgeprune checkpoint"):
        load_model(str(tmp_path / "text.pt"))


def test_state_dict_file_without_architecture(tmp_path):
    torch.save(create_model("democnn", 1).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(EdgepruneError, match="holds a state_dict but no architecture: give the "
                       "architecture as the model .* with --weights .*sd.pt"):
        load_model(str(tmp_path / "sd.pt"))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(EdgepruneError, match="holds a list, not a checkpoint or state_dict"):
        load_model(str(tmp_path / "list.pt"))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_weights_saved_from_a_ddp_or_compiled_model_load_into_the_bare_one(tmp_path, prefix):
    """A state_dict saved from DistributedDataParallel or torch.compile has every key behind
    'module.' or '_orig_mod.'; it loads into the architecture it came from."""
    ref = create_model("democnn", 1).eval()
    torch.save({"state_dict": {prefix + k: v for k, v in ref.state_dict().items()},
                "epoch": 3}, tmp_path / "ddp.pt")
    loaded = load_model("democnn", weights=tmp_path / "ddp.pt", in_channels=1).model.eval()
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), ref(x))


def test_pickled_module(tmp_path):
    model = create_model("democnn", 1).eval()
    torch.save(model, tmp_path / "full.pt")
    with pytest.raises(EdgepruneError, match="--trust-code"):
        load_model(str(tmp_path / "full.pt"))
    loaded = load_model(str(tmp_path / "full.pt"), trust_code=True)
    x = torch.randn(1, 1, 28, 28)
    torch.testing.assert_close(loaded.model(x), model(x))


def shrink_first_conv(model: nn.Sequential, keep: int) -> nn.Sequential:
    """Hand-made channel pruning of democnn's first conv/bn pair and the next conv's inputs."""
    conv, bn, nxt = model[0], model[1], model[3]
    conv.weight = nn.Parameter(conv.weight[:keep].clone())
    conv.out_channels = keep
    for name in ("weight", "bias"):
        setattr(bn, name, nn.Parameter(getattr(bn, name)[:keep].clone()))
    bn.running_mean, bn.running_var = bn.running_mean[:keep], bn.running_var[:keep]
    bn.num_features = keep
    nxt.weight = nn.Parameter(nxt.weight[:, :keep].clone())
    nxt.in_channels = keep
    return model


def test_checkpoint_rebuilds_a_pruned_architecture(tmp_path):
    model = shrink_first_conv(create_model("democnn", 1, 10), keep=8).eval()
    save_checkpoint(tmp_path / "p.pt", model, ArchRef("democnn", {"in_channels": 1,
                                                                 "num_classes": 10}), SPEC)
    loaded = load_model(str(tmp_path / "p.pt"))
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(loaded.model(x), model(x))
    assert loaded.model[0].out_channels == 8 and loaded.spec == SPEC
    assert parameter_shapes(loaded.model)["0.weight"] == [8, 1, 3, 3]
    obj = torch.load(tmp_path / "p.pt", weights_only=True)  # no pickled code inside
    assert json.dumps(obj["structure"])  # the structure is plain data


@pytest.mark.parametrize("tag", ["edgeprune.checkpoint/1", "edgeprune.models.checkpoint/1"])
def test_checkpoints_written_by_earlier_builds_still_load(tmp_path, tag):
    """Files written before and by the builds that wrote another tag for the same layout,
    such as the ResNet-20 the benchmarks keep in the repository, load as they are; new files
    carry the format's own tag."""
    model = create_model("democnn", 1, 10).eval()
    save_checkpoint(tmp_path / "m.pt", model, ArchRef("democnn", {"in_channels": 1}), SPEC)
    obj = torch.load(tmp_path / "m.pt", weights_only=True)
    assert obj["format"] == "edgeprune.checkpoint/1"
    torch.save({**obj, "format": tag}, tmp_path / "old.pt")
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(load_model(str(tmp_path / "old.pt")).model(x), model(x))
    kept = Path(__file__).parents[1] / "benchmarks" / "models" / "resnet20_fashion_mnist.pt"
    assert load_model(str(kept)).meta["test_acc"] > 0.9


def test_demo_checkpoint_is_shipped_and_accurate_metadata():
    assert demo_checkpoint_path().stat().st_size < 5e6
    loaded = load_model("demo")
    assert loaded.spec.shape == (1, 28, 28) and loaded.spec.num_classes == 10
    assert loaded.meta["test_acc"] >= 0.925 and loaded.meta["trained_on"] == "fashion-mnist"


def test_load_model_does_not_touch_the_input_file(tmp_path):
    model = create_model("democnn", 1)
    save_checkpoint(tmp_path / "m.pt", model, ArchRef("democnn", {"in_channels": 1}), SPEC)
    before = (tmp_path / "m.pt").read_bytes()
    loaded = load_model(str(tmp_path / "m.pt"))
    copy.deepcopy(loaded.model)(torch.randn(1, 1, 28, 28))
    assert (tmp_path / "m.pt").read_bytes() == before


@pytest.mark.parametrize("text,expect", [("3x32x32", (3, 32, 32)), ("1X28x28", (1, 28, 28))])
def test_parse_input_size(text, expect):
    assert parse_input_size(text) == expect


@pytest.mark.parametrize("text", ["32x32", "axbxc", "0x3x3"])
def test_parse_input_size_errors(text):
    with pytest.raises(EdgepruneError):
        parse_input_size(text)


def test_a_model_built_without_weights_is_initialised_from_the_seed():
    from edgeprune.jobs.loading import load_model_and_data

    def first_weights(seed: int) -> torch.Tensor:
        md = load_model_and_data("resnet20", None, dataset="synthetic", input_size="1x16x16",
                                 seed=seed)
        return next(md.model.parameters()).detach().clone()

    before = torch.random.get_rng_state()
    assert torch.equal(first_weights(0), first_weights(0))
    assert not torch.equal(first_weights(0), first_weights(1))
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's state is kept


# --- references with keyword arguments, and what a reference may call -------------------

FACTORY_SOURCE = (
    "import torch.nn as nn\n"
    "def tiny(num_classes=3, in_chans=3, width=4):\n"
    "    return nn.Sequential(nn.Conv2d(in_chans, width, 3), nn.ReLU(),\n"
    "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
    "                         nn.Linear(width, num_classes))\n"
    "def not_a_model():\n"
    "    return 42\n"
    "class Net(nn.Sequential):\n"
    "    def __init__(self, num_classes=2):\n"
    "        super().__init__(nn.Flatten(), nn.LazyLinear(num_classes))\n")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "usernets.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "usernets"


def test_factory_keyword_arguments_are_literals(user_module):
    loaded = load_model(f"{user_module}:tiny?num_classes=10,in_chans=1,width=6")
    assert loaded.arch.ref == f"{user_module}:tiny"
    assert loaded.arch.kwargs == {"num_classes": 10, "in_chans": 1, "width": 6}
    with torch.no_grad():
        assert loaded.model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert loaded.model[0].out_channels == 6


def test_a_checkpoint_of_a_factory_with_arguments_rebuilds_it(user_module, tmp_path):
    loaded = load_model(f"{user_module}:tiny?num_classes=10,in_chans=1")
    save_checkpoint(tmp_path / "m.pt", loaded.model, loaded.arch, SPEC)
    again = load_model(str(tmp_path / "m.pt"), trust_code=True).model
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(again(x), loaded.model(x))


def test_torchvision_takes_keyword_arguments():
    loaded = load_model("torchvision:googlenet?aux_logits=false,init_weights=False",
                        num_classes=4)
    assert loaded.model.aux1 is None and loaded.arch.kwargs["aux_logits"] is False
    with torch.no_grad():
        assert loaded.model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 4)


@pytest.mark.parametrize("ref,match", [
    ("usernets:tiny?depth=3", "usernets:tiny has no keyword argument 'depth'"),
    ("torchvision:resnet18?depth=3", "torchvision:resnet18 has no keyword argument 'depth'"),
    ("resnet20?depth=3", "zoo model 'resnet20' has no keyword argument 'depth'"),
    ("torchvision:resnet18?num_classes=3e9", r"num_classes=3e\+09 is out of range"),
    ("usernets:tiny?width=10**9", r"width=10\*\*9 is not a literal"),
    ("usernets:tiny?width=__import__('os')", "is not a literal"),
    ("usernets:tiny?num_classes=0", "num_classes=0 must be a whole number of at least 1"),
    ("usernets:tiny?num_classes=2.5", "num_classes=2.5 must be a whole number"),
    ("usernets:tiny?width=(1,2)", r"width=\(1 is not a literal"),
    ("usernets:tiny?width", "'width' is not key=value"),
    ("torchvision:resnet18?weights=DEFAULT", "weights= is not accepted.*--weights FILE"),
    ("usernets:not_a_model", "returned a int, not a torch.nn.Module"),
])
def test_bad_keyword_arguments_are_one_line_errors(user_module, ref, match):
    with pytest.raises(EdgepruneError, match=match):
        load_model(ref)


def test_a_class_count_out_of_range_is_refused_before_building(monkeypatch):
    from torchvision import models as tvm

    monkeypatch.setattr(tvm, "get_model_builder", lambda name: pytest.fail("built"))
    with pytest.raises(EdgepruneError, match="out of range"):
        load_model("torchvision:resnet18?num_classes=3000000000")


def test_a_model_class_is_a_factory(user_module):
    loaded = load_model(f"{user_module}:Net?num_classes=5")
    with torch.no_grad():
        assert loaded.model(torch.randn(2, 3, 4, 4)).shape == (2, 5)


@pytest.mark.parametrize("ref", ["os:system", "builtins:eval", "subprocess:Popen",
                                 "pdb:set_trace", "torch.hub:load", "functools:partial",
                                 "usernets:nn"])
def test_callables_that_are_not_model_factories_are_refused_before_they_are_called(
        user_module, ref, monkeypatch):
    import importlib

    module_name, _, attr = ref.partition(":")
    called = []
    original = getattr(importlib.import_module(module_name), attr)
    if callable(original) and not isinstance(original, type):
        monkeypatch.setattr(importlib.import_module(module_name), attr,
                            lambda *a, **k: called.append(a))
    with pytest.raises(EdgepruneError, match=r"not a model factory|not a torch.nn.Module|has no "
                                             "callable"):
        load_model(ref)
    assert not called


@pytest.mark.parametrize("ref", ["os:system", "pdb:set_trace"])
def test_real_library_functions_are_refused_as_they_are(ref):
    with pytest.raises(EdgepruneError, match="not a model factory"):
        load_model(ref)


def test_a_zip_weights_file_that_inflates_hugely_is_refused_before_inflating(tmp_path):
    import zipfile

    bomb = tmp_path / "w.pt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (64 * 2**20))
    assert bomb.stat().st_size < 2**20
    with pytest.raises(EdgepruneError, match="inflates from .* to 67,108,864 bytes"):
        load_model("democnn", weights=bomb, in_channels=1)


def test_an_ordinary_torch_save_file_is_not_taken_for_a_bomb(tmp_path):
    model = create_model("resnet20", 1, 10)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = load_model("resnet20", weights=tmp_path / "w.pt", in_channels=1)
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(loaded.model(x), model.eval()(x))
