"""The model zoo: every registered model builds, runs on small and published inputs, and has the published size."""

from __future__ import annotations

import pytest
import torch

from latprune.errors import ModelError
from latprune.models import create_model, list_models, model_info

# Published parameter counts (millions) at width 1.0; CIFAR models with 10 classes, ImageNet ones with 1000.
PUBLISHED = {
    "resnet18": (11.69, 1000),
    "resnet34": (21.80, 1000),
    "resnet20": (0.27, 10),
    "resnet56": (0.85, 10),
    "mobilenet_v1": (4.23, 1000),
    "mobilenet_v2": (3.50, 1000),
    "mobilenet_v3_large": (5.48, 1000),
    "mobilenet_v3_small": (2.54, 1000),
    "efficientnet_b0": (5.29, 1000),
}


def test_every_model_has_a_published_count():
    assert set(list_models()) == set(PUBLISHED)


@pytest.mark.parametrize("name", list_models())
def test_parameter_count_matches_paper(name):
    millions, classes = PUBLISHED[name]
    model = create_model(name, num_classes=classes)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    # CIFAR ResNets use projection shortcuts (+2.7k params), see latprune/models/resnet.py.
    assert count == pytest.approx(millions, rel=0.01)


@pytest.mark.parametrize("name", list_models())
def test_small_grayscale_input(name):
    model = create_model(name, num_classes=10, in_channels=1, input_size=28, width_mult=0.25).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_default_input_size(name):
    size = model_info(name).default_input_size
    model = create_model(name, num_classes=7, width_mult=0.25).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 7)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"])
def test_width_multiplier_shrinks(name):
    full = sum(p.numel() for p in create_model(name).parameters())
    half = sum(p.numel() for p in create_model(name, width_mult=0.5).parameters())
    assert half < 0.75 * full  # MobileNetV2 keeps its 1280-wide last layer below width 1.0


def test_unknown_model_names_the_choices():
    with pytest.raises(ModelError, match="resnet20"):
        create_model("resnet21")


def test_bad_arguments_are_one_sentence():
    with pytest.raises(ModelError, match="width"):
        create_model("resnet20", width_mult=0)
    with pytest.raises(ModelError, match="num_classes"):
        create_model("resnet20", num_classes=0)
