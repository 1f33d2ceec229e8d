"""Two-sample tests for drift, and the multiple-testing corrections that set their thresholds.

- **Kolmogorov-Smirnov**: ``D = sup_x |F_ref(x) - F_new(x)|`` (``scipy.stats.ks_2samp``, two-sided).
- **Cramer-von Mises**: ``T = nm/(n+m) * integral (F_ref - F_new)^2 dH`` (Anderson 1962;
  ``scipy.stats.cramervonmises_2samp``), more sensitive than KS to differences spread over the range.
- **MMD** (Gretton et al., JMLR 2012): unbiased ``MMD^2 = mean k(x,x') + mean k(y,y') - 2 mean k(x,y)``
  with an RBF kernel ``k(a,b) = exp(-||a-b||^2 / (2 s^2))``, ``s^2`` = the median of the pooled
  squared distances / 2 (the median heuristic); p-value by permuting the pooled sample,
  ``p = (1 + #{MMD^2_perm >= MMD^2}) / (1 + permutations)``. This is what alibi-detect's
  ``MMDDrift`` does.
- **Label shift**: Pearson's chi-squared test of homogeneity on the label counts (class balance),
  reported as Cramer's V.
- **Mann-Whitney U** (one-sided, ``greater``): are the new data's kNN distances to the reference
  stochastically larger than the reference's own (leave-one-out) ones?

Corrections over a family of ``m`` tests at level ``alpha``: **Bonferroni** rejects ``p <= alpha/m``;
**FDR** (Benjamini & Hochberg 1995) rejects ``p <= t`` with ``t = max{ i alpha / m : p_(i) <= i alpha / m }``
(``alpha / m`` when no p-value qualifies, so nothing is rejected).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float


def ks_test(reference: np.ndarray, new: np.ndarray) -> TestResult:
    result = stats.ks_2samp(reference, new)
    return TestResult(float(result.statistic), float(result.pvalue))


def cvm_test(reference: np.ndarray, new: np.ndarray, permutations: int = 1000, seed: int = 0) -> TestResult:
    """Two-sample Cramer-von Mises. Without ties: SciPy's statistic and asymptotic p-value. With ties
    (discrete statistics such as ``zeros`` or ``p100``, where SciPy's rank formula and the
    asymptotic law do not hold) the statistic is evaluated on the pooled ECDFs and the p-value comes
    from ``permutations`` label permutations.

    A permutation only moves reference labels between equal values, so its statistic depends only
    on how many reference values fall on each distinct value: a multivariate hypergeometric draw
    of the distinct values' counts. The permutations are drawn that way, in batches, which costs
    ``O(permutations x distinct values)`` instead of ``O(permutations x n)`` -- for a statistic
    with few distinct values (the tied case) a few milliseconds."""
    pooled = np.concatenate([reference, new])
    values, groups = np.unique(pooled, return_inverse=True)
    if len(values) == len(pooled):
        result = stats.cramervonmises_2samp(reference, new, method="asymptotic")
        return TestResult(float(result.statistic), float(min(max(result.pvalue, 0.0), 1.0)))
    n, m = len(reference), len(new)
    counts_all = np.bincount(groups, minlength=len(values))
    observed = float(_cvm_tied(np.bincount(groups[:n], minlength=len(values))[None, :], counts_all, n, m)[0])
    rng = np.random.default_rng(seed)
    exceed = 0
    batch = max(1, min(permutations, 2_000_000 // max(1, len(values))))
    for start in range(0, permutations, batch):
        draws = rng.multivariate_hypergeometric(counts_all, n, size=min(batch, permutations - start))
        exceed += int(np.sum(_cvm_tied(draws, counts_all, n, m) >= observed - 1e-12))
    return TestResult(observed, (1.0 + exceed) / (1.0 + permutations))


def _cvm_tied(counts_ref: np.ndarray, counts_all: np.ndarray, n: int, m: int) -> np.ndarray:
    """``nm/(n+m) * sum_z (F(z) - G(z))^2 h(z)`` over the distinct pooled values ``z`` (``h``: pooled
    mass), for each row of reference counts per distinct value."""
    F = np.cumsum(counts_ref, axis=1) / n
    G = np.cumsum(counts_all[None, :] - counts_ref, axis=1) / m
    return n * m / (n + m) * np.sum((F - G) ** 2 * (counts_all / (n + m))[None, :], axis=1)


def mann_whitney_greater(reference: np.ndarray, new: np.ndarray) -> TestResult:
    """U statistic of ``new`` over ``reference`` scaled to ``P(new > ref)`` (ties half), one-sided p."""
    result = stats.mannwhitneyu(new, reference, alternative="greater")
    return TestResult(float(result.statistic) / (len(new) * len(reference)), float(result.pvalue))


def label_shift(reference: dict[str, int], new: dict[str, int]) -> tuple[TestResult, list[str]]:
    """Pearson's chi-squared test of homogeneity on the ``2 x L`` table of label counts
    (``scipy.stats.chi2_contingency``); ``statistic`` is Cramer's V, ``sqrt(chi2 / N)`` (0 = the
    same class balance, 1 = disjoint labels). Returns the result and the labels in column order."""
    labels = sorted(set(reference) | set(new))
    if len(labels) < 2:
        return TestResult(0.0, 1.0), labels
    table = np.array([[reference.get(label, 0) for label in labels], [new.get(label, 0) for label in labels]], np.float64)
    chi2, p_value, _, _ = stats.chi2_contingency(table, correction=False)
    return TestResult(float(np.sqrt(chi2 / table.sum())), float(p_value)), labels


def _squared_distances(Z: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", Z, Z)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * (Z @ Z.T), 0.0)


def _mmd2_unbiased(K: np.ndarray, x: np.ndarray, total: float) -> float:
    """Unbiased MMD^2 of the pooled kernel matrix ``K`` (unit diagonal, sum ``total``) split by mask ``x``."""
    xf = x.astype(np.float64)
    n = float(xf.sum())
    m = len(xf) - n
    kx = K @ xf
    sxx = float(xf @ kx)
    sxy = float(kx.sum()) - sxx
    syy = total - 2.0 * sxy - sxx
    return (sxx - n) / (n * (n - 1)) + (syy - m) / (m * (m - 1)) - 2.0 * sxy / (n * m)


def mmd_test(reference: np.ndarray, new: np.ndarray, permutations: int = 200, seed: int = 0) -> TestResult:
    """RBF-kernel MMD permutation test with the median heuristic (see module docstring)."""
    if len(reference) < 2 or len(new) < 2:
        raise ValueError("the MMD test needs at least 2 vectors on each side")
    Z = np.concatenate([reference, new]).astype(np.float64)
    D = _squared_distances(Z)
    median = float(np.median(D[np.triu_indices(len(Z), k=1)]))
    K = np.exp(-D / max(median, 1e-12))  # exp(-d^2 / (2 s^2)) with s^2 = median / 2
    is_ref = np.zeros(len(Z), bool)
    is_ref[: len(reference)] = True
    total = float(K.sum())
    observed = _mmd2_unbiased(K, is_ref, total)
    rng = np.random.default_rng(seed)
    exceed = sum(_mmd2_unbiased(K, rng.permutation(is_ref), total) >= observed for _ in range(permutations))
    return TestResult(observed, (1.0 + exceed) / (1.0 + permutations))


def corrected_threshold(p_values: list[float] | np.ndarray, alpha: float, correction: str) -> float:
    """The per-test p-value threshold of a family after ``bonferroni`` or ``fdr`` (see docstring)."""
    p = np.sort(np.asarray(p_values, dtype=np.float64))
    m = len(p)
    if m == 0:
        return alpha
    if correction == "bonferroni":
        return alpha / m
    if correction == "fdr":
        steps = alpha * np.arange(1, m + 1) / m
        passing = np.flatnonzero(p <= steps)
        return float(steps[passing[-1]]) if len(passing) else alpha / m
    raise ValueError(f"correction={correction!r}: must be bonferroni or fdr")
