"""Standard errors over sequences: every score is a function of per-sequence sums.

A metric keeps, for each evaluated sequence, the additive quantities its score is built from
(loss sums, KL sums, norm sums, token counts). The score is ``stat(sum over sequences)`` and its
standard error the leave-one-sequence-out jackknife of the same ``stat``: for a plain mean over
equal-length sequences that is exactly std(per-sequence means, ddof=1) / sqrt(n); for ratios
(loss ratios, |L0 - L| / L0, the causal matrix) it is the usual linearised error, with no
formula per score. The jackknife replicates also give the standard error of any difference
of two scores on the same sequences (paired), which is how layer orders are checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# Two layers' scores are "resolved" when they differ by more than this many standard errors.
RESOLVE_SIGMAS = 2.0


class SequenceSums:
    """Rows of per-sequence additive quantities, appended batch by batch ([b, *shape] each)."""

    def __init__(self) -> None:
        self._rows: list[np.ndarray] = []

    def add(self, rows: torch.Tensor | np.ndarray) -> None:
        if isinstance(rows, torch.Tensor):
            rows = rows.detach().double().cpu().numpy()
        self._rows.append(np.asarray(rows, dtype=np.float64))

    def array(self) -> np.ndarray:
        return np.concatenate(self._rows) if self._rows else np.zeros((0,))

    @property
    def count(self) -> int:
        return sum(r.shape[0] for r in self._rows)


@dataclass(frozen=True)
class Scored:
    """Scores (any shape), their standard errors and the jackknife replicates [n, *shape]."""

    value: np.ndarray
    stderr: np.ndarray
    replicates: np.ndarray

    def difference_stderr(self, i: tuple[int, ...] | int, j: tuple[int, ...] | int) -> float:
        """Paired standard error of value[i] - value[j] (same sequences, correlations kept)."""
        diff = (
            self.replicates[(slice(None), *np.atleast_1d(i))]
            - self.replicates[(slice(None), *np.atleast_1d(j))]
        )
        return float(_jackknife_spread(diff))


def _jackknife_spread(replicates: np.ndarray) -> np.ndarray:
    n = replicates.shape[0]
    if n < 2:
        return np.full(replicates.shape[1:], np.inf)
    centred = replicates - replicates.mean(axis=0)
    return np.sqrt((n - 1) / n * (centred * centred).sum(axis=0))


def jackknife(stat: Callable[[np.ndarray], np.ndarray], sums: np.ndarray) -> Scored:
    """``stat`` maps totals [m, *k] (a leading batch axis) to scores [m, *out]; ``sums`` is [n, *k].

    value = stat(total), stderr = leave-one-sequence-out jackknife (inf with fewer than 2 sequences).
    """
    total = sums.sum(axis=0, keepdims=True)
    value = stat(total)[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        replicates = stat(total - sums)
    return Scored(np.asarray(value, dtype=np.float64), _jackknife_spread(replicates), replicates)


def mean_per_token(sums: np.ndarray, counts: np.ndarray) -> Scored:
    """Token-weighted mean: sum of per-sequence sums [n, *k] over the sequences' token counts [n]."""
    n = sums.shape[0]
    packed = np.concatenate([sums.reshape(n, -1), counts.reshape(n, 1)], axis=1)
    shape = sums.shape[1:]
    return jackknife(lambda t: (t[:, :-1] / t[:, -1:]).reshape(t.shape[0], *shape), packed)


def ratio_of_sums(numerators: np.ndarray, denominators: np.ndarray) -> Scored:
    """sum(num) / sum(den) elementwise, numerators [n, *k] and denominators broadcastable to them."""
    n = numerators.shape[0]
    den = np.broadcast_to(denominators, numerators.shape)
    packed = np.concatenate([numerators.reshape(n, -1), den.reshape(n, -1)], axis=1)
    width = packed.shape[1] // 2
    shape = numerators.shape[1:]
    return jackknife(lambda t: (t[:, :width] / t[:, width:]).reshape(t.shape[0], *shape), packed)


def unresolved_pairs(scored: Scored, sigmas: float = RESOLVE_SIGMAS) -> list[tuple[int, int]]:
    """Neighbours in the ranking of a per-layer score [L] whose order is within ``sigmas`` paired SEs.

    Returns (a, b) layer pairs, a ranked just below b, whose difference is not resolved.
    """
    values = np.asarray(scored.value)
    order = [int(i) for i in np.argsort(values, kind="stable") if np.isfinite(values[i])]
    out = []
    for a, b in zip(order, order[1:]):
        if abs(values[b] - values[a]) <= sigmas * scored.difference_stderr(b, a):
            out.append((a, b))
    return out
