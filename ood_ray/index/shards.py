"""One shard of the index: a Ray actor holding part of the vectors of one model.

A shard reads its own share of the staged Parquet files (the vectors never pass through the
driver), L2-normalises them and keeps two indexes:

- ``reference``: the reference rows (the reference split, or every row when there is none) in an
  ``IndexFlatIP`` or in a copy of the driver's trained IVF template -- what KNN-OOD searches;
- ``others``: the remaining rows, always exact -- searched together with the reference for
  embedding near-duplicates.

Ids are the 32-hex ``image_id`` of each row (``S32``), so shards of any size merge exactly. A
saved shard (``save``) is the FAISS index file plus its ids; ``load_saved`` restores the reference
part for scoring new data against a committed run.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ood_ray.detectors.knn import l2_normalize
from ood_ray.index.topk import clean, merge_topk
from ood_ray.io import storage


class IndexShard:
    """See module docstring. Create with ``ray.remote(IndexShard).options(num_cpus=...)``."""

    def __init__(self, dim: int, template: bytes | None = None, nprobe: int = 16) -> None:
        import faiss

        self.dim = dim
        self.nprobe = nprobe
        self.reference = faiss.deserialize_index(np.frombuffer(template, dtype=np.uint8)) if template else faiss.IndexFlatIP(dim)
        self._set_nprobe()
        self.others = faiss.IndexFlatIP(dim)
        self.reference_ids = np.zeros(0, dtype="S32")
        self.other_ids = np.zeros(0, dtype="S32")

    def load_rows(self, files: list[str], column: str, reference_split: str | None, all_reference: bool) -> dict[str, int]:
        """Add the ``ok`` rows with a vector in ``column`` from ``files`` (staged Parquet parts)."""
        ref_vectors, ref_ids, other_vectors, other_ids = [], [], [], []
        for uri in files:
            fs, path = storage.resolve(uri)
            table = pq.read_table(path, filesystem=fs, columns=["image_id", "split", "status", column])
            table = table.filter(pc.and_(pc.equal(table.column("status"), "ok"), pc.is_valid(table.column(column))))
            if table.num_rows == 0:
                continue
            vectors = l2_normalize(table.column(column).combine_chunks().flatten().to_numpy(zero_copy_only=False)
                                   .reshape(table.num_rows, self.dim))
            ids = np.asarray(table.column("image_id").to_pylist(), dtype="S32")
            if all_reference:
                is_ref = np.ones(table.num_rows, dtype=bool)
            elif reference_split is None:
                is_ref = np.zeros(table.num_rows, dtype=bool)
            else:
                is_ref = np.asarray(pc.fill_null(pc.equal(table.column("split"), reference_split), False))
            ref_vectors.append(vectors[is_ref])
            ref_ids.append(ids[is_ref])
            other_vectors.append(vectors[~is_ref])
            other_ids.append(ids[~is_ref])
        if sum(len(v) for v in ref_vectors):
            self.add(np.concatenate(ref_vectors), np.concatenate(ref_ids), reference=True)
        if sum(len(v) for v in other_vectors):
            self.add(np.concatenate(other_vectors), np.concatenate(other_ids), reference=False)
        return self.sizes()

    def add(self, vectors: np.ndarray, ids: np.ndarray, reference: bool = True) -> dict[str, int]:
        """Add already-normalised vectors (tests and the benchmark)."""
        index = self.reference if reference else self.others
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        if reference:
            self.reference_ids = np.concatenate([self.reference_ids, np.asarray(ids, dtype="S32")])
        else:
            self.other_ids = np.concatenate([self.other_ids, np.asarray(ids, dtype="S32")])
        return self.sizes()

    def _set_nprobe(self) -> None:
        import faiss

        try:
            faiss.extract_index_ivf(self.reference).nprobe = self.nprobe
        except RuntimeError:
            pass  # not an IVF index

    def sizes(self) -> dict[str, int]:
        return {"reference": int(self.reference.ntotal), "others": int(self.others.ntotal)}

    def _search(self, index: Any, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if index.ntotal == 0 or k == 0:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), b"", dtype="S32")
        similarities, positions = index.search(queries, k)
        return clean(similarities, positions, ids)

    def search(self, queries: np.ndarray, k_reference: int, k_all: int = 0) -> tuple[tuple, tuple]:
        """``(reference top-k_reference, all-rows top-k_all)`` for normalised ``queries``."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        reference = self._search(self.reference, self.reference_ids, queries, max(k_reference, k_all))
        everything = (np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), "S32"))
        if k_all:
            head = (reference[0][:, :k_all], reference[1][:, :k_all])
            everything = merge_topk([head, self._search(self.others, self.other_ids, queries, k_all)], k_all)
        return (reference[0][:, :k_reference], reference[1][:, :k_reference]), everything

    def save(self, index_uri: str, ids_uri: str) -> int:
        """Write the reference index and its ids; returns the number of vectors."""
        import faiss

        storage.write_bytes_atomic(index_uri, faiss.serialize_index(self.reference).tobytes())
        buffer = io.BytesIO()
        pq.write_table(pa.table({"image_id": pa.array([i.decode() for i in self.reference_ids], pa.string())}), buffer)
        storage.write_bytes_atomic(ids_uri, buffer.getvalue())
        return int(self.reference.ntotal)

    def load_saved(self, index_uri: str, ids_uri: str) -> dict[str, int]:
        """Restore a saved reference index (scoring new data against a committed run)."""
        import faiss

        self.reference = faiss.deserialize_index(np.frombuffer(storage.read_bytes(index_uri), dtype=np.uint8))
        self._set_nprobe()
        ids = pq.read_table(io.BytesIO(storage.read_bytes(ids_uri))).column("image_id").to_pylist()
        self.reference_ids = np.asarray(ids, dtype="S32")
        return self.sizes()
