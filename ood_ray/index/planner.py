"""Which index: exact (``Flat``) or approximate (``IVF``), and its memory estimate.

``knn.index: auto`` follows autofaiss's published rules of thumb:

- exact inner-product search (``IndexFlatIP``) while the reference has at most
  ``knn.exact_max_vectors`` vectors and their float32 copy (``n * d * 4`` bytes) fits
  ``knn.memory_budget_gb`` -- brute force is exact and, at this size, fast enough;
- beyond, ``IVF<nlist>,Flat`` with ``nlist`` the power of two nearest ``4 * sqrt(n)`` (autofaiss
  picks ``4 sqrt(n)`` to ``16 sqrt(n)`` clusters), trained on a sample of at least ``39 * nlist``
  vectors (FAISS's own minimum advice), searched with ``knn.nprobe`` lists;
- when even that does not fit the budget, ``IVF<nlist>,PQ<m>`` with ``m = d / 8`` one-byte codes
  (``n * m`` bytes).

The plan and its estimate are logged before any vector is loaded.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

GIB = 1024**3


@dataclass(frozen=True)
class IndexPlan:
    kind: str  # flat | ivf | ivfpq
    factory: str
    nlist: int
    memory_bytes: int
    reason: str

    def to_dict(self) -> dict:
        return {"kind": self.kind, "factory": self.factory, "nlist": self.nlist,
                "memory_bytes": self.memory_bytes, "reason": self.reason}


def plan_index(n: int, dim: int, kind: str = "auto", memory_budget_gb: float = 8.0,
               exact_max_vectors: int = 1_000_000, nlist: int | None = None) -> IndexPlan:
    """The index for ``n`` reference vectors of dimension ``dim`` (see module docstring)."""
    flat_bytes = n * dim * 4
    budget = memory_budget_gb * GIB
    if kind == "auto":
        if n <= exact_max_vectors and flat_bytes <= budget:
            kind, reason = "flat", f"{n} vectors <= exact_max_vectors and {flat_bytes / GIB:.2f} GiB <= budget"
        elif flat_bytes <= budget:
            kind, reason = "ivf", f"{n} vectors > exact_max_vectors={exact_max_vectors}"
        else:
            kind, reason = "ivfpq", f"{flat_bytes / GIB:.2f} GiB of float32 vectors > budget {memory_budget_gb} GiB"
    else:
        reason = "configured"
    if kind == "flat":
        return IndexPlan("flat", "Flat", 0, flat_bytes, reason)
    lists = nlist or int(2 ** round(math.log2(max(16.0, 4 * math.sqrt(max(n, 1))))))
    lists = max(1, min(lists, max(1, n // 39)))
    if kind == "ivf":
        return IndexPlan("ivf", f"IVF{lists},Flat", lists, flat_bytes + lists * dim * 4, reason)
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return IndexPlan("ivfpq", f"IVF{lists},PQ{m}", lists, n * (m + 8) + lists * dim * 4, reason)


def train_template(plan: IndexPlan, sample: np.ndarray, nprobe: int) -> bytes | None:
    """An empty, trained index for the shards (serialised), or ``None`` for ``Flat``."""
    import faiss

    if plan.kind == "flat":
        return None
    index = faiss.index_factory(sample.shape[1], plan.factory, faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    faiss.extract_index_ivf(index).nprobe = nprobe
    return faiss.serialize_index(index).tobytes()
