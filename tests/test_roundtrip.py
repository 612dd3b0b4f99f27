"""Every pruned model round-trips: what `prune` and `compress` save (an edgeprune checkpoint)
loads back the way `edgeprune export` loads it (`load_model(path)`) to the same outputs. Over
every architecture the pruning tests prune (test_pruning_arch.py), plus the structure pruning
changes beyond widths: LayerNorm shapes (ConvNeXt's residual stream), attention head counts,
and norm-act wrappers whose `in_channels` is a read-only property."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_pruning_arch import FAST, NUM_CLASSES, SLOW, TORCHVISION, ZOO_SHAPES, _lively
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.models import build_arch, list_models, load_model
from edgeprune.models.checkpoint import ArchRef, save_checkpoint
from edgeprune.pruning import prune
from edgeprune.spec import InputSpec

pytestmark = pytest.mark.usefixtures("quiet_single_thread")


def round_trip(model: nn.Module, arch: ArchRef, x: torch.Tensor, tmp_path, *,
               trust_code: bool = False) -> nn.Module:
    """Save `model` as `prune` does, load it as `export` does; assert the same outputs."""
    c, h, w = x.shape[1:]
    spec = InputSpec(c, h, w, (0.5,) * c, (0.25,) * c, tuple(map(str, range(NUM_CLASSES))))
    path = tmp_path / "pruned.pt"
    save_checkpoint(path, model, arch, spec, {"pruned": {}})
    loaded = load_model(str(path), trust_code=trust_code).model
    batch = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = model.eval()(batch), loaded(batch)
    assert got.shape == expected.shape == (2, NUM_CLASSES)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    return loaded


def _torchvision_arch(name: str) -> tuple[ArchRef, torch.Tensor]:
    extra, side = TORCHVISION.get(name, ({}, 64))
    return (ArchRef(f"torchvision:{name}", {"in_channels": 3, "num_classes": NUM_CLASSES,
                                            **extra}), torch.zeros(1, 3, side, side))


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_pruned_torchvision_classifiers_load_back_to_the_same_outputs(name, tmp_path):
    arch, x = _torchvision_arch(name)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _lively(build_arch(arch))
    result = prune(model, x, flops_reduction=0.4)
    round_trip(result.model, arch, x, tmp_path)


@pytest.mark.parametrize("name", list_models())
def test_pruned_zoo_models_load_back_to_the_same_outputs(name, tmp_path):
    shape = ZOO_SHAPES.get(name, (3, 32, 32))
    arch = ArchRef(name, {"in_channels": shape[0], "num_classes": NUM_CLASSES})
    torch.manual_seed(0)
    model = _lively(build_arch(arch))
    x = torch.zeros(1, *shape)
    round_trip(prune(model, x, flops_reduction=0.5).model, arch, x, tmp_path)


def functional_net() -> nn.Module:
    """The user model written with functional ops that test_pruning_arch prunes."""
    from test_pruning_arch import _FunctionalNet

    return _FunctionalNet()


def test_a_pruned_user_model_loads_back_through_its_factory(tmp_path):
    torch.manual_seed(0)
    model, x = functional_net().eval(), torch.zeros(1, 3, 16, 16)
    result = prune(model, x, flops_reduction=0.2, round_to=4, global_ranking=False)
    arch = ArchRef(f"{__name__}:functional_net")
    round_trip(result.model, arch, x, tmp_path, trust_code=True)


@pytest.mark.slow
def test_convnext_with_its_residual_stream_cut_keeps_its_layernorm_shapes(tmp_path):
    """Uniform ranking cuts ConvNeXt's stream, LayerNorms included: `normalized_shape` must
    be saved (it was not: 'weight of shape [72] and normalized_shape = [96]')."""
    arch, x = _torchvision_arch("convnext_tiny")
    torch.manual_seed(0)
    model = build_arch(arch).eval()
    result = prune(model, x, flops_reduction=0.4, global_ranking=False)
    stem_norm = result.model.features[0][1]
    assert stem_norm.normalized_shape[0] < 96  # the stream did lose channels
    loaded = round_trip(result.model, arch, x, tmp_path)
    assert loaded.features[0][1].normalized_shape == stem_norm.normalized_shape


class ConvNormAct(nn.Module):
    """timm's pattern: a conv+norm wrapper whose `in_channels` is a read-only property."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class HeadAttention(nn.Module):
    """timm's Attention pattern: forward reads `num_heads` and `head_dim` off the module."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = (qkv[0] @ qkv[1].transpose(-2, -1) * self.scale).softmax(-1)
        return self.proj((attn @ qkv[2]).transpose(1, 2).reshape(b, n, -1))


class HybridNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvNormAct(3, 16)
        self.norm = nn.LayerNorm(16)
        self.attn = HeadAttention(16, 4)
        self.head = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.stem(x).flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm(t))
        return self.head(t.mean(1))


def hybrid_net() -> nn.Module:
    return HybridNet()


def _drop_heads_and_stream(model: HybridNet, keep_heads: int, keep_stream: int) -> HybridNet:
    """What Torch-Pruning's head and LayerNorm pruning leaves: smaller tensors and the
    attributes that describe them (num_heads, normalized_shape, in/out widths)."""
    head_dim, s = model.attn.head_dim, slice(0, keep_stream)
    rows = [part * 16 + h * head_dim + i for part in range(3) for h in range(keep_heads)
            for i in range(head_dim)]  # qkv's rows are (part, head, i)
    keep_inner = keep_heads * head_dim
    with torch.no_grad():
        conv, bn = model.stem.conv, model.stem.bn
        model.stem.conv = nn.Conv2d(3, keep_stream, 3, padding=1, bias=False)
        model.stem.conv.weight.copy_(conv.weight[s])
        model.stem.bn = nn.BatchNorm2d(keep_stream).eval()
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(model.stem.bn, key).copy_(getattr(bn, key)[s])
        norm = nn.LayerNorm(keep_stream)
        norm.weight.copy_(model.norm.weight[s])
        norm.bias.copy_(model.norm.bias[s])
        model.norm = norm
        qkv = nn.Linear(keep_stream, 3 * keep_inner)
        qkv.weight.copy_(model.attn.qkv.weight[rows][:, s])
        qkv.bias.copy_(model.attn.qkv.bias[rows])
        proj = nn.Linear(keep_inner, keep_stream)
        proj.weight.copy_(model.attn.proj.weight[s, :keep_inner])
        proj.bias.copy_(model.attn.proj.bias[s])
        model.attn.qkv, model.attn.proj, model.attn.num_heads = qkv, proj, keep_heads
        head = nn.Linear(keep_stream, NUM_CLASSES)
        head.weight.copy_(model.head.weight[:, s])
        head.bias.copy_(model.head.bias)
        model.head = head
    return model


def test_head_counts_layernorm_shapes_and_read_only_widths_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _drop_heads_and_stream(hybrid_net().eval(), keep_heads=2, keep_stream=12)
    assert model.stem.in_channels == 3  # a property: nothing to save or restore
    loaded = round_trip(model, ArchRef(f"{__name__}:hybrid_net"), torch.zeros(1, 3, 8, 8),
                        tmp_path, trust_code=True)
    assert (loaded.attn.num_heads, loaded.norm.normalized_shape) == (2, (12,))


def test_a_saved_structure_cannot_add_attributes_or_replace_objects(tmp_path):
    torch.manual_seed(0)
    model = hybrid_net().eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, ArchRef(f"{__name__}:hybrid_net"),
                    InputSpec(3, 8, 8, (0.5,) * 3, (0.25,) * 3, tuple("abcdefghij")))
    ckpt = torch.load(path, weights_only=True)
    ckpt["structure"]["attn"].update({"forward": 3, "__dict__": {"x": 1}, "new_attr": 5,
                                      "head_dim": "4"})
    ckpt["structure"]["stem"] = {"in_channels": 99}
    torch.save(ckpt, path)
    loaded = load_model(str(path), trust_code=True).model
    assert not hasattr(loaded.attn, "new_attr") and callable(loaded.attn.forward)
    assert loaded.attn.head_dim == 4 and loaded.stem.in_channels == 3


def test_integer_weights_get_a_named_error(tmp_path):
    arch = ArchRef("democnn", {"in_channels": 1, "num_classes": 4})
    model = build_arch(arch)
    path = tmp_path / "int.pt"
    save_checkpoint(path, model, arch, InputSpec(1, 28, 28, (0.5,), (0.5,), tuple("abcd")))
    ckpt = torch.load(path, weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    ckpt["state_dict"][key] = ckpt["state_dict"][key].to(torch.int64)
    torch.save(ckpt, path)
    with pytest.raises(EdgepruneError, match=f"{key} holds torch.int64"):
        load_model(str(path))

