"""Exact, mergeable summaries of a metric's values: what the lint thresholds need, computed per
part file in the workers and merged on the driver in bounded memory.

- **Exact sums** (:class:`ExactSum`): every float64 is ``m * 2**(e - 53)`` with an integer
  ``|m| < 2**53``; the mantissas are added per exponent as integers (split into 26-bit halves so that
  NumPy's sums stay exact), so a sum is exact, and merging sums of parts gives the same number in
  any order and for any split into parts. Mean ``S / n`` and variance ``sum (x - mean)^2 / n`` (the
  second a pass after the mean is known, as NumPy's two-pass ``var``) are rounded once.
- **Exact order statistics by radix refinement** (:class:`OrderStatistic`): a float64 maps to a
  ``uint64`` key that sorts the same way; the ``r``-th smallest value is found 16 bits at a time --
  a histogram of the top 16 bits of every key locates the bucket holding rank ``r``, then a
  histogram of the next 16 bits of the keys in that bucket, and so on: four passes give the key
  exactly. The histograms are sparse (only occupied buckets travel). Quartiles are NumPy's linear
  interpolation between the two order statistics around ``q (n - 1)``, the median the mean of the
  middle two (``np.median``); the MAD is the median of ``|x - median|``, found the same way once the
  median is known.

Order statistics, quartiles, median and MAD are the same to the last bit as NumPy on the whole
array; mean and variance are the exact sums rounded once (NumPy's pairwise sums may differ from
them in the last bits); all of it whatever the number and order of parts (tested). The driver holds
only counts, a few exponents and occupied buckets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

_SIGN = np.uint64(1 << 63)
_LOW26 = (1 << 26) - 1
_MIN_EXPONENT = -1080
BITS_PER_ROUND = 16
ROUNDS = 64 // BITS_PER_ROUND


def float_keys(values: np.ndarray) -> np.ndarray:
    """``uint64`` keys that sort like the float64 ``values`` (IEEE-754 order; -0.0 before 0.0)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def keys_to_floats(keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.uint64)
    return np.where(keys & _SIGN, keys & ~_SIGN, ~keys).view(np.float64)


@dataclass
class ExactSum:
    """An exact sum of float64 values: ``{exponent: integer sum of mantissas}`` (see module doc)."""

    terms: dict[int, int] = field(default_factory=dict)
    #: the sum of the infinite values (``inf``, ``-inf``, or ``nan`` when both were added), else 0
    infinite: float = 0.0

    def add(self, values: np.ndarray) -> ExactSum:
        values = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            self.infinite = float(np.sum(values[~finite]) + self.infinite)
        values = values[finite]
        if values.size == 0:
            return self
        fractions, exponents = np.frexp(values)
        mantissas = np.ldexp(fractions, 53).astype(np.int64)
        high, low = mantissas >> 26, mantissas & _LOW26
        bins = exponents.astype(np.intp) - _MIN_EXPONENT  # frexp exponents lie in [-1073, 1024]
        # |high| < 2^27 and 0 <= low < 2^26: float64 sums of up to 2^26 of them are exact.
        for start in range(0, values.size, 1 << 25):
            part = slice(start, start + (1 << 25))
            highs = np.bincount(bins[part], weights=high[part])
            lows = np.bincount(bins[part], weights=low[part])
            for index in np.flatnonzero(np.bincount(bins[part])).tolist():
                exponent = index + _MIN_EXPONENT
                self.terms[exponent] = self.terms.get(exponent, 0) + (int(highs[index]) << 26) + int(lows[index])
        return self

    def merge(self, other: ExactSum) -> ExactSum:
        for exponent, value in other.terms.items():
            self.terms[exponent] = self.terms.get(exponent, 0) + value
        if other.infinite:
            self.infinite = self.infinite + other.infinite
        return self

    def divided(self, n: int) -> float:
        """The sum divided by ``n``, rounded once (``inf``/``nan`` when infinite values were added)."""
        if self.infinite or self.infinite != self.infinite:
            return self.infinite
        return float(self.fraction() / n)

    def fraction(self) -> Fraction:
        if not self.terms:
            return Fraction(0)
        low = min(self.terms)
        total = sum(value << (exponent - low) for exponent, value in self.terms.items())
        shift = low - 53
        return Fraction(total * (1 << shift)) if shift >= 0 else Fraction(total, 1 << -shift)

    def to_state(self) -> dict:
        return {"terms": [[e, v] for e, v in sorted(self.terms.items())], "infinite": self.infinite}

    @classmethod
    def from_state(cls, state: dict) -> ExactSum:
        return cls({int(e): int(v) for e, v in state["terms"]}, float(state["infinite"]))


Buckets = tuple  # (bucket ids: uint16 array, counts: int64 array), ids sorted and distinct
#: The buckets of a target no part had a value for.
NO_BUCKETS = (np.zeros(0, np.uint16), np.zeros(0, np.int64))


