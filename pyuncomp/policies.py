"""Compression policies: how each method splits the KV budget over layers and KV heads.

A policy is a small object. ``scoring`` says how the native engine ranks a head's tokens
(``"attention"``: the observation window's attention, pooled — SnapKV; ``"recency"``: attention
sinks and the most recent tokens). ``weights(layers)`` gives each KV head of each compressible layer
a relative share of the budget. The engine (``fit_budgets``) turns shares into token counts whose mean
is the requested budget, within [window + sinks, tokens held], and compacts the cache.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class LayerInfo:
    """One compressible cache layer as a policy sees it."""

    il: int  # model layer index
    n_head_kv: int
    entropy: Optional[np.ndarray] = None  # truncated matrix entropy of each KV head's keys


class Policy:
    """Base policy: every KV head of every layer gets the same share."""

    name = "snapkv"
    scoring = "attention"
    needs_entropy = False

    def weights(self, layers: Sequence[LayerInfo]) -> List[np.ndarray]:
        return [np.ones(layer.n_head_kv) for layer in layers]


class StreamingLLM(Policy):
    """Attention sinks plus the most recent tokens, the same budget everywhere."""

    name = "streamingllm"
    scoring = "recency"


class SnapKV(Policy):
    """Window attention scores, the same budget for every layer and head."""

    name = "snapkv"


def pyramid_schedule(n_layers: int, beta: float = 20.0) -> np.ndarray:
    """PyramidKV's linear layer shares, mean 1: the first layer gets 2 - 1/beta, the last 1/beta."""
    if n_layers == 1:
        return np.ones(1)
    low = 1.0 / beta
    return np.linspace(2.0 - low, low, n_layers)


class PyramidKV(Policy):
    """Window attention scores; layer budgets fall linearly with depth, heads of a layer share equally."""

    name = "pyramidkv"

    def __init__(self, beta: float = 20.0):
        self.beta = beta

    def weights(self, layers):
        schedule = pyramid_schedule(len(layers), self.beta)
        return [np.full(layer.n_head_kv, share) for layer, share in zip(layers, schedule)]


def entropy_stages(layer_entropy: np.ndarray, n_stages: int) -> np.ndarray:
    """Stage index of each layer: layers split where the mean key entropy changes most between
    neighbours (the n_stages - 1 largest jumps), so each stage is a run of similar layers."""
    n = len(layer_entropy)
    n_stages = max(1, min(n_stages, n))
    jumps = np.abs(np.diff(layer_entropy))
    cuts = np.sort(np.argsort(-jumps, kind="stable")[: n_stages - 1]) + 1
    stage = np.zeros(n, dtype=int)
    for cut in cuts:
        stage[cut:] += 1
    return stage


