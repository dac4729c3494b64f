"""The one place that reads the search space: integer vectors -> Candidates (kept channels, sparsities)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from latprune.errors import PlanError
from latprune.graph import ChannelGraph, build_graph
from latprune.prune import group_importance, select_channels
from latprune.space import SearchSpace
from latprune.supernet._masks import Subnet


class SpaceAdapter:
    """Turns the search's integer encodings into :class:`Subnet` masks for one model.

    Channel importance is ranked once, on the parent's weights, with the same ``group_importance`` and
    ``select_channels`` that ``plan_from_arch`` uses, and kept counts come from ``SearchSpace.kept`` (the
    space owns the rounding to multiples of 4), so a candidate keeps exactly the channels its plan keeps.
    """

    def __init__(self, space: SearchSpace, model: nn.Module, importance: str = "l1") -> None:
        self.space = space
        self.graph: ChannelGraph = build_graph(model, space.input_size, space.in_channels)
        model_groups = [(g.name, g.channels) for g in self.graph.groups]
        if model_groups != [(g.name, g.channels) for g in space.groups] or [ly.name for ly in space.layers] != [
            ly.name for ly in self.graph.layers
        ]:
            raise PlanError("The search space was built for another model (its groups or layers differ); rebuild it.")
        self.importance = {g.name: group_importance(model, g, importance) for g in self.graph.groups}  # type: ignore[arg-type]

    def candidates(self, X: np.ndarray) -> list[Subnet]:
        """One candidate per row of ``X`` (n, n_var): the top-k channels per group, the sparse layers' values and
        each one's scheme (per candidate: a space may let every layer choose its scheme)."""
        X = np.atleast_2d(np.asarray(X))
        kept = self.space.kept(X)  # (n, G)
        _, _, sparsity = self.space.layer_dims(X)  # (n, L), 0 where a layer is not sparse
        options = self.space.layer_options(X)  # (n, L) index of each layer's scheme
        out = []
        for row in range(X.shape[0]):
            keep: dict[str, torch.Tensor] = {}
            for gi, group in enumerate(self.graph.groups):
                k = int(kept[row, gi])
                if group.fixed or k >= group.channels:
                    continue
                keep[group.name] = torch.tensor(select_channels(self.importance[group.name], k, group.name))
            layers = self.space.layers
            sparse = {ly.name: float(s) for ly, s in zip(layers, sparsity[row], strict=True) if s > 0.0}
            schemes = {ly.name: ly.options[k] for ly, k in zip(layers, options[row], strict=True) if ly.name in sparse}
            out.append(Subnet(keep, sparse, schemes))
        return out
