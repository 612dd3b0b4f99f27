"""Attention pruned by heads: timm's attention (DeiT, MobileViT) through Torch-Pruning's
`num_heads`/`prune_num_heads`, torchvision's `nn.MultiheadAttention` by whole heads of the
stream it shares; `num_heads` updated, outputs those of the model with the removed heads
silenced, checkpoints that round-trip, and LRP scores for the attention layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("timm")

from test_roundtrip import round_trip  # noqa: E402

from edgeprune.criteria import get_criterion  # noqa: E402
from edgeprune.criteria.base import prunable_layers  # noqa: E402
from edgeprune.errors import EdgepruneError  # noqa: E402
from edgeprune.models import load_model  # noqa: E402
from edgeprune.pruning import LayerRatios, prune  # noqa: E402
from edgeprune.pruning.attention import heads_of  # noqa: E402

pytestmark = pytest.mark.usefixtures("quiet_single_thread")

DEIT = "timm:deit_tiny_patch16_224?img_size=32,depth=2"
SMALL_VIT = ("torchvision.models.vision_transformer:VisionTransformer?image_size=32,"
             "patch_size=8,num_layers=2,num_heads=4,hidden_dim=64,mlp_dim=128,num_classes=10")


def _deit():
    torch.manual_seed(0)
    return load_model(DEIT, num_classes=10)


def _consistent(attn: nn.Module) -> None:
    """A timm attention whose attributes match its pruned weights."""
    assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim
    assert attn.proj.in_features == attn.num_heads * attn.head_dim == attn.attn_dim


def test_a_head_leaves_a_timm_attention_and_the_rest_compute_as_before():
    loaded = _deit()
    model, x = loaded.model.eval(), torch.zeros(1, 3, 32, 32)
    result = prune(model, x, goal=LayerRatios({"blocks.0.attn.qkv": 0.33}))
    attn = result.model.blocks[0].attn
    assert (attn.num_heads, attn.head_dim) == (2, 64)
    assert result.model.blocks[1].attn.num_heads == 3  # untouched
    _consistent(attn)
    # the dense model with the removed head's query, key and value rows zeroed: that head
    # then adds nothing (softmax of zeros times zero values), so the outputs must agree
    kept = result.kept["blocks.0.attn.qkv"]
    gone = sorted(set(range(3 * 3 * 64)) - set(kept))
    assert len(gone) == 3 * 64 and len({(i % 192) // 64 for i in gone}) == 1
    silenced = load_model(DEIT, num_classes=10).model.eval()
    silenced.load_state_dict(model.state_dict())
    with torch.no_grad():
        silenced.blocks[0].attn.qkv.weight[gone] = 0
        silenced.blocks[0].attn.qkv.bias[gone] = 0
        batch = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(result.model.eval()(batch), silenced(batch),
                                   rtol=1e-4, atol=1e-5)


def test_global_pruning_cuts_heads_and_the_checkpoint_round_trips(tmp_path):
    loaded = _deit()
    x = torch.zeros(1, 3, 32, 32)
    result = prune(loaded.model, x, flops_reduction=0.5)
    assert result.flops_reduction >= 0.5
    before, after = heads_of(loaded.model), heads_of(result.model)
    assert sum(after.values()) < sum(before.values()) and min(after.values()) >= 1
    for name in after:
        _consistent(result.model.get_submodule(name))
    again = round_trip(result.model, loaded.arch, x, tmp_path)
    assert heads_of(again) == after


def test_every_attention_keeps_one_head():
    loaded = _deit()
    result = prune(loaded.model, torch.zeros(1, 3, 32, 32),
                   goal=LayerRatios({"blocks.1.attn.qkv": 0.99}))
    assert result.model.blocks[1].attn.num_heads == 1
    _consistent(result.model.blocks[1].attn)


def test_multihead_attention_loses_whole_heads_and_round_trips(tmp_path):
    torch.manual_seed(0)
    loaded = load_model(SMALL_VIT, num_classes=10)
    x = torch.zeros(1, 3, 32, 32)
    result = prune(loaded.model, x, goal=LayerRatios({"conv_proj": 0.25}))
    after = heads_of(result.model)
    assert len(set(after.values())) == 1 and min(after.values()) < 4  # every layer alike
    for name in after:
        mha = result.model.get_submodule(name)
        assert mha.head_dim == 16 and mha.embed_dim == 16 * mha.num_heads
    again = round_trip(result.model, loaded.arch, x, tmp_path, trust_code=True)
    assert heads_of(again) == after


def _small_vit() -> nn.Module:
    torch.manual_seed(0)
    model = load_model(SMALL_VIT, num_classes=10).model.eval()
    with torch.no_grad():  # torchvision starts its classifier at zero: no relevance at all
        model.heads.head.weight.normal_(std=0.1)
    return model


@pytest.mark.parametrize("build", [lambda: _deit().model.eval(), _small_vit],
                         ids=["timm-deit", "torchvision-vit"])
def test_lrp_scores_every_layer_of_a_vision_transformer(build):
    model = build()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    scores = get_criterion("lrp").score(model, [(x, y)])
    assert set(scores) == set(prunable_layers(model))
    for name, s in scores.items():
        assert bool(torch.isfinite(s).all()) and bool((s >= 0).all()), name
        assert float(s.sum()) > 0, name


def _timm_attention() -> nn.Module:
    from timm.layers import Attention

    torch.manual_seed(0)
    attn = Attention(64, num_heads=4, qkv_bias=False).eval()
    nn.init.zeros_(attn.proj.bias)  # biases absorb relevance; without them it is conserved
    return nn.Sequential(attn)  # a block inside a model, as LRP meets it


class _SelfAttention(nn.Module):
    """An `nn.MultiheadAttention` called as torchvision's ViT calls it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mha = nn.MultiheadAttention(64, 4, bias=False, batch_first=True).eval()

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("build, layers", [(_timm_attention, ("0.qkv", "0.proj")),
                                           (_SelfAttention, ("mha.out_proj",))],
                         ids=["timm", "multihead"])
