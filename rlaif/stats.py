"""Confidence intervals shared by evaluation, judge quality and review agreement."""

from __future__ import annotations

import math


def wilson(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (sound near 0 and 1, unlike the normal one).

    `n` may be an effective (non-integer) sample size; z = 1.96 gives 95%. (nan, nan) when n is 0.
    """
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))
