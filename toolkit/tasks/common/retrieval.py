"""Whole-set retrieval of paired embeddings: recall@k in both directions.

Row ``i`` of ``query`` and row ``i`` of ``gallery`` are a true pair (an image and its LiDAR scan). For
each query the rank of its partner among all ``N`` gallery rows by dot product (cosine similarity for
L2-normalised embeddings) is counted; recall@k = share of queries whose partner ranks in the top k
(ties counted in the query's favour). Chance level is k / N. This is open_clip's ``get_clip_metrics``
(``image_to_text_R@k``), computed in row chunks so memory stays O(chunk x N).
"""

from __future__ import annotations

import torch


def partner_ranks(query: torch.Tensor, gallery: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(N,) int64: 0-based rank of ``gallery[i]`` among all gallery rows for ``query[i]``.

    Args:
        query, gallery: (N, D) float embeddings, row-aligned pairs.

    Raises:
        ValueError: if the shapes do not pair up.
    """
    if query.ndim != 2 or query.shape != gallery.shape:
        raise ValueError(f"query {tuple(query.shape)} and gallery {tuple(gallery.shape)} must both be (N, D)")
    q, g = query.double(), gallery.double()
    ranks = []
    for start in range(0, len(q), chunk):
        sim = q[start:start + chunk] @ g.T
        idx = torch.arange(start, start + len(sim))
        true = sim[torch.arange(len(sim)), idx]
        ranks.append((sim > true[:, None]).sum(dim=1))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.int64)


def recall_at_k(query: torch.Tensor, gallery: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[int, float]:
    """Recall@k in percent for each ``k`` (NaN for an empty set)."""
    ranks = partner_ranks(query, gallery)
    if len(ranks) == 0:
        return {k: float("nan") for k in ks}
    return {k: 100.0 * float((ranks < k).double().mean()) for k in ks}
