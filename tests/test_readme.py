"""The README's library example runs as written (with a small stand-in for the user's ``MyNet``)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

README = Path(__file__).resolve().parents[1] / "README.md"


class MyNet(nn.Module):
    """A user's CNN: conv-BN-ReLU stem, one residual block, pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        return self.head(torch.relu(x + self.bn2(self.conv2(y))))


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_bring_your_own_model_example_runs():
    block = next(b for b in _python_blocks() if "MyNet()" in b)
    scope: dict = {"MyNet": MyNet}
    exec(compile(block, str(README), "exec"), scope)
    fast, model = scope["fast"], scope["model"]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.as_tensor(fast(x)), model.eval()(x), atol=1e-4)
    assert scope["space"].n_var > 0
