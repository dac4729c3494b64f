"""NPAS phase 1: the stand-in rules (sites, rewrites, what they keep), specs that rebuild a replaced model, and the
measured decision on the engine."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from latprune.cli import main
from latprune.errors import ModelError
from latprune.models import ModelSpec
from latprune.models.replace import apply_replacements, get_replacement, list_replacements
from latprune.replace import ReplaceConfig, ReplacePlan, plan_replacements


class SqueezeExcitation(nn.Module):
    """An SE block under torchvision's class name (what the "se-remove" rule looks for)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.pool, self.fc1, self.act = nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 4, 1), nn.ReLU()
        self.fc2, self.gate = nn.Conv2d(c // 4, c, 1), nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


def _net(se: bool = True) -> nn.Module:
    """Stem (SiLU), a 5x5 depthwise conv, an optional SE block, a head whose sigmoid is not a gate."""
    torch.manual_seed(0)  # model init only
    layers = [nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.SiLU() if se else nn.ReLU(),
              nn.Conv2d(32, 32, 5, padding=2, groups=32), nn.BatchNorm2d(32), nn.ReLU()]  # fmt: skip
    if se:
        layers.append(SqueezeExcitation(32))
    layers += [nn.Conv2d(32, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)]
    if se:
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers).eval()


def test_every_rule_finds_its_sites_and_rewrites_them() -> None:
    net = _net()
    assert list_replacements() == ["silu-hardswish", "sigmoid-hardsigmoid", "se-remove", "dw5-dw3"]
    sites = {n: get_replacement(n).find(net) for n in list_replacements()}
    assert sites == {"silu-hardswish": ["2"], "sigmoid-hardsigmoid": ["6.gate"], "se-remove": ["6"], "dw5-dw3": ["3"]}
    x = torch.randn(2, 3, 16, 16)
    out = apply_replacements(_net(), ["dw5-dw3", "silu-hardswish", "sigmoid-hardsigmoid"])
    assert isinstance(out[2], nn.Hardswish) and isinstance(out[6].gate, nn.Hardsigmoid)
    assert isinstance(out[-1], nn.Sigmoid)  # the output's sigmoid is no SE gate: kept
    assert out[3].kernel_size == (3, 3) and out[3].padding == (1, 1)
    torch.testing.assert_close(out[3].weight, net[3].weight[:, :, 1:4, 1:4])  # the centre of the 5x5
    assert out(x).shape == (2, 10)
    no_se = apply_replacements(_net(), ["se-remove"])
    assert isinstance(no_se[6], nn.Identity) and not get_replacement("sigmoid-hardsigmoid").find(no_se)
    with pytest.raises(ModelError, match="Unknown replacement 'gelu'"):
        apply_replacements(_net(), ["gelu"])


def test_a_spec_with_replacements_rebuilds_the_replaced_model_everywhere() -> None:
    spec = ModelSpec("mobilenet_v2", 10, 3, 32, 0.25)
    assert "replacements" not in spec.to_dict() and "replacements" not in spec.kwargs()
    replaced = ModelSpec.from_dict(spec.to_dict() | {"replacements": ["silu-hardswish"]})
    assert replaced.replacements == ("silu-hardswish",) and replaced != spec
    assert replaced.kwargs()["replacements"] == ["silu-hardswish"] and "silu-hardswish" in replaced.describe()
    built = replaced.build(seed=0)  # MobileNetV2 has no SiLU: the rule finds nothing and changes nothing
    assert sum(p.numel() for p in built.parameters()) == sum(p.numel() for p in spec.build(seed=0).parameters())


def test_the_decision_is_measured_on_the_engine_and_saved(tmp_path) -> None:
    spec = ModelSpec("mobilenet_v2", 10, 3, 32, 0.25)  # shapes only: the model timed is _net
    config = ReplaceConfig(runs=20, min_gain=0.0, rules=("dw5-dw3", "se-remove"))
    plan = plan_replacements(spec, config, model=_net(se=False))
    dw, se = plan.rules
    assert dw.name == "dw5-dw3" and dw.sites == ("3",) and dw.ms is not None and dw.ms > 0
    assert se.ms is None and not se.applied and "no site" in plan.table()
    assert dw.applied == (dw.gain >= 0.0) and plan.applied == (("dw5-dw3",) if dw.applied else ())
    assert plan.spec.replacements == plan.applied
    again = ReplacePlan.load(plan.save(tmp_path / "plan.json"))
    assert again == plan and json.loads((tmp_path / "plan.json").read_text())["format"] == "latprune.replace/1"
    with pytest.raises(ModelError, match="least gain"):
        ReplaceConfig(min_gain=1.5)


def test_replace_command(tmp_path, capsys) -> None:
    out = tmp_path / "plan.json"
    assert main(["replace", "--model", "mobilenet_v2", "--input-size", "3x32x32", "--num-classes", "10",
                 "--out", str(out), "--runs", "20"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "no site" in text and "replace none" in text and out.is_file()  # MobileNetV2: ReLU6, 3x3, no SE
    assert main(["replace", "--out", str(out)]) == 2
    assert "needs --model" in capsys.readouterr().err


@pytest.mark.parametrize("name", list_replacements())
def test_each_rule_leaves_a_working_model_with_no_site_left(name: str) -> None:
    """Every registered rule: it finds sites in the SE / SiLU / 5x5 test net, the rewritten net runs with the same
    output shape, and a second pass finds nothing (rules are idempotent)."""
    rule = get_replacement(name)
    net = _net()
    assert rule.find(net) and rule.description
    out = apply_replacements(net, [name])
    assert out(torch.randn(1, 3, 16, 16)).shape == (1, 10) and rule.find(out) == []