class UNComp(Policy):
    """UNComp (arXiv 2410.03090): budgets from the truncated matrix entropy of the cached keys.

    Layers: grouped into ``n_stages`` stages of similar entropy; the pyramid schedule, averaged over each
    stage, gives its layers one share. Heads: the KV heads of a layer are ranked by the entropy of their
    cached keys and split into ``n_head_groups`` equal groups; the first group gets ``head_spread`` times
    the share of the last, shares in between linear. The reference has a 5:1 and a 2:1 variant
    (capacity 5/6 : 1/6, or 1.5 C : 0.75 C); 2:1 is the default here: on SmolLM2 passkeys at 2k and
    ratio 0.05, 5:1 starved the third KV head of deep layers (17 tokens) and lost 3 of 10 needles at
    depths 0.7-0.9, 2:1 lost none (docs/fidelity.md).

    Which end comes first: the reference ranks heads by the entropy of their *query* states and favours
    the high-entropy ones. We rank by *key* entropy (the keys are cached; the prompt's queries are not),
    and there the measurement points the other way: on SmolLM2 passkeys at 2k, ratio 0.05, favouring
    low-entropy key heads kept 5/5 needles, favouring high-entropy ones 0/5 (docs/engine.md). So
    ``favour_low_entropy`` defaults to True.

    The layer pyramid is much milder than the reference's (``beta`` 1.5: shares 1.33 … 0.67, against
    1.95 … 0.05 with its β = 20). SmolLM2's needles are read by its deep layers (21-23, docs/fidelity.md,
    "Where uncomp 0.1 loses the needles"), which a steep pyramid starves: on its 2k/4k grid over six
    seeds (GPU), β = 1.5 scored 47.4 at ratio 0.05 and 59.2 at 0.1, β = 4 (the default until
    2026-12-03) 42.3 and 55.3, flat layers 46.6 and 56.0, snapkv 43.9 and 57.0 (docs/fidelity.md, "A
    milder pyramid still"). It also lowers the largest layer budget, which sets the cache's cells.
    """

    name = "uncomp"
    needs_entropy = True

    def __init__(self, n_head_groups: int = 2, n_stages: int = 4, head_spread: float = 2.0, beta: float = 1.5,
                 favour_low_entropy: bool = True, layer_order: str = "depth"):
        if layer_order not in ("depth", "entropy"):
            raise ValueError(f"layer_order: must be 'depth' or 'entropy', got {layer_order!r}")
        self.layer_order = layer_order
        self.n_head_groups = n_head_groups
        self.favour_low_entropy = favour_low_entropy
        self.n_stages = n_stages
        self.head_spread = head_spread
        self.beta = beta

    def head_shares(self, entropy: np.ndarray) -> np.ndarray:
        n = len(entropy)
        groups = min(self.n_head_groups, n)
        if groups == 1:
            return np.ones(n)
        level = np.linspace(self.head_spread, 1.0, groups)
        # rank 0 = the favoured head; ranks split into `groups` near-equal runs
        rank = np.empty(n, dtype=int)
        order = np.asarray(entropy) if self.favour_low_entropy else -np.asarray(entropy)
        rank[np.argsort(order, kind="stable")] = np.arange(n)
        group = (rank * groups) // n
        shares = level[group]
        return shares / shares.mean()

    def weights(self, layers):
        layer_entropy = np.array([float(np.mean(layer.entropy)) for layer in layers])
        stage = entropy_stages(layer_entropy, self.n_stages)
        schedule = pyramid_schedule(len(layers), self.beta)
        if self.layer_order == "entropy":
            # the schedule's top shares go to the stages of lowest mean entropy, whatever their depth
            stage_entropy = np.array([layer_entropy[stage == s].mean() for s in stage])
            order = np.argsort(stage_entropy if self.favour_low_entropy else -stage_entropy, kind="stable")
            schedule = schedule[np.argsort(order, kind="stable")]
        stage_share = np.array([schedule[stage == s].mean() for s in stage])
        return [share * self.head_shares(layer.entropy) for layer, share in zip(layers, stage_share)]


def make_policy(method: str, n_head_groups: int = 2) -> Policy:
    policies = {"streamingllm": StreamingLLM, "snapkv": SnapKV, "pyramidkv": PyramidKV}
    if method == "uncomp":
        return UNComp(n_head_groups=n_head_groups)
    if method not in policies:
        raise ValueError(f"method: no compression policy named {method!r}")
    return policies[method]()


def fit_budgets(weights: Sequence[np.ndarray], mean: float, low: int, high) -> List[np.ndarray]:
    """Integer budgets proportional to ``weights`` with the given mean (rounded), each in [low, high].

    ``high`` is one bound for every head or, like ``weights``, one array per layer: what each head
    holds (after an earlier compression heads hold different counts, and a head cannot keep more than
    it holds: the others take up the rest). The scale is found by bisection so that the clipped budgets
    sum to mean x heads (when that is reachable); rounding hands the remainder to the largest fractional
    parts.
    """
    flat = np.concatenate([np.asarray(w, dtype=float) for w in weights])
    if np.any(flat <= 0) or not np.all(np.isfinite(flat)):
        raise ValueError("weights: must be positive and finite")
    if isinstance(high, numbers.Real):
        high = np.full(len(flat), float(high))
    else:
        high = np.concatenate([np.asarray(h, dtype=float) for h in high])
    low = np.minimum(float(low), high)
    # a whole number of tokens per head on average, so that equal weights give equal budgets
    total = float(np.clip(round(float(mean)) * len(flat), low.sum(), high.sum()))
    lo_scale, hi_scale = 0.0, float((high / flat).max())
    for _ in range(100):
        scale = 0.5 * (lo_scale + hi_scale)
        if np.clip(scale * flat, low, high).sum() < total:
            lo_scale = scale
        else:
            hi_scale = scale
    exact = np.clip(hi_scale * flat, low, high)
    budgets = np.floor(exact).astype(np.int64)
    short = int(round(total)) - int(budgets.sum())
    if short > 0:
        room = np.where(budgets < high, exact - budgets, -1.0)
        grow = np.argsort(-room, kind="stable")[:short]
        budgets[grow[room[grow] >= 0]] += 1
    out, at = [], 0
    for w in weights:
        out.append(budgets[at: at + len(w)])
        at += len(w)
    return out
