"""Whole-set retrieval re-ranked by a fused pair score (ALBEF's retrieval: Li et al., NeurIPS 2021).

For each query (an image, or a LiDAR scan) the ``K`` gallery rows nearest by the pre-fusion embeddings are
scored again by the model's fused pair score (:meth:`~.model.TokenFusionNet.fused_pair_scores`: the
matching logit of the cross-modal blocks) and re-ordered by it; the partner's new rank is its place among
them (ties in its favour), or its contrastive rank (>= K) if it was not among the ``K``. Cost: 2 N K
fusion passes over pre-computed tokens.
"""

from __future__ import annotations

import torch

from toolkit.tasks.common.retrieval import partner_ranks


@torch.no_grad()
def rerank_recall(model, img: torch.Tensor, lid: torch.Tensor, img_tokens: torch.Tensor, lid_tokens: torch.Tensor,
                  img_azimuth: torch.Tensor, k_top: int, ks: tuple[int, ...], chunk: int = 128) -> dict[str, float]:
    """``{i2l,l2i}_rerank_recall@k`` in percent.

    Args:
        model: a :class:`~.model.TokenFusionNet` (put in eval mode for the call, then restored).
        img, lid: (N, E) pre-fusion embeddings, row i a pair.
        img_tokens: (N, S, T, D); lid_tokens: (N, L, D) the encoders' tokens of the same rows; img_azimuth:
            (N, S, T) rad the image tokens' ray azimuths (:func:`~.model.token_azimuths`).
        k_top: candidates re-ranked per query (capped at N).
        chunk: pairs per fusion pass.
    """
    N = len(img)
    if N == 0:
        return {}
    K = min(k_top, N)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = {}
    try:
        for name, query, gallery in (("i2l", img, lid), ("l2i", lid, img)):
            contrastive = partner_ranks(query, gallery)
            cand = (query.double() @ gallery.double().T).topk(K, dim=1).indices  # (N, K)
            rows = torch.arange(N).repeat_interleave(K)
            cols = cand.flatten()
            ii, ll = (rows, cols) if name == "i2l" else (cols, rows)
            scores = torch.cat([model.fused_pair_scores(img_tokens[ii[s:s + chunk]].to(device),
                                                        lid_tokens[ll[s:s + chunk]].to(device),
                                                        img_azimuth[ii[s:s + chunk]].to(device)).float().cpu()
                                for s in range(0, len(rows), chunk)]).view(N, K)
            partner = cand == torch.arange(N)[:, None]
            found = partner.any(1)
            partner_score = torch.where(partner, scores, torch.full_like(scores, float("-inf"))).amax(1)
            reranked = (scores > partner_score[:, None]).sum(1)
            rank = torch.where(found, reranked, contrastive.clamp(min=K))
            out.update({f"{name}_rerank_recall@{k}": 100.0 * float((rank < k).double().mean()) for k in ks})
    finally:
        model.train(was_training)
    return out
