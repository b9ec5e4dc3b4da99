"""Model factory pieces: channel expressions (study 001's combinations) and hybrid feature scaling."""

import numpy as np
import pytest
import torch

from hpa_batch.models.factory import HybridNet
from hpa_batch.models.transforms import channel_map, mix_channels, parse_channel


def test_parse_channel_means_weights_and_errors():
    assert parse_channel("green") == {1: 1.0}
    assert parse_channel("red+blue") == {0: 0.5, 2: 0.5}  # unweighted sum = mean (grey)
    assert parse_channel(" 0.5 * red + blue") == {0: 0.5, 2: 1.0}  # explicit weights as written
    assert parse_channel("green+green") == {1: 1.0}
    with pytest.raises(ValueError, match="'purple' is not"):
        parse_channel("red+purple")


def test_channel_map_selection_and_mix():
    plain = channel_map(["red", "green", "green"])
    assert plain.gather == [0, 1, 1] and plain.mix is None  # a repeated plane needs no mixing
    mixed = channel_map(["red+blue", "green", "0.5*red"])
    assert mixed.gather == [0, 1, 2]
    planes = torch.rand(2, 3, 5, 5)
    out = mix_channels(planes, mixed.mix)
    assert out.shape == (2, 3, 5, 5)
    assert torch.allclose(out[:, 0], (planes[:, 0] + planes[:, 2]) / 2)
    assert torch.allclose(out[:, 1], planes[:, 1]) and torch.allclose(out[:, 2], planes[:, 0] * 0.5)


def test_feature_weights_scale_the_standardised_row():
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 4))
    backbone.num_features = 4
    net = HybridNet(backbone, 3, 2)
    net.set_feature_stats(np.array([1.0, 2.0, 0.0]), np.array([2.0, 0.0, 1.0]), [2.0, 0.5, 1.0])
    # (x - mean) / std * w: the zero std counts as 1
    assert torch.allclose(net.feature_std, torch.tensor([1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="need 3 positive numbers"):
        net.set_feature_stats(np.zeros(3), np.ones(3), [1.0, 0.0, 1.0])
