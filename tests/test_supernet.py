"""The super-net estimator: masks equal physical pruning, BN recalibration, determinism and a sensible ranking."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from latprune.data.datasets import DatasetInfo, ImageData
from latprune.data.transforms import Augment
from latprune.errors import PlanError, SearchError
from latprune.graph import ChannelGraph, build_graph
from latprune.models import create_model
from latprune.prune import PruningPlan, apply_plan, dense_plan, plan_from_arch
from latprune.space import SearchSpace, SpaceBounds
from latprune.supernet import (
    MaskedSupernet,
    SpaceAdapter,
    Subnet,
    SupernetConfig,
    SupernetData,
    SupernetEstimator,
    recalibrate_bn,
)

from helpers import randomize_bn
from patterns import PATTERN_MODELS

SIZE = 8


def _tiny(name: str = "resnet20", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # model init only; the code under test takes explicit generators
    model = create_model(name, num_classes=4, in_channels=1, input_size=SIZE, width_mult=0.5)
    # Non-trivial BN statistics and affine parameters, so a wrong mask site would show.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _random_candidate(graph: ChannelGraph, gen: torch.Generator, sparsity: float = 0.0) -> Subnet:
    keep = {}
    for g in graph.groups:
        k = int(torch.randint(1, g.channels + 1, (1,), generator=gen))
        keep[g.name] = torch.sort(torch.randperm(g.channels, generator=gen)[:k]).values
    sparse = {layer.name: sparsity for layer in graph.layers if layer.kind != "depthwise" and sparsity > 0}
    return Subnet(keep, sparse, {name: "group4" for name in sparse})


def _kept(graph: ChannelGraph, module: str, dim: str, size: int, keep: dict[str, torch.Tensor]) -> torch.Tensor:
    """Independent re-derivation of the kept indices of one module axis from the graph's members."""
    alive = torch.ones(size, dtype=torch.bool)
    for g in graph.groups:
        removed = set(range(g.channels)) - set(keep[g.name].tolist())
        for m in g.members:
            if m.module == module and m.dim == dim:
                for local, root in zip(m.local, m.root, strict=True):
                    if root in removed:
                        alive[local] = False
    return torch.nonzero(alive).flatten()


def _physically_pruned(model: nn.Module, graph: ChannelGraph, cand: Subnet, masks: dict) -> nn.Module:
    """Slice every conv, linear and BN down to the candidate's kept channels (and apply its weight masks)."""
    small = copy.deepcopy(model)
    params = dict(model.named_parameters())
    for name, m in small.named_modules():
        if isinstance(m, nn.Conv2d):
            w = params[f"{name}.weight"].detach() * masks.get(f"{name}.weight", 1.0)
            rows = _kept(graph, name, "out", m.out_channels, cand.keep)
            if m.groups > 1:  # depthwise: its inputs are its outputs
                m.weight = nn.Parameter(w[rows].clone())
                m.in_channels = m.out_channels = m.groups = len(rows)
            else:
                cols = _kept(graph, name, "in", m.in_channels, cand.keep)
                m.weight = nn.Parameter(w[rows][:, cols].clone())
                m.out_channels, m.in_channels = len(rows), len(cols)
        elif isinstance(m, nn.Linear):
            w = params[f"{name}.weight"].detach() * masks.get(f"{name}.weight", 1.0)
            rows = _kept(graph, name, "out", m.out_features, cand.keep)
            cols = _kept(graph, name, "in", m.in_features, cand.keep)
            m.weight = nn.Parameter(w[rows][:, cols].clone())
            m.bias = nn.Parameter(m.bias.detach()[rows].clone())
            m.out_features, m.in_features = len(rows), len(cols)
        elif isinstance(m, nn.BatchNorm2d):
            rows = _kept(graph, name, "out", m.num_features, cand.keep)
            m.weight = nn.Parameter(m.weight.detach()[rows].clone())
            m.bias = nn.Parameter(m.bias.detach()[rows].clone())
            m.running_mean = m.running_mean[rows].clone()
            m.running_var = m.running_var[rows].clone()
            m.num_features = len(rows)
    return small