def test_cp_lrp_conserves_relevance_through_an_attention_block(build, layers):
    """CP-LRP holds the attention weights constant, so relevance crosses `weights @ values`
    by an epsilon rule and reaches the input whole (no biases here): the sum at the input,
    at every linear layer's output and at the block's output agree, and the outputs are those
    of the module itself."""
    from edgeprune.criteria.lrp import relevance_attributor

    block = build()
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1))
    with relevance_attributor(block, x, (0.0, 1.0), 1e-9, list(layers)) as (attr, rec):
        output, relevance = attr(x, lambda out: out)
    with torch.no_grad():
        torch.testing.assert_close(output, block(x))
    total = float(output.detach().sum())
    assert float(relevance.sum()) == pytest.approx(total, rel=1e-3)
    for name in layers:
        assert float(rec.totals[name].sum()) == pytest.approx(total, rel=1e-3), name


def test_lrp_names_the_attention_it_cannot_follow():
    class CrossAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 2, batch_first=True)
            self.memory = nn.Parameter(torch.randn(1, 3, 16))
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            return self.head(self.mha(x, self.memory, self.memory)[0].mean(1))

    x = torch.randn(2, 4, 16)
    with pytest.raises(EdgepruneError, match=r"attention layer mha.*--criterion l1"):
        get_criterion("lrp").score(CrossAttention().eval(), [(x, torch.tensor([0, 1]))])


@pytest.mark.slow
def test_torchvision_vit_b_16_prunes_heads(tmp_path):
    torch.manual_seed(0)
    loaded = load_model("torchvision:vit_b_16?image_size=32", num_classes=10)
    x = torch.zeros(1, 3, 32, 32)
    result = prune(loaded.model, x, goal=LayerRatios({"conv_proj": 0.25}))
    assert set(heads_of(result.model).values()) == {9}
    round_trip(result.model, loaded.arch, x, tmp_path)
