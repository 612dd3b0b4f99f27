"""`timm:NAME` references: built by timm without downloading, described by the model's own
pretrained config, loaded with local --weights, and pruned models that round-trip (timm's
ConvNormAct has a read-only `in_channels`). Skipped when timm is not installed."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("timm")

from test_roundtrip import round_trip  # noqa: E402

from edgeprune.errors import EdgepruneError  # noqa: E402
from edgeprune.models import load_model  # noqa: E402
from edgeprune.pruning import prune  # noqa: E402

pytestmark = pytest.mark.usefixtures("quiet_single_thread")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Any attempt to reach the network fails the test."""
    import socket

    def refuse(*args, **kwargs):
        pytest.fail("a timm: reference tried to open a connection")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_a_timm_model_comes_with_its_pretrained_input_spec():
    loaded = load_model("timm:mobilevit_xxs", in_channels=3, num_classes=3)
    assert loaded.arch.ref == "timm:mobilevit_xxs"
    assert loaded.spec.shape == (3, 256, 256)  # mobilevit_xxs's pretrained_cfg input_size
    assert (loaded.spec.mean, loaded.spec.std) == ((0.0,) * 3, (1.0,) * 3)
    assert len(loaded.spec.labels) == 3
    with torch.no_grad():
        assert loaded.model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_imagenet_class_names_when_the_class_count_is_the_configs():
    loaded = load_model("timm:resnet18?num_classes=1000", num_classes=10)
    assert loaded.spec.mean == pytest.approx((0.485, 0.456, 0.406))
    assert len(loaded.spec.labels) == 1000 and loaded.spec.labels[0].startswith("tench")


def test_keyword_arguments_reach_timm_and_shape_the_spec():
    loaded = load_model("timm:resnet18?in_chans=1", num_classes=5)
    assert loaded.spec.shape == (1, 224, 224)
    assert loaded.spec.mean == pytest.approx(((0.485 + 0.456 + 0.406) / 3,))
    with torch.no_grad():
        assert loaded.model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    vit = load_model("timm:deit_tiny_patch16_224?img_size=32,depth=1", num_classes=5)
    assert vit.spec.shape == (3, 32, 32)


@pytest.mark.parametrize("ref,match", [
    ("timm:resnet18?pretrained=true", "pretrained= is not accepted.*--weights FILE"),
    ("timm:resnet18?checkpoint_path=w.pt", "checkpoint_path= is not accepted"),
    ("timm:hf-hub:timm/resnet18.a1_in1k", "timm has no model 'hf-hub:timm/resnet18.a1_in1k'"),
    ("timm:resnet_18", "timm has no model 'resnet_18'; did you mean"),
    ("timm:resnet18?no_such_option=1", "timm:resnet18 has no keyword argument "
                                       "'no_such_option'"),
])
def test_timm_references_never_download_and_name_what_is_wrong(ref, match):
    with pytest.raises(EdgepruneError, match=match):
        load_model(ref)


def test_local_weights_load_into_a_timm_model(tmp_path):
    torch.manual_seed(0)
    source = load_model("timm:resnet18", num_classes=4).model
    torch.save(source.state_dict(), tmp_path / "w.pth")
    torch.manual_seed(1)
    loaded = load_model("timm:resnet18", weights=tmp_path / "w.pth", num_classes=4).model
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source.eval()(x))


def test_a_timm_checkpoint_loads_without_trust_code(tmp_path):
    """timm: is a library edgeprune builds by name, like torchvision:, so a checkpoint that
    names it is data: it loads without --trust-code."""
    from edgeprune.models.checkpoint import save_checkpoint

    loaded = load_model("timm:resnet18?in_chans=1", num_classes=4)
    save_checkpoint(tmp_path / "m.pt", loaded.model, loaded.arch, loaded.spec)
    again = load_model(str(tmp_path / "m.pt"))
    assert again.arch.kwargs["in_chans"] == 1 and again.spec == loaded.spec
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), loaded.model.eval()(x))


@pytest.mark.slow
def test_a_pruned_mobilevit_round_trips(tmp_path):
    """MobileViT's ConvNormAct has a read-only `in_channels` ('property ... has no setter')."""
    torch.manual_seed(0)
    loaded = load_model("timm:mobilevit_xxs", num_classes=10)
    x = torch.zeros(1, 3, 64, 64)
    result = prune(loaded.model, x, flops_reduction=0.3)
    round_trip(result.model, loaded.arch, x, tmp_path)


def test_a_pruned_vision_transformer_round_trips(tmp_path):
    torch.manual_seed(0)
    loaded = load_model("timm:deit_tiny_patch16_224?img_size=32,depth=2", num_classes=10)
    x = torch.zeros(1, 3, 32, 32)
    result = prune(loaded.model, x, flops_reduction=0.2)
    round_trip(result.model, loaded.arch, x, tmp_path)


def test_a_timm_model_on_a_users_folder_keeps_the_folders_class_names(tmp_path):
    """The pretrained config has 1000 ImageNet classes; on a 3-class folder the spec (and
    so the shipped files) names the folder's classes, not '0', '1', '2'."""
    from imagetree import CLASSES, make_tree

    from edgeprune.jobs.loading import load_model_and_data

    tree = make_tree(tmp_path / "photos", per_class=3)
    md = load_model_and_data("timm:deit_tiny_patch16_224?img_size=32,depth=1",
                             dataset="imagefolder", data_dir=tree, input_size="3x32x32",
                             workers=0)
    assert md.loaded.meta["input_spec_from"] == "timm pretrained_cfg"
    assert md.spec.labels == tuple(CLASSES)
    assert md.spec.mean == pytest.approx((0.485, 0.456, 0.406))  # still the config's


def test_a_model_with_timms_attention_bias_cache_prunes_after_an_eval_forward():
    """EfficientFormer (like LeViT and EfficientViT) caches its attention biases in an eval
    forward pass; under autograd the cache is a non-leaf tensor that deepcopy refuses, and
    after a cut it would hold the uncut biases. Every copy and every cut starts it empty."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("efficientformer_l1", depths=(1, 1, 1, 2), num_vit=1,
                              embed_dims=(16, 16, 32, 32), num_classes=3).eval()
    x = torch.randn(2, 3, 224, 224)
    model(x)  # fills the cache with a tensor that has a grad_fn
    result = prune(model, x, flops_reduction=0.3, criterion="l1")
    assert result.flops_reduction >= 0.3
    with torch.no_grad():
        cached = result.model.eval()(x)
        fresh = result.model.train().eval()(x)  # timm's train() empties the cache
    torch.testing.assert_close(cached, fresh)
