"""Confidence intervals shared by evaluation, judge quality and review agreement, and the paired test of two policies."""

from __future__ import annotations

import math

from scipy.stats import binomtest


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


def paired_test(a: list[int], b: list[int]) -> dict:
    """Exact McNemar test of two policies' pass (1) / fail (0) outcomes on the same prompts, in order.

    Only the discordant prompts carry information: under "no difference" each is equally likely to favour
    either side, so the two-sided p-value is a binomial test of `a_only` out of `a_only + b_only` at .5.
    """
    if len(a) != len(b):
        raise ValueError(f"paired test: {len(a)} outcomes against {len(b)}; both must be on the same prompts")
    if any(x not in (0, 1) for x in (*a, *b)):
        raise ValueError("paired test: outcomes must be 0 or 1 (one greedy answer per prompt)")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    discordant = a_only + b_only
    p = binomtest(a_only, discordant, 0.5).pvalue if discordant else 1.0
    n = len(a)
    return {"n": n, "a_only": a_only, "b_only": b_only, "difference": (a_only - b_only) / n if n else math.nan,
            "p_value": float(p)}
