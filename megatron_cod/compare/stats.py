"""Seed-group statistics: mean and standard error, and the Welch rule that turns a difference into a verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["holds", "opposite", "within noise", "one seed, no verdict", "not enough runs"]


@dataclass(frozen=True)
class Estimate:
    """Mean of n values and its standard error (sample std with ddof=1 over sqrt(n); NaN for n=1)."""

    mean: float
    se: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Estimate | None:
        finite = [float(v) for v in values if v is not None and math.isfinite(v)]
        if not finite:
            return None
        n = len(finite)
        mean = math.fsum(finite) / n
        if n == 1:
            return cls(mean, math.nan, 1)
        var = math.fsum((v - mean) ** 2 for v in finite) / (n - 1)
        return cls(mean, math.sqrt(var / n), n)

    def text(self) -> str:
        if self.n == 1:
            return number(self.mean)
        se = 0.0 if self.se <= 1e-12 * abs(self.mean) else self.se  # float noise of identical values
        return f"{number(self.mean)} ± {se:.2g}"


def number(value: float | None) -> str:
    """4 significant digits; whole numbers from 1,000 up with thousands separators; — for missing."""
    if value is None or not math.isfinite(value):
        return "—"
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.4g}"


@dataclass(frozen=True)
class Difference:
    """high - low of two group means with its Welch standard error sqrt(se_low^2 + se_high^2)."""

    low: Estimate
    high: Estimate

    @property
    def value(self) -> float:
        return self.high.mean - self.low.mean

    @property
    def se(self) -> float:
        return math.sqrt(self.low.se**2 + self.high.se**2)

    def verdict(self, expected_sign: int) -> Verdict:
        """ "holds" when the difference has the expected sign and exceeds twice its standard error,
        "opposite" when it exceeds it the other way, else "within noise"; one seed on either side
        gives no verdict at all."""
        if self.low.n < 2 or self.high.n < 2:
            return "one seed, no verdict"
        if abs(self.value) <= 2.0 * self.se:
            return "within noise"
        return "holds" if math.copysign(1.0, self.value) == expected_sign else "opposite"

    def text(self) -> str:
        se = "n/a" if math.isnan(self.se) else f"{self.se:.3g}"
        return f"{self.value:+.4g} (SE {se}; n = {self.low.n} vs {self.high.n})"
