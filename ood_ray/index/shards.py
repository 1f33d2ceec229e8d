"""One shard of the index: a Ray actor holding part of the vectors of every model.

A shard reads its own share of the staged Parquet files (the vectors never pass through the
driver), L2-normalises them and keeps two indexes:

- ``reference``: the reference rows (the reference split, or every row when there is none) in an
  ``IndexFlatIP`` or in a copy of the driver's trained IVF template -- what KNN-OOD searches;
- ``others``: the remaining rows, always exact -- searched together with the reference for
  embedding near-duplicates.

Ids are the 32-hex ``image_id`` of each row (``S32``), so shards of any size merge exactly; each
reference row's ``label`` (UTF-8 bytes, ``b""`` when unlabelled) travels with its id, so a query
learns its neighbours' labels without a join (the neighbour-vote label-issue score). A saved shard
(``save``) is the FAISS index file plus its ids and labels; ``load_saved`` restores the reference
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


class _ModelIndex:
    """The two indexes and the ids of one model inside a shard."""

    def __init__(self, dim: int, template: bytes | None, nprobe: int) -> None:
        import faiss

        self.dim = dim
        self.nprobe = nprobe
        self.reference = faiss.deserialize_index(np.frombuffer(template, dtype=np.uint8)) if template else faiss.IndexFlatIP(dim)
        self.set_nprobe()
        self.others = faiss.IndexFlatIP(dim)
        self.reference_ids = np.zeros(0, dtype="S32")
        self.reference_labels = np.zeros(0, dtype="S1")
        self.other_ids = np.zeros(0, dtype="S32")

    def set_nprobe(self) -> None:
        import faiss

        try:
            faiss.extract_index_ivf(self.reference).nprobe = self.nprobe
        except RuntimeError:
            pass  # not an IVF index

    def add(self, vectors: np.ndarray, ids: np.ndarray, reference: bool, labels: np.ndarray | None = None) -> None:
        (self.reference if reference else self.others).add(np.ascontiguousarray(vectors, dtype=np.float32))
        if reference:
            self.reference_ids = np.concatenate([self.reference_ids, np.asarray(ids, dtype="S32")])
            labels = np.full(len(ids), b"", dtype="S1") if labels is None else np.asarray(labels, dtype="S")
            self.reference_labels = np.concatenate([self.reference_labels, labels])
        else:
            self.other_ids = np.concatenate([self.other_ids, np.asarray(ids, dtype="S32")])

    def sizes(self) -> dict[str, int]:
        return {"reference": int(self.reference.ntotal), "others": int(self.others.ntotal)}


def _search(index: Any, ids: np.ndarray, queries: np.ndarray, k: int, *extra: np.ndarray) -> tuple[np.ndarray, ...]:
    if index.ntotal == 0 or k == 0:
        return (np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), b"", dtype="S32"),
                *(np.full((len(queries), k), b"", dtype=e.dtype) for e in extra))
    similarities, positions = index.search(queries, k)
    return clean(similarities, positions, ids, *extra)


def _labels(table: pa.Table) -> np.ndarray:
    """The ``label`` column as UTF-8 bytes (``b""``: unlabelled or no such column)."""
    if "label" not in table.column_names:
        return np.full(table.num_rows, b"", dtype="S1")
    return np.asarray([(v or "").encode() for v in table.column("label").to_pylist()], dtype="S")


class IndexShard:
    """See module docstring: one shard of every model's index. Create with
    ``ray.remote(IndexShard).options(num_cpus=...)``; one set of shards serves all models.

    ``plans`` (one dict per model) make the shard build itself in its constructor -- from the
    staged files (``alias``, ``dim``, ``template``, ``files``, ``column``, ``reference_split``,
    ``all_reference``) or from a saved index (``alias``, ``dim``, ``index_uri``, ``ids_uri``, plus
    ``files``/``column`` for this run's rows) -- so that an actor Ray restarts after its process or
    node died rebuilds exactly the same shard from storage.
    """

    def __init__(self, nprobe: int = 16, plans: list[dict[str, Any]] = ()) -> None:
        self.nprobe = nprobe
        self.models: dict[str, _ModelIndex] = {}
        self.built: dict[str, dict[str, int]] = {}
        for plan in plans:
            if plan.get("index_uri"):
                self.load_saved(plan["alias"], plan["dim"], plan["index_uri"], plan["ids_uri"])
                self.built[plan["alias"]] = self.load_rows(plan["alias"], plan["files"], plan["column"], None, False)
            else:
                self.add_model(plan["alias"], plan["dim"], plan.get("template"))
                self.built[plan["alias"]] = self.load_rows(plan["alias"], plan["files"], plan["column"],
                                                           plan["reference_split"], plan["all_reference"])

    def ready(self) -> dict[str, dict[str, int]]:
        """The sizes of every model's indexes once built (the driver waits on this)."""
        return {alias: model.sizes() for alias, model in self.models.items()}

    def add_model(self, alias: str, dim: int, template: bytes | None = None) -> None:
        """Start an empty index for ``alias`` (a copy of the trained IVF ``template`` if given)."""
        self.models[alias] = _ModelIndex(dim, template, self.nprobe)

    def load_rows(self, alias: str, files: list[str], column: str, reference_split: str | None,
                  all_reference: bool) -> dict[str, int]:
        """Add the ``ok`` rows with a vector in ``column`` from ``files`` (staged Parquet parts), in
        ``image_id`` order, so the index is the same whatever the files and their order."""
        model = self.models[alias]
        vectors, ids, is_ref, labels = [], [], [], []
        for uri in files:
            table = storage.read_parquet(uri, ["image_id", "split", "status", "label", column])
            table = table.filter(pc.and_(pc.equal(table.column("status"), "ok"), pc.is_valid(table.column(column))))
            if table.num_rows == 0:
                continue
            vectors.append(table.column(column).combine_chunks().flatten().to_numpy(zero_copy_only=False)
                           .reshape(table.num_rows, model.dim))
            ids.append(np.asarray(table.column("image_id").to_pylist(), dtype="S32"))
            labels.append(_labels(table))
            if all_reference:
                is_ref.append(np.ones(table.num_rows, dtype=bool))
            elif reference_split is None:
                is_ref.append(np.zeros(table.num_rows, dtype=bool))
            else:
                is_ref.append(np.asarray(pc.fill_null(pc.equal(table.column("split"), reference_split), False)))
        if not vectors:
            return model.sizes()
        all_ids = np.concatenate(ids)
        order = np.argsort(all_ids, kind="stable")
        all_vectors, all_ids, reference = l2_normalize(np.concatenate(vectors))[order], all_ids[order], np.concatenate(is_ref)[order]
        all_labels = np.concatenate(labels)[order]
        if reference.any():
            model.add(all_vectors[reference], all_ids[reference], reference=True, labels=all_labels[reference])
        if (~reference).any():
            model.add(all_vectors[~reference], all_ids[~reference], reference=False)
        return model.sizes()

    def add(self, alias: str, vectors: np.ndarray, ids: np.ndarray, reference: bool = True) -> dict[str, int]:
        """Add already-normalised vectors (tests and the benchmark)."""
        self.models[alias].add(vectors, ids, reference)
        return self.models[alias].sizes()

    def sizes(self, alias: str) -> dict[str, int]:
        return self.models[alias].sizes()

    def search(self, alias: str, queries: np.ndarray, k_reference: int, k_all: int = 0,
               labels: bool = False) -> tuple[tuple, tuple]:
        """``(reference top-k_reference, all-rows top-k_all)`` of ``alias`` for normalised ``queries``:
        ``(similarities, ids)`` each, the reference part with the neighbours' labels third when
        ``labels``."""
        model = self.models[alias]
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        reference = _search(model.reference, model.reference_ids, queries, max(k_reference, k_all), model.reference_labels)
        everything = (np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), "S32"))
        if k_all:
            head = (reference[0][:, :k_all], reference[1][:, :k_all])
            everything = merge_topk([head, _search(model.others, model.other_ids, queries, k_all)], k_all)
        return tuple(a[:, :k_reference] for a in reference[: 3 if labels else 2]), everything

    def save(self, alias: str, index_uri: str, ids_uri: str) -> int:
        """Write the reference index of ``alias`` and its ids; returns the number of vectors."""
        import faiss

        model = self.models[alias]
        storage.write_bytes_atomic(index_uri, faiss.serialize_index(model.reference).tobytes())
        buffer = io.BytesIO()
        pq.write_table(pa.table({"image_id": pa.array([i.decode() for i in model.reference_ids], pa.string()),
                                 "label": pa.array([v.decode() for v in model.reference_labels], pa.string())}), buffer)
        storage.write_bytes_atomic(ids_uri, buffer.getvalue())
        return int(model.reference.ntotal)

    def load_saved(self, alias: str, dim: int, index_uri: str, ids_uri: str) -> dict[str, int]:
        """Restore a saved reference index of ``alias`` (scoring new data against a committed run)."""
        import faiss

        model = self.models[alias] = _ModelIndex(dim, None, self.nprobe)
        model.reference = faiss.deserialize_index(np.frombuffer(storage.read_bytes(index_uri), dtype=np.uint8))
        model.set_nprobe()
        saved = pq.read_table(io.BytesIO(storage.read_bytes(ids_uri)))
        model.reference_ids = np.asarray(saved.column("image_id").to_pylist(), dtype="S32")
        model.reference_labels = _labels(saved)  # b"" for an index saved before labels were kept
        return model.sizes()
