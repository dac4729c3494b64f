"""Scheme masks: exact declared structure and requested sparsity (within one unit), for every registered scheme."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latprune.errors import PlanError
from latprune.prune import PATTERNS_3x3, SchemeParams, get_scheme, list_schemes, make_mask, mask_sparsity

CONTRACT_SCHEMES = ("dense", "group4", "block_punched", "pattern", "unstructured", "block_fc", "nm24")


def _weight(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _shape_for(scheme: str, co: int, ci: int, k: int) -> tuple[int, ...]:
    if scheme == "block_fc":
        return (co, ci)
    if scheme == "pattern":
        return (co, ci, 3, 3)
    return (co, ci, k, k)


def _check_structure(scheme: str, mask: torch.Tensor, sparsity: float, params: SchemeParams) -> None:
    m4 = mask if mask.dim() == 4 else mask[:, :, None, None]  # (out, in) -> (out, in, 1, 1)
    co, ci = m4.shape[:2]
    if scheme == "group4":
        for g in range(0, co, 4):
            assert (m4[g : g + 4] == m4[g]).all()
    elif scheme == "block_punched":
        for o in range(0, co, params.block_out):
            for i in range(0, ci, params.block_in):
                block = m4[o : o + params.block_out, i : i + params.block_in]
                assert (block == block[:1, :1]).all()
    elif scheme == "block_fc":
        for o in range(0, co, params.block_rows):
            assert (m4[o : o + params.block_rows] == m4[o]).all()
    elif scheme == "pattern":
        patterns = {frozenset(p) for p in PATTERNS_3x3}
        kernels = m4.reshape(co * ci, 9)  # (kernels, 9)
        for row in kernels:
            nz = frozenset(torch.nonzero(row).flatten().tolist())
            assert len(nz) in (0, 4, 9)
            if len(nz) == 4:
                assert nz in patterns
            if len(nz) == 9:
                assert sparsity < 5 / 9
    elif scheme == "nm24":
        for start in range(0, ci, 4):
            assert (m4[:, start : start + 4].sum(1) <= 2).all()


def test_registry_has_the_contract_schemes():
    assert set(CONTRACT_SCHEMES) <= set(list_schemes())


@pytest.mark.parametrize("scheme", list_schemes())
@settings(max_examples=25, deadline=None)
@given(
    co=st.integers(1, 13),
    ci=st.integers(1, 11),
    k=st.sampled_from([1, 3]),
    sparsity=st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9]),
    seed=st.integers(0, 1000),
)
def test_mask_structure_and_sparsity(scheme, co, ci, k, sparsity, seed):
    params = SchemeParams()
    weight = _weight(seed, _shape_for(scheme, co, ci, k))
    if scheme == "dense" and sparsity > 0:
        with pytest.raises(PlanError, match="dense"):
            make_mask(scheme, weight, sparsity)
        return
    if scheme == "nm24" and 0 < sparsity < 0.5:
        with pytest.raises(PlanError, match=r"at least 0\.5"):
            make_mask(scheme, weight, sparsity, layer="l")
        return
    mask = make_mask(scheme, weight, sparsity, params)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    if sparsity == 0.0:
        assert mask.all()  # sparsity 0 is the dense layer for every scheme
    else:
        _check_structure(scheme, mask, sparsity, params)
    unit = get_scheme(scheme).unit(weight, params)
    assert abs(mask_sparsity(mask) - sparsity) <= unit / weight.numel() + 1e-9


@pytest.mark.parametrize("scheme", ["group4", "block_punched", "unstructured", "pattern"])
def test_mask_keeps_the_large_weights(scheme):
    weight = _weight(0, (8, 8, 3, 3)) * 0.01
    if scheme == "pattern":  # strong kernels that fit a pattern exactly
        weight.view(8, 8, 9)[:4, :4, list(PATTERNS_3x3[5])] = 10.0
    else:
        weight[:4, :4] = 10.0  # one strong block of 4 filters x 4 channels
    mask = make_mask(scheme, weight, 0.6)
    kept_energy = (weight * mask).pow(2).sum() / weight.pow(2).sum()
    assert kept_energy > 0.99


def test_masks_are_deterministic():
    w = _weight(3, (12, 8, 3, 3))
    for scheme in list_schemes():
        if scheme in ("dense", "block_fc"):
            continue
        assert torch.equal(make_mask(scheme, w, 0.7), make_mask(scheme, w, 0.7))


def test_ties_stay_structured():
    w = torch.ones(8, 8, 3, 3)
    mask = make_mask("group4", w, 0.5)
    assert mask_sparsity(mask) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("scheme", "shape", "message"),
    [
        ("pattern", (4, 4, 1, 1), "3x3"),
        ("block_fc", (4, 4, 3, 3), "linear"),
        ("block_punched", (4, 4), "conv"),
    ],
)
def test_scheme_layer_mismatch_names_layer(scheme, shape, message):
    with pytest.raises(PlanError, match=f"Layer 'features.3'.*{message}"):
        make_mask(scheme, torch.randn(*shape), 0.5, layer="features.3")


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_sparsity_outside_range(bad):
    with pytest.raises(PlanError, match=f"'conv9' has sparsity {bad}"):
        make_mask("group4", torch.randn(4, 4, 3, 3), bad, layer="conv9")


def test_unknown_scheme_and_bad_params():
    with pytest.raises(PlanError, match="'zigzag'"):
        make_mask("zigzag", torch.randn(4, 4), 0.5)
    with pytest.raises(PlanError, match="block_in=0"):
        SchemeParams(block_in=0)