def bucket_counts(keys: np.ndarray, prefix: int, level: int) -> Buckets:
    """Occupied buckets of the next 16 bits of the ``keys`` whose top ``16 * level`` bits are
    ``prefix``: ``(bucket ids, counts)`` (one ``bincount`` over 65,536 bins, no sort)."""
    if level:
        keys = keys[(keys >> np.uint64(64 - BITS_PER_ROUND * level)) == np.uint64(prefix)]
    shift = np.uint64(64 - BITS_PER_ROUND * (level + 1))
    digits = ((keys >> shift) & np.uint64((1 << BITS_PER_ROUND) - 1)).astype(np.intp)
    return _sparse(np.bincount(digits, minlength=1 << BITS_PER_ROUND))


def _sparse(dense: np.ndarray) -> Buckets:
    occupied = np.flatnonzero(dense)
    return occupied.astype(np.uint16), dense[occupied].astype(np.int64)


def merge_buckets(parts: list[Buckets]) -> Buckets:
    """One ``(ids, counts)`` from several (counts of the same bucket add)."""
    if len(parts) == 1:
        return parts[0]
    ids = np.concatenate([p[0] for p in parts]).astype(np.intp)
    counts = np.concatenate([p[1] for p in parts])
    dense = np.zeros(1 << BITS_PER_ROUND, dtype=np.int64)
    np.add.at(dense, ids, counts)
    return _sparse(dense)


@dataclass
class OrderStatistic:
    """The search for the ``rank``-th smallest key (0-based): ``prefix`` holds the bits found so
    far (``16 * level`` of them) and ``rank`` the rank left inside that bucket."""

    rank: int
    prefix: int = 0
    level: int = 0

    @property
    def done(self) -> bool:
        return self.level == ROUNDS

    def refine(self, buckets: Buckets) -> None:
        """Go one level down with the merged counts of the current bucket's sub-buckets."""
        ids, counts = buckets
        ends = np.cumsum(counts)
        index = int(np.searchsorted(ends, self.rank, side="right"))
        if index >= len(ids):
            raise ValueError(f"rank {self.rank} beyond the {int(ends[-1]) if len(ends) else 0} keys of the bucket")
        self.prefix = (self.prefix << BITS_PER_ROUND) | int(ids[index])
        self.rank -= int(ends[index - 1]) if index else 0
        self.level += 1

    @property
    def value(self) -> float:
        return float(keys_to_floats(np.array([self.prefix], dtype=np.uint64))[0])


def quantile_ranks(n: int, q: float) -> tuple[int, int, float]:
    """``(lower rank, upper rank, weight)`` of NumPy's linear quantile ``q`` of ``n`` values."""
    position = q * (n - 1)
    lower = int(np.floor(position))
    return lower, min(lower + 1, n - 1), position - lower


def median_ranks(n: int) -> tuple[int, int]:
    """The ranks whose mean is NumPy's median of ``n`` values (equal when ``n`` is odd)."""
    return (n - 1) // 2, n // 2


def middle(low: float, high: float) -> float:
    """NumPy's median from its two middle values: their mean, ``(a + b) / 2``."""
    return float((np.float64(low) + np.float64(high)) / 2)


def interpolate(low: float, high: float, weight: float) -> float:
    """NumPy's linear interpolation between two neighbouring order statistics (its ``_lerp``:
    ``a + (b - a) t``, computed from ``b`` when ``t >= 0.5``, so that ``t = 1`` gives ``b`` exactly)."""
    diff = np.float64(high) - np.float64(low)
    if weight >= 0.5:
        return float(np.float64(high) - diff * (1 - np.float64(weight)))
    return float(np.float64(low) + diff * np.float64(weight))


def empty_summaries() -> dict[str, Any]:
    """What a pass returns before any part: ``{"n": {key: count}, "sums": {key: ExactSum state},
    "buckets": {target: Buckets}}``."""
    return {"n": {}, "sums": {}, "buckets": {}}


def merge_summaries(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Merge one part's contribution into the running total (counts and exact sums add, bucket
    counts add bucket by bucket)."""
    for key, n in part.get("n", {}).items():
        total["n"][key] = total["n"].get(key, 0) + n
    for key, state in part.get("sums", {}).items():
        addend = state if isinstance(state, ExactSum) else ExactSum.from_state(state)
        total["sums"][key] = total["sums"].get(key, ExactSum()).merge(addend)
    for target, buckets in part.get("buckets", {}).items():
        if target in total["buckets"]:
            buckets = merge_buckets([total["buckets"][target], buckets])
        total["buckets"][target] = buckets
    return total


def refine_searches(searches: dict[str, OrderStatistic], targets: dict[str, tuple],
                    one_pass: Callable[[dict[str, tuple], int], dict[str, Any]]) -> dict[str, Any]:
    """Drive ``searches`` (level 0 already resolved) to full keys: each round calls
    ``one_pass({name: (*targets[name], prefix, level)}, round)`` for the open searches -- a pass over
    every part returning merged summaries whose ``buckets[name]`` counts the next 16 bits of the
    keys under ``prefix`` -- and refines them. Returns the first round's result (a pass may compute
    other summaries on the way; empty when nothing was open)."""
    first: dict[str, Any] = {}
    round_ = 0
    while any(not s.done for s in searches.values()):
        open_targets = {name: (*targets[name], s.prefix, s.level) for name, s in searches.items() if not s.done}
        result = one_pass(open_targets, round_)
        if round_ == 0:
            first = result
        for name in open_targets:
            searches[name].refine(result["buckets"].get(name, NO_BUCKETS))
        round_ += 1
    return first