@pytest.mark.parametrize("name", list(PATTERN_MODELS))
def test_masked_candidate_equals_apply_plan_on_every_pattern(name):
    """Channel masks sit where the channels are: on dim 1 of conv and BN outputs, on the last dim of a Linear's
    (channels-last MLPs); SE gates, BN subclasses, concatenations and chunks included."""
    gen = torch.Generator().manual_seed(2)
    model = randomize_bn(PATTERN_MODELS[name](), gen)
    graph = build_graph(model, 16, 3)
    base = dense_plan(model, 16, 3)
    pairs = list(zip(base.groups, graph.groups, strict=True))
    groups = tuple(replace(p, keep=p.keep if g.fixed else p.keep[1::2]) for p, g in pairs)
    plan = PruningPlan(None, (16, 16), 3, groups, base.layers)
    keep = {p.name: torch.tensor(p.keep) for p, g in zip(groups, graph.groups, strict=True) if not g.fixed}
    net = MaskedSupernet(model, graph)
    cand = Subnet(keep, {}, {})
    x = torch.randn(2, 3, 16, 16, generator=gen)
    with torch.no_grad(), net.active(net.channel_masks(cand)):
        got = net.forward(x, {})
    with torch.no_grad():
        torch.testing.assert_close(got, apply_plan(copy.deepcopy(model), plan).eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
@pytest.mark.parametrize("sparsity", [0.0, 0.6])
def test_masked_candidate_equals_physically_pruned_model(name, sparsity):
    model = _tiny(name)
    graph = build_graph(model, SIZE, 1)
    net = MaskedSupernet(model, graph)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 1, SIZE, SIZE, generator=gen)
    for _ in range(3):
        cand = _random_candidate(graph, gen, sparsity)
        wm = net.weight_masks(cand)
        assert bool(wm) == (sparsity > 0)
        small = _physically_pruned(model, graph, cand, wm)
        assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
        for train_mode in (False, True):  # eval: running stats; train: batch statistics per kept channel
            for m in (model, small):
                m.train(train_mode)
                m.classifier[0].eval() if name == "mobilenet_v2" else None  # dropout draws from the global RNG
            with torch.no_grad(), net.active(net.channel_masks(cand)):
                got = net.forward(x, wm)
            want = small(x)
            # Train mode divides by batch std over a 1x1 map in the last stage, which amplifies rounding.
            tol = 1e-3 if train_mode else 1e-5
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)
            extracted = net.extract(cand, wm).train(train_mode)  # the fast scoring path
            if name == "mobilenet_v2":
                extracted.classifier[0].eval()
            with torch.no_grad():
                torch.testing.assert_close(extracted(x), want, rtol=tol, atol=tol)
            assert sum(p.numel() for p in extracted.parameters()) == sum(p.numel() for p in small.parameters())
        model.eval()
    with net.active(net.channel_masks(cand)), pytest.raises(RuntimeError, match="outside"):
        net.extract(cand, {})  # would copy the mask hooks into the small model
    # Outside ``active`` the full model is untouched.
    with torch.no_grad():
        torch.testing.assert_close(net.forward(x, {}), model(x))


