import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.backbones import make_backbone
from fewshot.commands import parse_options


def test_conv4_takes_one_width_per_block_from_the_command_line_syntax() -> None:
    backbone = make_backbone("conv4", **parse_options("hidden=(16,24,32,40)"))
    widths = [m.out_channels for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [16, 24, 32, 40]
    assert backbone(torch.rand(2, 1, 28, 28)).shape == (2, 40)  # 28 -> 14 -> 7 -> 3 -> 1


def test_conv4_average_pooling_pools_each_block_by_the_mean() -> None:
    torch.manual_seed(0)
    backbone = make_backbone("conv4", hidden=8, pooling="avg").eval()
    images = torch.rand(3, 1, 28, 28)
    x = images
    for block in backbone.blocks:
        conv, norm = block[0], block[1]
        x = F.avg_pool2d(F.relu(norm(conv(x))), 2)
    with torch.no_grad():
        assert torch.allclose(backbone(images), x.flatten(1), atol=1e-6)
        max_pooled = make_backbone("conv4", hidden=8).eval()
        max_pooled.load_state_dict(backbone.state_dict())  # same parameters, other pooling: other features
        assert not torch.allclose(max_pooled(images), backbone(images), atol=1e-3)


def test_conv4_refuses_an_unknown_pooling_by_name() -> None:
    with pytest.raises(ValueError, match="unknown pooling 'median'; choose one of max, avg"):
        make_backbone("conv4", pooling="median")


def test_conv4_pool_first_normalises_the_pooled_maps() -> None:
    """In training, batch norm takes the statistics of the pooled maps; at test time, with positive scales, the two
    orders are the same function of the same weights (max-pooling commutes with an increasing map)."""
    torch.manual_seed(0)
    images = torch.rand(6, 1, 28, 28)
    pooled_first = make_backbone("conv4", hidden=8, pool_first=4).train()
    x = images
    for block in pooled_first.blocks:
        conv, norm = block[0], block[2]
        pooled = F.max_pool2d(conv(x), 2)
        x = F.relu(F.batch_norm(pooled, None, None, norm.weight, norm.bias, training=True))
    assert torch.allclose(pooled_first(images), x.flatten(1), atol=1e-5)

    usual = make_backbone("conv4", hidden=8)
    with torch.no_grad():
        for module in pooled_first.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 2.0)
        # batch norm is module 2 of a pool-first block, module 1 of the usual one
        usual.load_state_dict({re.sub(r"^(blocks\.\d+)\.2\.", r"\1.1.", key): value
                               for key, value in pooled_first.state_dict().items()})
        usual.eval(), pooled_first.eval()
        assert torch.allclose(usual(images), pooled_first(images), atol=1e-5)
        usual.train(), pooled_first.train()
        assert not torch.allclose(usual(images), pooled_first(images), atol=1e-3)
