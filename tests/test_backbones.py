import pytest
import torch

from fewshot.backbones import make_backbone
from fewshot.backbones.centring import centre_ink, centre_of_mass


def blob_image(y: int, x: int, size: int = 28) -> torch.Tensor:
    """``[1, 1, size, size]`` with an asymmetric L-shaped stroke whose corner is at (y, x)."""
    image = torch.zeros(1, 1, size, size)
    image[0, 0, y:y + 6, x] = 1.0
    image[0, 0, y + 5, x:x + 4] = 0.5
    return image


def test_centring_moves_the_centre_of_mass_to_the_middle_and_keeps_the_ink() -> None:
    images = torch.cat([blob_image(3, 4), blob_image(15, 17), blob_image(9, 12)])
    centred = centre_ink(images)
    assert torch.allclose(centre_of_mass(centred), torch.full((3, 2), 13.5), atol=1e-4)
    assert torch.allclose(centred.sum((1, 2, 3)), images.sum((1, 2, 3)), atol=1e-4)  # nothing pushed out
    assert not torch.allclose(centre_of_mass(images), torch.full((3, 2), 13.5), atol=1.0)


def test_centring_leaves_a_blank_image_blank() -> None:
    assert torch.equal(centre_ink(torch.zeros(2, 1, 28, 28)), torch.zeros(2, 1, 28, 28))


def test_a_centring_backbone_gives_the_same_features_wherever_the_character_is_drawn() -> None:
    torch.manual_seed(0)
    images = torch.cat([blob_image(3, 4), blob_image(15, 17)])  # the same stroke, shifted by (12, 13) pixels
    centring = make_backbone("conv4", centre=True).eval()
    plain = make_backbone("conv4").eval()
    plain.load_state_dict(centring.state_dict())
    with torch.no_grad():
        features, plain_features = centring(images), plain(images)
    assert torch.allclose(features[0], features[1], atol=1e-5)
    assert not torch.allclose(plain_features[0], plain_features[1], atol=1e-2)


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
def test_centring_is_an_option_of_the_backbone(name: str) -> None:
    assert make_backbone(name, centre=True).centring is not None
    assert make_backbone(name).centring is None
