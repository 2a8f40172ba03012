"""Symmetric InfoNCE (CLIP) loss that is correct with N processes, as open_clip computes it.

With ``world_size > 1`` every rank gathers all ranks' embeddings *with gradients*
(``torch.distributed.nn.functional.all_gather``, whose backward returns each rank its gradient) and
computes a *local* loss: its own ``n`` rows against all ``N = n * world_size`` columns, labels
``arange(n) + n * rank``. Averaged over ranks by DDP, the gradient equals that of the single-process
loss on the concatenated batch (open_clip ``ClipLoss(local_loss=True, gather_with_grad=True)``; the
maintainers' note in open_clip #894; #616 explains why gathering with gradients *without* the local
loss scales gradients by world_size). Memory is O(n N), not O(N^2).

``loss = (CE(s * img @ lid^T, labels) + CE(s * lid @ img^T, labels)) / 2`` with ``s = exp(logit_scale)``
(Radford et al. 2021, CLIP).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed.nn  # noqa: F401 - registers torch.distributed.nn.functional (open_clip #980)

    return torch.cat(torch.distributed.nn.functional.all_gather(x), dim=0)


def clip_loss(img: torch.Tensor, lidar: torch.Tensor, logit_scale: torch.Tensor, gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch.

    Args:
        img, lidar: (n, D) L2-normalised embeddings of this rank's pairs (row i of each is a pair).
        logit_scale: scalar, already exponentiated (e.g. 1 / 0.07 at init).
        gather: under ``torch.distributed``, contrast against every rank's pairs (training); False: this
            batch alone, no collective (evaluation, where ranks run different numbers of batches).

    Returns:
        Scalar loss; under ``torch.distributed`` the local part of the global loss (see module docstring).
    """
    n = img.shape[0]
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        rank = dist.get_rank()
        all_img, all_lidar = _gather_with_grad(img), _gather_with_grad(lidar)
        logits_img = logit_scale * img @ all_lidar.T
        logits_lidar = logit_scale * lidar @ all_img.T
        labels = torch.arange(n, device=img.device) + n * rank
    else:
        logits_img = logit_scale * img @ lidar.T
        logits_lidar = logits_img.T
        labels = torch.arange(n, device=img.device)
    return (F.cross_entropy(logits_img, labels) + F.cross_entropy(logits_lidar, labels)) / 2
