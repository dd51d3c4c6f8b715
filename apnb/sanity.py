"""Sanity checks of attribution maps: the model parameter randomisation test (Adebayo et al., "Sanity Checks for
Saliency Maps", NeurIPS 2018).

A map that explains a network must change when the network's weights are destroyed. The test randomises the
layers in cascade from the top (the classifier first, then each layer below it, keeping the ones already
randomised) and, after each step, compares every image's map with its map under the trained weights by the
Spearman rank correlation. A map that stays correlated while the weights that produced the decision are gone
explains the input, not the network.

The cascade is Quantus' (Hedström et al., JMLR 2023; ``quantus.MPRT`` with ``layer_order="top_down"``): the
modules that have ``reset_parameters`` (convolutions, linear layers, BatchNorm), in reverse registration order,
each re-initialised by its own ``reset_parameters`` after ``torch.manual_seed(seed + 1)``; the maps are
compared as they are (Quantus with ``abs=False, normalise=False``). ``tests/test_sanity.py`` checks the numbers
against Quantus on a small network.
"""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from scipy.stats import spearmanr


def randomisable_layers(model: nn.Module) -> list[str]:
    """The names of the modules the test re-initialises, in registration order (bottom up)."""
    return [name for name, m in model.named_modules() if hasattr(m, "reset_parameters")]


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The Spearman rank correlation of each row of ``a`` with the same row of ``b`` ([B, F] each)."""
    return np.array([spearmanr(x, y)[0] for x, y in zip(a, b)])


def parameter_randomisation(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                            explain: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
                            seed: int = 42, layers: int | None = None) -> pd.DataFrame:
    """The cascading randomisation test of ``explain(model, x, target) -> maps [B,H,W]`` on ``model`` (left as it
    is: a copy is randomised). One row per (step, image): ``step`` 1 is the top layer randomised, ``layer`` the
    last one randomised at that step, ``spearman`` the rank correlation of the image's map with its map under the
    trained weights. ``layers`` stops after that many steps (default: every layer)."""
    was = model.training
    model.eval()
    try:
        original = explain(model, x, target).detach().flatten(1).cpu().numpy()
    finally:
        model.train(was)
    rand = copy.deepcopy(model).eval()
    modules = dict(rand.named_modules())
    names = randomisable_layers(rand)[::-1]
    rows = []
    for step, name in enumerate(names[:layers] if layers else names, start=1):
        torch.manual_seed(seed + 1)
        modules[name].reset_parameters()
        maps = explain(rand, x, target).detach().flatten(1).cpu().numpy()
        for i, r in enumerate(spearman_rows(original, maps)):
            rows.append({"step": step, "layer": name, "image": i, "spearman": float(r)})
    return pd.DataFrame(rows)


def randomisation_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per step: the layer, the mean and the spread of the rank correlation over images, and the share of images
    whose map keeps a correlation of 0.5 or more (a map that survives the randomisation)."""
    g = df.groupby(["step", "layer"], sort=False).spearman
    return pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1), "kept_0.5": g.apply(lambda s: float((s >= 0.5).mean()))}
                        ).reset_index()
