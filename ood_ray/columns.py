"""Every column name and prefix the stages share, and the Arrow <-> NumPy helpers for them.

Internal columns start with ``_`` and never reach a committed table:

==========================  ====================================================================
``_input_error``            why a manifest entry cannot be read at all (its row is ``missing``)
``_px_<key>``               model-ready pixels of one preprocessing (scan -> embedding actor)
``_ae_pixels``              the autoencoder's input pixels (scan -> autoencoder / finalize)
``_ch_<stat>``              per-channel statistics as lists (scan -> ``channels``)
``_emb_<model>``            the pooled embedding (embedding -> kNN, fits, finalize -> ``embeddings``)
``_prob_``/``_logit_``/``_topk_class_``/``_topk_prob_<model>``   classifier outputs (-> ``predictions``)
``_nbr_id_``/``_nbr_sim_``/``_dup_id_``/``_dup_sim_<model>``      kNN lists (-> ``neighbors``, pairs)
``_fetch_seconds``, ``_scan_seconds``   a block's worker seconds, on its first row (-> ``run.json``)
==========================  ====================================================================

Score columns are ``score_<detector>_<model>`` (``score_<detector>`` for scores over several
models); the flag of a thresholded score is ``is_ood_<detector>_<model>``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

INPUT_ERROR = "_input_error"
PIXELS_PREFIX = "_px_"
AUTOENCODER_PIXELS = "_ae_pixels"
CHANNEL_LIST_PREFIX = "_ch_"
EMBEDDING_PREFIX = "_emb_"
PROBABILITIES_PREFIX = "_prob_"
LOGITS_PREFIX = "_logit_"
TOPK_CLASS_PREFIX = "_topk_class_"
TOPK_PROB_PREFIX = "_topk_prob_"
NEIGHBOR_ID_PREFIX = "_nbr_id_"
NEIGHBOR_SIM_PREFIX = "_nbr_sim_"
DUPLICATE_ID_PREFIX = "_dup_id_"
DUPLICATE_SIM_PREFIX = "_dup_sim_"
FETCH_SECONDS = "_fetch_seconds"
SCAN_SECONDS = "_scan_seconds"
#: Seconds an embedding actor spent in a batch, and waiting for it since its previous batch (first row of its output).
EMBED_SECONDS = "_embed_seconds"
EMBED_IDLE_SECONDS = "_embed_idle_seconds"

SCORE_PREFIX = "score_"
FLAG_PREFIX = "is_ood_"


def score_column(detector: str, model: str | None = None) -> str:
    """``score_<detector>_<model>``, or ``score_<detector>`` for a score over several models."""
    return f"{SCORE_PREFIX}{detector}_{model}" if model else f"{SCORE_PREFIX}{detector}"


def flag_column(score: str) -> str:
    """``score_msp_resnet18`` -> ``is_ood_msp_resnet18``."""
    return FLAG_PREFIX + score[len(SCORE_PREFIX):]


def embedding_column(model: str) -> str:
    return f"{EMBEDDING_PREFIX}{model}"


def is_internal(name: str) -> bool:
    """Whether a column is internal (never written to a committed table)."""
    return name.startswith("_")


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(row indices, float32[n, D])`` of the non-null vectors of an embedding column."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = np.flatnonzero(np.asarray(array.is_valid()))
    if len(rows) == 0:
        return rows, np.zeros((0, 0), np.float32)
    valid = array.take(pa.array(rows))
    dim = valid.type.list_size if pa.types.is_fixed_size_list(valid.type) else len(valid[0])
    return rows, valid.flatten().to_numpy(zero_copy_only=False).reshape(len(rows), dim).astype(np.float32)


def scattered(n: int, rows: np.ndarray, values: np.ndarray, dtype: Any) -> pa.Array:
    """A length-``n`` column holding ``values`` at ``rows`` and null elsewhere (and where NaN)."""
    out = np.zeros(n, dtype)
    mask = np.ones(n, bool)
    out[rows] = values
    mask[rows] = np.isnan(values) if np.issubdtype(np.asarray(values).dtype, np.floating) else False
    return pa.array(out, mask=mask)
