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


def _usual_order(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The backbone as the papers write it: activation, then pooling."""
    x = images
    if hasattr(backbone, "body"):  # a ResNet-12 block
        return F.max_pool2d(F.leaky_relu(backbone.body(x) + backbone.shortcut(x), 0.1), 2, ceil_mode=True)
    for block in backbone.blocks:
        x = F.max_pool2d(F.relu(block[1](block[0](x))), 2)
    return x.flatten(1)


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
def test_pooling_before_the_activation_gives_the_usual_outputs_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    backbone = make_backbone(name, **({"hidden": 6} if name == "conv4" else {"widths": (4, 6, 8, 10)})).double()
    module = backbone if name == "conv4" else backbone.blocks[0]
    images = torch.rand(5, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    results = []
    for forward in (module, lambda x: _usual_order(module, x)):
        out = forward(images)
        gradients = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                                        [images, *module.parameters()])
        results.append((out, gradients))
    (ours, our_gradients), (usual, usual_gradients) = results
    assert (ours > 0).any() and (ours <= 0).any()  # the activation did act on some values
    torch.testing.assert_close(ours, usual, rtol=0, atol=1e-12)
    for a, b in zip(our_gradients, usual_gradients, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