@pytest.mark.parametrize(
    ("name", "scheme"),
    [("resnet20", "group4"), ("mobilenet_v2", "group4"), ("resnet20", "pattern"), ("resnet20", "block_punched")],
)
def test_space_candidates_equal_apply_plan_of_the_same_arch(name, scheme):
    """The estimator's candidate for x computes what the pruning engineer's plan for decode(x) computes."""
    model = _tiny(name)
    space = _space(model, scheme)
    adapter = SpaceAdapter(space, model)
    net = MaskedSupernet(model, adapter.graph)
    X = space.sample_x(np.random.default_rng(0), 3)
    x_in = torch.randn(8, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    for row, cand in zip(X, adapter.candidates(X), strict=True):
        plan = plan_from_arch(model, space, space.decode(row))
        for g in plan.groups:
            want = list(g.keep)
            assert cand.keep.get(g.name, torch.arange(g.channels)).tolist() == want
        pruned = apply_plan(copy.deepcopy(model), plan).eval()
        with torch.no_grad(), net.active(net.channel_masks(cand)):
            got = net.forward(x_in, net.weight_masks(cand))
        torch.testing.assert_close(got, pruned(x_in), rtol=1e-4, atol=1e-5)


def test_weight_masks_have_group4_structure_on_the_kept_subtensor():
    model = _tiny()
    graph = build_graph(model, SIZE, 1)
    net = MaskedSupernet(model, graph)
    cand = _random_candidate(graph, torch.Generator().manual_seed(3), sparsity=0.7)
    masks = net.weight_masks(cand)
    layer = "layers.2.1.conv1"
    mask = masks[f"{layer}.weight"]
    rows = net.kept_indices(layer, "out", cand)
    cols = net.kept_indices(layer, "in", cand)
    sub = mask[rows][:, cols]  # (c_out_kept, c_in_kept, 3, 3)
    assert float(1 - sub.mean()) == pytest.approx(0.7, abs=0.02)
    assert float(mask.sum()) == float(sub.sum())  # nothing kept outside the candidate's channels
    for start in range(0, len(rows), 4):  # the 4 adjacent kept filters agree at every (ci, kh, kw)
        block = sub[start : start + 4]
        assert torch.all(block == block[:1])


def test_bn_recalibration_gives_the_candidates_statistics():
    model = _tiny()
    graph = build_graph(model, SIZE, 1)
    net = MaskedSupernet(model, graph)
    gen = torch.Generator().manual_seed(5)
    images = torch.randn(40, 1, SIZE, SIZE, generator=gen)
    cand = _random_candidate(graph, gen, sparsity=0.5)
    wm = net.weight_masks(cand)
    small = _physically_pruned(model, graph, cand, wm)
    before = model.layers[1][0].bn1.running_mean.clone()
    with net.active(net.channel_masks(cand)):
        recalibrate_bn(model, lambda x: net.forward(x, wm), images, batch_size=16)
    recalibrate_bn(small, small, images, batch_size=16)  # same batches: deeper BNs see batch-normalised inputs
    assert not model.training
    assert not torch.allclose(model.layers[1][0].bn1.running_mean, before)
    for name, bn in model.named_modules():
        if isinstance(bn, nn.BatchNorm2d):
            ref = dict(small.named_modules())[name]
            rows = _kept(graph, name, "out", bn.num_features, cand.keep)
            torch.testing.assert_close(bn.running_mean[rows], ref.running_mean, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(bn.running_var[rows], ref.running_var, rtol=1e-4, atol=1e-5)
            assert bn.momentum == 0.1  # restored


# ---------------------------------------------------------------- the estimator on a tiny space and dataset


LOOSE = SpaceBounds(0.1, 0.1, 0.1, 0.9, 0.9, 0.9)  # let the test reach clearly different candidates


def _space(model: nn.Module, scheme: str = "group4") -> SearchSpace:
    return SearchSpace.from_model(model, SIZE, 1, scheme=scheme, bounds=LOOSE)


def _synthetic_data(n_per_class: int = 60, seed: int = 0) -> SupernetData:
    """4 classes, each a bright quadrant of an 8x8 image plus noise: learnable in a few epochs."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(n_per_class)
    images = torch.randint(0, 90, (len(labels), 1, SIZE, SIZE), generator=gen)
    for c in range(4):
        r, q = divmod(c, 2)
        images[labels == c, :, r * 4 : r * 4 + 4, q * 4 : q * 4 + 4] += 150
    data = ImageData(images.clamp(0, 255).to(torch.uint8), labels)
    val_idx = torch.arange(len(labels)) % 5 == 0
    info = DatasetInfo("synthetic", 4, 1, SIZE, (0.3,), (0.3,), Augment(1, False))
    return SupernetData(
        data.subset(torch.nonzero(~val_idx).flatten()), data.subset(torch.nonzero(val_idx).flatten()), info
    )


def _trained_parent(data: SupernetData) -> nn.Module:
    model = _tiny()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = (data.train.images.float() / 255 - 0.3) / 0.3
    for _ in range(6):
        perm = torch.randperm(len(data.train), generator=gen)
        for s in range(0, len(perm), 32):
            idx = perm[s : s + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), data.train.labels[idx]).backward()
            opt.step()
    return model.eval()


QUICK_TEST = SupernetConfig(
    channel_epochs=1, weight_epochs=1, classes=None, train_per_class=None, val_per_class=None, batch_size=32,
    lr=0.01, bn_images=64, eval_batch_size=64,
)  # fmt: skip


@pytest.fixture(scope="module")
def parent_and_data():
    data = _synthetic_data()
    return _trained_parent(data), data


def _x(space: SearchSpace, width: int, sparsity: int) -> np.ndarray:
    """Width index ``width`` for every group and sparsity index ``sparsity`` for every layer, within bounds."""
    return np.clip(np.array([width] * space.n_groups + [sparsity] * len(space.layers)), space.xl, space.xu)


def test_estimator_is_finite_bounded_deterministic_and_ranks_sensibly(parent_and_data):
    parent, data = parent_and_data
    space = _space(parent)
    full, mid, tiny = _x(space, 10, 0), _x(space, 6, 5), _x(space, 1, 9)
    X = np.stack([full, tiny, mid, full])  # a duplicate row must get the same error
    results = []
    for _ in range(2):
        est = SupernetEstimator(copy.deepcopy(parent), space, data, QUICK_TEST, seed=7, progress=False)
        results.append(est.evaluate(X))
    errors = results[0]
    assert errors.shape == (4,)
    assert np.all(np.isfinite(errors)) and np.all((errors >= 0) & (errors <= 1))
    np.testing.assert_array_equal(results[0], results[1])  # same seed, same errors
    assert errors[0] == errors[3]
    assert errors[0] < errors[1]  # width 1.0 dense beats 10% width at 90% sparsity
    assert errors[0] <= 0.25  # the parent learned the task and the full candidate keeps it
    timing = est.last_timing
    assert set(timing) >= {"supernet_train_s", "bn_recalib_s", "eval_s"}
    assert timing["supernet_train_s"] > 0 and timing["bn_recalib_s"] > 0 and timing["eval_s"] > 0
    assert timing["candidates"] == 3  # duplicates are evaluated once


def test_each_call_restarts_from_the_parent_unless_warm_started(parent_and_data):
    parent, data = parent_and_data
    space = _space(parent)
    X = np.stack([_x(space, 10, 0), _x(space, 5, 5)])
    cold = SupernetEstimator(copy.deepcopy(parent), space, data, QUICK_TEST, seed=3, progress=False)
    warm_cfg = QUICK_TEST.override(warm_start=True)
    warm = SupernetEstimator(copy.deepcopy(parent), space, data, warm_cfg, seed=3, progress=False)
    first_cold, first_warm = cold.evaluate(X), warm.evaluate(X)
    np.testing.assert_array_equal(first_cold, first_warm)  # first calls both start from the parent
    cold.evaluate(X)
    warm.evaluate(X)
    drift_cold = max((a - b).abs().max() for a, b in zip(cold.model.state_dict().values(),
                                                          parent.state_dict().values(), strict=True)
                     if a.is_floating_point())  # fmt: skip
    cold.model.load_state_dict(cold.parent_state)
    torch.testing.assert_close(cold.model.state_dict()["conv1.weight"], parent.state_dict()["conv1.weight"])
    assert drift_cold > 0  # training did move the shared weights
    assert not torch.equal(warm.model.state_dict()["conv1.weight"], cold.model.state_dict()["conv1.weight"])


def test_config_presets_overrides_and_errors():
    paper = SupernetConfig.preset("paper")
    assert (paper.channel_epochs, paper.weight_epochs, paper.bn_images, paper.batch_size) == (10, 20, 1280, 256)
    assert (paper.classes, paper.train_per_class, paper.val_per_class) == (100, 500, 50)
    quick = SupernetConfig.preset("quick").override(bn_images=128, lr=None)
    assert quick.bn_images == 128 and quick.lr == SupernetConfig.preset("quick").lr
    assert SupernetConfig.from_dict(paper.to_dict()) == paper
    with pytest.raises(SearchError, match="nope"):
        SupernetConfig.preset("nope")
    with pytest.raises(SearchError, match="bn_imgs"):
        quick.override(bn_imgs=3)
    with pytest.raises(SearchError, match="batch_size"):
        SupernetConfig(batch_size=0)


def test_bad_inputs_name_the_problem(parent_and_data):
    parent, data = parent_and_data
    space = _space(parent)
    est = SupernetEstimator(copy.deepcopy(parent), space, data, QUICK_TEST, seed=0, progress=False)
    with pytest.raises(SearchError, match="shape"):
        est.evaluate(np.zeros((0, space.n_var), dtype=int))
    net = est.supernet
    cand = Subnet({}, {"layers.0.0.conv1": 1.5}, {"layers.0.0.conv1": "group4"})
    with pytest.raises(PlanError, match=r"layers\.0\.0\.conv1.*1\.5"):
        net.weight_masks(cand)


def test_several_candidates_per_batch_and_mask_refresh_interval(parent_and_data):
    parent, data = parent_and_data
    space = _space(parent)
    X = np.stack([_x(space, 10, 0), _x(space, 5, 5), _x(space, 3, 8)])
    cfg = QUICK_TEST.override(candidates_per_batch=2, mask_every=3, channel_epochs=0, weight_epochs=2)
    runs = [SupernetEstimator(parent, space, data, cfg, seed=1, progress=False).evaluate(X) for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.all((runs[0] >= 0) & (runs[0] <= 1))
    base = SupernetEstimator(parent, space, data, QUICK_TEST, seed=1, progress=False).evaluate(X)
    assert base[0] <= base[2] and runs[0][0] <= runs[0][2]
