import pytest
import torch

from histoseek.errors import HistoseekError
from histoseek.model.descriptors import MAC, GeM, SPoC, parse_gd_config


@pytest.fixture
def feature_map() -> torch.Tensor:
    # One image, two channels, 2×2 map.
    return torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 8.0]]]])


def test_spoc_is_the_spatial_mean(feature_map):
    assert SPoC()(feature_map).tolist() == [[2.5, 2.0]]


def test_mac_is_the_spatial_max(feature_map):
    assert MAC()(feature_map).tolist() == [[4.0, 8.0]]


def test_gem_is_the_cubic_mean(feature_map):
    expected_0 = ((1 + 8 + 27 + 64) / 4) ** (1 / 3)
    expected_1 = (512 / 4) ** (1 / 3)
    result = GeM(p=3)(feature_map)
    assert result[0, 0].item() == pytest.approx(expected_0, rel=1e-5)
    assert result[0, 1].item() == pytest.approx(expected_1, rel=1e-5)


def test_gem_lies_between_spoc_and_mac(feature_map):
    gem = GeM()(feature_map)
    assert (SPoC()(feature_map) <= gem + 1e-6).all()
    assert (gem <= MAC()(feature_map) + 1e-6).all()


def test_gem_stays_float32_and_finite_under_half_inputs():
    x = torch.full((1, 1, 2, 2), 60.0, dtype=torch.float16)  # 60³ overflows float16
    result = GeM()(x)
    assert result.dtype == torch.float32
    assert result.item() == pytest.approx(60.0, rel=1e-3)


@pytest.mark.parametrize("text, expected", [("SMG", "SMG"), ("sg", "SG"), ("G", "G")])
def test_parse_gd_config(text, expected):
    assert parse_gd_config(text) == expected


@pytest.mark.parametrize("text", ["", "SSG", "SX", "ABC"])
def test_parse_gd_config_rejects_bad_strings(text):
    with pytest.raises(HistoseekError, match="gd-config"):
        parse_gd_config(text)
