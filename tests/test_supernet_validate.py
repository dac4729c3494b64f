"""`latprune validate-accuracy`: a tiny search run directory, fine-tuned candidates, rank correlations, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latprune._io import atomic_write_json
from latprune.cli import main
from latprune.data import DataConfig, load_splits
from latprune.errors import SearchError
from latprune.models import create_model
from latprune.space import SearchSpace
from latprune.supernet import (
    SupernetConfig,
    SupernetData,
    SupernetEstimator,
    ValidateConfig,
    spread_over_latency,
    validate_accuracy,
)
from latprune.train.checkpoint import atomic_torch_save

KWARGS = {"num_classes": 10, "in_channels": 1, "input_size": 28, "width_mult": 0.25}


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory, fake_fashion_mnist):
    """A search run directory as `latprune search` writes it, with errors from a real super-net call."""
    base = tmp_path_factory.mktemp("validate")
    fake_fashion_mnist(base / "data", n_train=160, n_test=20, classes=4, gz=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("LATPRUNE_DATA", str(base / "data"))
    data_cfg = DataConfig(name="fashion-mnist", val_per_class=10)
    splits = load_splits(data_cfg)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # model init only
    model = create_model("resnet20", **KWARGS)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x_all = (splits.train.images.float() / 255 - 0.286) / 0.353
    for _ in range(4):  # a parent that has learned something, so candidates differ in accuracy
        perm = torch.randperm(len(splits.train), generator=gen)
        for s in range(0, len(perm), 30):
            opt.zero_grad()
            idx = perm[s : s + 30]
            torch.nn.functional.cross_entropy(model(x_all[idx]), splits.train.labels[idx]).backward()
            opt.step()
    model.eval()
    ckpt = base / "parent.pt"
    atomic_torch_save(
        ckpt,
        {
            "model": "resnet20",
            "model_kwargs": KWARGS,
            "state_dict": model.state_dict(),
            "epoch": 4,
            "metrics": {},
            "data": {"name": "fashion-mnist", "val_per_class": 10, "split_seed": 0, "image_size": None},
        },
    )
    space = SearchSpace.from_model(model, 28, 1)
    sn_cfg = SupernetConfig.preset("quick").override(channel_epochs=1, weight_epochs=0, bn_images=32, batch_size=30)
    X = space.sample_x(np.random.default_rng(1), 6)
    X[0] = space.xu * (np.arange(space.n_var) < space.n_groups)  # the dense parent
    est = SupernetEstimator(
        model, space, SupernetData(splits.train, splits.val, splits.info), sn_cfg, 0, progress=False
    )
    errors = est.evaluate(X)
    latency = 1.0 + space.layer_dims(X)[1].sum(1) / 100.0  # a made-up but monotone latency
    run = base / "search"
    meta = {"checkpoint": str(ckpt), "data": data_cfg.__dict__, "supernet": sn_cfg.to_dict()}
    atomic_write_json(run / "search.json", {"config": {"seed": 0}, "meta": meta, "space": space.to_dict()})
    evaluated = [
        {"x": x.tolist(), "latency_ms": float(t), "error": float(e), "arch": None, "survived": True}
        for x, t, e in zip(X, latency, errors, strict=True)
    ]
    atomic_write_json(run / "gen_0000.json", {"generation": 0, "evaluated": evaluated[:3]})
    atomic_write_json(run / "gen_0001.json", {"generation": 1, "evaluated": evaluated + evaluated[:1]})
    yield run
    mp.undo()


def test_spread_over_latency_covers_the_range():
    lat = np.array([5.0, 1.0, 1.1, 3.0, 2.9, 4.0, 1.05])
    picked = spread_over_latency(lat, 3)
    assert lat[picked].tolist() == [1.0, 3.0, 5.0]
    assert len(set(spread_over_latency(lat, 7).tolist())) == 7
    assert len(spread_over_latency(lat, 20)) == 7


def test_validate_accuracy_writes_correlations_json_and_plot(search_dir, monkeypatch):
    monkeypatch.setenv("LATPRUNE_DATA", str(search_dir.parent / "data"))
    config = ValidateConfig(k=4, epochs=1, train_per_class=20, batch_size=20)
    result = validate_accuracy(search_dir, config, progress=False)
    saved = json.loads(result.json_path.read_text())
    assert saved["generation"] == 1  # the last generation, duplicates dropped
    assert len(saved["candidates"]) == 4 and len(result.standalone_acc) == 4
    for row in saved["candidates"]:
        assert 0.0 <= row["standalone_acc"] <= 1.0
        assert row["estimated_acc"] == pytest.approx(1 - row["estimated_error"])
    assert -1.0 <= result.kendall_tau <= 1.0 and -1.0 <= result.spearman_rho <= 1.0
    assert saved["val_images"] == 40  # exactly the super-net's validation images (4 classes x 10)
    assert result.png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Fine-tuned folders hold the plan and a finished checkpoint; a rerun reuses them and agrees.
    folder = saved["candidates"][0]["folder"]
    assert (search_dir / "validate").is_dir() and json.loads((search_dir.parent / folder / "plan.json").read_text())
    again = validate_accuracy(search_dir, config, progress=False)
    assert again.standalone_acc == result.standalone_acc


def test_cli_prints_the_table_and_names_bad_input(search_dir, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("LATPRUNE_DATA", str(search_dir.parent / "data"))
    args = ["validate-accuracy", "--search", str(search_dir), "--k", "3", "--epochs", "1", "--train-per-class", "20"]
    assert main([*args, "--batch-size", "20", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Kendall tau" in out and "validate_accuracy.json" in out
    assert main(["validate-accuracy", "--search", str(tmp_path)]) == 2
    assert "search.json" in capsys.readouterr().err
    with pytest.raises(SearchError, match="--k 2"):
        ValidateConfig(k=2)
