"""The Bayes oracle of a synthetic events stream: the best ranking any model could reach.

Given the truth (synth/truth.py), a message at time t comes from the chatter (rate
chatter_per_s) or from an event e whose reaction window covers t (rate reactions_per_event /
window length): the posterior over sources is proportional to those rates, and the text is
uniform over the source's phrases. Ranking candidates by that probability maximises expected
R@k and MRR; ties (the phrases of one source are equally likely) are broken at random, and the
metrics are their exact expectation over tie orders, not one draw.

The channel marginal ranks by the channel's overall text distribution over the VOD (the rates
integrated over its whole timeline): what a model that ignores the stream, its time and the
chat context at best does. A model's score reads as the fraction of the oracle's gain over
the marginal that it closes: (model - marginal) / (oracle - marginal).
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from vod2chat.synth.truth import Truth

KS = (1, 5, 10)
EDGE_S = 2e-3  # chat times and event starts are kept to the millisecond: rounding stays inside


def _mix(weights: dict[str, float], truth: Truth) -> dict[str, float]:
    total = sum(weights.values())
    out: Counter = Counter()
    for source, w in weights.items():
        texts = truth.texts[source]
        for text in texts:
            out[text] += w / total / len(texts)
    return dict(out)


def text_probs(truth: Truth, t: float) -> dict[str, float]:
    """P(text | a message at time t, the truth)."""
    d0, d1 = truth.delay_s
    rate = truth.reactions_per_event / (d1 - d0)
    w: Counter = Counter({"chatter": truth.chatter_per_s})
    for e in truth.events:
        if d0 - EDGE_S <= t - e.start <= d1 + EDGE_S:
            w[e.type] += rate
    return _mix(w, truth)


def marginal_probs(truth: Truth) -> dict[str, float]:
    """P(text | a message somewhere in this VOD of this channel)."""
    w: Counter = Counter({"chatter": truth.chatter_per_s * truth.duration})
    for e in truth.events:
        w[e.type] += truth.reactions_per_event
    return _mix(w, truth)


def expected_metrics(p_real: float, p_others: Sequence[float], ks: Sequence[int] = KS) -> dict[str, float]:
    """Expected R@k, rank and reciprocal rank of the real candidate when candidates are ranked by
    probability, most likely first, ties in a uniformly random order."""
    o = np.asarray(p_others, dtype=np.float64)
    g = int((o > p_real).sum())  # surely ahead
    n = int((o == p_real).sum())  # tied: the real one lands at g+1 .. g+n+1, each equally likely
    ranks = np.arange(g + 1, g + n + 2, dtype=np.float64)
    return {**{f"R@{k}": float((ranks <= k).mean()) for k in ks}, "MR": float(ranks.mean()),
            "MRR": float((1 / ranks).mean())}


def rank_candidates(probs: dict[str, float], candidates: Sequence[str]) -> dict[str, float]:
    """Metrics for one moment; candidates[0] is the real message."""
    p = [probs.get(c.strip(), 0.0) for c in candidates]
    return expected_metrics(p[0], p[1:])


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {**{f"R@{k}": float("nan") for k in KS}, "MR": float("nan"), "MRR": float("nan")}
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def closed_fraction(model: float, marginal: float, oracle: float) -> float:
    """Share of the oracle's gain over the marginal that a model closes (nan if there is none)."""
    gap = oracle - marginal
    return float((model - marginal) / gap) if gap > 1e-12 else float("nan")
