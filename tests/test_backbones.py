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
