"""Token fusion network: image patch tokens and LiDAR pillar tokens, unimodal encoders, two-way cross-attention.

Inspired by OmniVec2 (Srivastava & Sharma, "OmniVec2 - A Novel Transformer based Network for Large Scale
Multimodal and Multitask Learning", CVPR 2024: modality tokenizers, a transformer per stream and
cross-attention between pairs of modalities) at laptop scale; the contrastive part is CLIP's (Radford et
al. 2021) and the align-before-fuse recipe ALBEF's (Li et al., NeurIPS 2021: a contrastive loss on the
unimodal embeddings *before* fusion, a matching head on the fused tokens, retrieval = contrastive top-k
re-ranked by the matching head).

Shapes (B samples, S cameras, T image tokens per camera, L LiDAR tokens, D token width, E embedding width):

* :class:`ImageEncoder`: (N, 3, H, W) float in [0, 1] -> (N, T, D). Patch embedding (:mod:`.patches`: a stem
  of stride-2 convolutions, or one kernel = stride = ``patch`` convolution) + LayerNorm + a learned positional
  embedding (within a camera), then self-attention blocks over each camera's tokens alone (so a single image
  can be encoded, :class:`ImageEmbedding`).
* :class:`LidarEncoder`: points (B, N, F >= 4) ego m + mask (B, N) -> (B, L, D): PointPillars tokens
  (:mod:`.pillars`) and self-attention blocks.
* :class:`TokenPool`: the pre-fusion embeddings (B, E) that the contrastive loss aligns and retrieval uses:
  coarse token grids (``grid``) or token means (``mean``), projected and L2-normalised.
* :class:`Fusion`: (B, S, T, D) image tokens + (B, L, D) LiDAR tokens -> image tokens (B, S T, D) after a
  learned camera embedding is added, LiDAR tokens (B, L, D), and the fused embedding (B, E_f) from the
  pooled tokens of both after the cross-modal blocks. With ``azimuth_frequencies`` > 0 both streams' tokens
  first get the same learned embedding of their ego-frame azimuth (:func:`token_azimuths` of each image
  token's camera ray, the bearing of each LiDAR token's BEV cell): a PETR-style position embedding (Liu et
  al., "PETR: Position Embedding Transformation for Multi-View 3D Object Detection", ECCV 2022, reduced to
  the azimuth, which both modalities share), so cross-attention can look up what lies in the same
  direction in the other modality. :class:`CrossModalBlock` = two-way cross-attention
  (image queries LiDAR, LiDAR queries image, both from the block's inputs) and a feed-forward layer per
  stream, pre-norm residuals; :class:`PairwiseFeedForward` is the ablation without cross-attention
  (feed-forward only: the streams meet only in the fused head, late fusion).

All attention is ``torch.nn.functional.scaled_dot_product_attention``; everything is TorchScript-compatible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .patches import patch_embedding
from .pillars import PillarTokenizer


class Attention(nn.Module):
    """Multi-head attention of ``x`` (B, Tq, D) over ``context`` (B, Tk, D) -> (B, Tq, D)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"token width {dim} must be a multiple of the number of heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``bias``: an additive attention-logit bias broadcastable to (B, heads, Tq, Tk), or None."""
        B, Tq, D = x.shape
        Tk, h = context.shape[1], self.heads
        q = self.q(x).view(B, Tq, h, D // h).transpose(1, 2)
        kv = self.kv(context).view(B, Tk, 2, h, D // h).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=bias)
        return self.out(o.transpose(1, 2).reshape(B, Tq, D))


def feed_forward(dim: int, mlp_ratio: float) -> nn.Sequential:
    hidden = int(dim * mlp_ratio)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def fourier_azimuth(azimuth: torch.Tensor, frequencies: int) -> torch.Tensor:
    """Fourier features of an angle: (...,) rad -> (..., 2 F) float, ``cos(m a)`` then ``sin(m a)`` for
    m = 1..F (periodic in 2 pi: -pi and pi are the same direction)."""
    m = torch.arange(1, frequencies + 1, dtype=azimuth.dtype, device=azimuth.device)
    x = azimuth[..., None] * m
    return torch.cat([x.cos(), x.sin()], -1)


def token_azimuths(intrinsics: torch.Tensor, cam2ego: torch.Tensor, rows: int, cols: int, patch: int) -> torch.Tensor:
    """Ego-frame azimuth of the camera ray through each image token's centre.

    Args:
        intrinsics: (B, S, 3, 3) float pinhole matrices of the network's input images (px; zero skew).
        cam2ego: (B, S, 4, 4) float camera -> ego transforms (camera frame: x right, y down, z forward).
        rows, cols: the token grid of one image (T = rows cols, row-major); patch: px per token side.

    Returns:
        (B, S, T) float, rad: ``atan2(y, x)`` of the ray direction in the ego frame (x forward, y left), so 0
        straight ahead and +pi/2 to the left. The camera's offset from the ego origin is ignored (a direction).
    """
    dt = intrinsics.dtype
    u = (torch.arange(cols, dtype=dt, device=intrinsics.device) + 0.5) * patch
    v = (torch.arange(rows, dtype=dt, device=intrinsics.device) + 0.5) * patch
    u, v = u[None, :].expand(rows, cols).reshape(-1), v[:, None].expand(rows, cols).reshape(-1)  # (T,)
    fx, fy = intrinsics[..., 0, 0, None], intrinsics[..., 1, 1, None]
    cx, cy = intrinsics[..., 0, 2, None], intrinsics[..., 1, 2, None]
    x, y = (u - cx) / fx, (v - cy) / fy  # (B, S, T): the ray at depth z = 1 in the camera frame
    ray = torch.stack([x, y, torch.ones_like(x)], -1)
    ego = ray @ cam2ego[..., :3, :3].transpose(-1, -2)
    return torch.atan2(ego[..., 1], ego[..., 0])


def cell_azimuths(x_bounds: list[float], y_bounds: list[float], cell: float) -> torch.Tensor:
    """(rows cols,) float rad: the ego-frame azimuth ``atan2(y, x)`` of each cell centre of a BEV grid (rows
    along x from ``x_min``, columns along y from ``y_min``, row-major; :mod:`toolkit.bev.grid`), cell side
    ``cell`` m: the bearing of each LiDAR token."""
    rows, cols = round((x_bounds[1] - x_bounds[0]) / cell), round((y_bounds[1] - y_bounds[0]) / cell)
    x = x_bounds[0] + (torch.arange(rows, dtype=torch.float64) + 0.5) * cell
    y = y_bounds[0] + (torch.arange(cols, dtype=torch.float64) + 0.5) * cell
    return torch.atan2(y[None, :].expand(rows, cols), x[:, None].expand(rows, cols)).reshape(-1).float()


class SelfBlock(nn.Module):
    """Pre-norm transformer block: x + SelfAttn(LN x), then + FFN(LN x)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ff = feed_forward(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        x = x + self.attn(y, y)
        return x + self.ff(x)


class CrossModalBlock(nn.Module):
    """Two-way cross-attention, pre-norm: a' = a + CA(LN a, LN b), b' = b + CA(LN b, LN a) (both from the
    block's inputs), then a feed-forward layer per stream. (B, Ta, D), (B, Tb, D) -> same shapes.

    ``azimuth_bias`` > 0: each head h adds ``beta_h cos(phi_q - phi_k)`` to its attention logits, phi the
    tokens' ego-frame azimuths (``cos_ab`` (B, Ta, Tb) = cos(phi_a - phi_b), from :class:`Fusion`), beta_h
    learnable from ``azimuth_bias`` (one per head and direction): attention starts on what lies in the same
    direction in the other modality, a relative-position bias as ALiBi's (Press et al., ICLR 2022) on the
    bearing. 0: no bias (beta a zero buffer, no parameters).

    ``gate``: Flamingo's tanh-gated cross-attention (Alayrac et al., NeurIPS 2022, "gated xattn"):
    a' = a + tanh(alpha_a) CA(LN a, LN b), likewise b, with learnable scalars alpha initialised to 0, so the
    block starts as :class:`PairwiseFeedForward` (the ablation, feed-forward only) and opens the attention
    only as far as the loss gains from it. Off: no alpha parameters (older checkpoints load unchanged)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, azimuth_bias: float = 0.0, gate: bool = False):
        super().__init__()
        self.gated = bool(gate)
        if self.gated:
            self.alpha = nn.Parameter(torch.zeros(2))
        else:
            self.register_buffer("alpha", torch.zeros(2), persistent=False)  # unused; TorchScript needs the name
        self.norm_a, self.norm_b = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.a_from_b, self.b_from_a = Attention(dim, heads), Attention(dim, heads)
        self.ff_a, self.ff_b = feed_forward(dim, mlp_ratio), feed_forward(dim, mlp_ratio)
        self.biased = azimuth_bias > 0
        beta = torch.full((2, heads), float(azimuth_bias))
        if self.biased:
            self.beta = nn.Parameter(beta)
        else:
            self.register_buffer("beta", beta, persistent=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor, cos_ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        na, nb = self.norm_a(a), self.norm_b(b)
        bias_ab: torch.Tensor | None = None
        bias_ba: torch.Tensor | None = None
        if self.biased:
            c = cos_ab.to(a.dtype)[:, None]  # (B, 1, Ta, Tb)
            bias_ab = self.beta[0].view(1, -1, 1, 1) * c
            bias_ba = self.beta[1].view(1, -1, 1, 1) * c.transpose(-1, -2)
        if self.gated:
            g = torch.tanh(self.alpha).to(a.dtype)
            a, b = a + g[0] * self.a_from_b(na, nb, bias_ab), b + g[1] * self.b_from_a(nb, na, bias_ba)
        else:
            a, b = a + self.a_from_b(na, nb, bias_ab), b + self.b_from_a(nb, na, bias_ba)
        return a + self.ff_a(a), b + self.ff_b(b)


class PairwiseFeedForward(nn.Module):
    """The ablation of :class:`CrossModalBlock` without cross-attention: a feed-forward layer per stream."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, azimuth_bias: float = 0.0,  # noqa: ARG002
                 gate: bool = False):  # noqa: ARG002
        super().__init__()
        self.ff_a, self.ff_b = feed_forward(dim, mlp_ratio), feed_forward(dim, mlp_ratio)

    def forward(self, a: torch.Tensor, b: torch.Tensor, cos_ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + self.ff_a(a), b + self.ff_b(b)


class ImageEncoder(nn.Module):
    """Patch tokenizer (Conv2d patch embedding, :mod:`.patches`, + LayerNorm + positional embedding) and
    self-attention blocks, one camera image at a time: (N, 3, H, W) float [0, 1] -> (N, T, D),
    T = (H / patch) (W / patch), row-major."""

    def __init__(self, image_size: tuple[int, int], patch: int, dim: int, depth: int, heads: int, mlp_ratio: float,
                 stem: str = "conv"):
        super().__init__()
        H, W = image_size
        if H % patch or W % patch:
            raise ValueError(f"image size {H} x {W} must be a multiple of the patch size {patch}")
        self.patch = patch_embedding(3, dim, patch, stem)
        self.token_norm = nn.LayerNorm(dim)
        self.rows, self.cols, self.patch_size = H // patch, W // patch, patch
        self.tokens = self.rows * self.cols
        self.pos = nn.Parameter(torch.randn(1, self.tokens, dim) * 0.02)
        self.blocks = nn.ModuleList([SelfBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.token_norm(self.patch(images - 0.5).flatten(2).transpose(1, 2)) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class LidarEncoder(nn.Module):
    """PointPillars tokens (:class:`~.pillars.PillarTokenizer`) and self-attention blocks:
    (points (B, N, F >= 4), mask (B, N)) -> (B, L, D)."""

    def __init__(self, tokenizer: PillarTokenizer, dim: int, depth: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.tokenizer = tokenizer
        self.blocks = nn.ModuleList([SelfBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.tokenizer(points, mask)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class GridCells(nn.Module):
    """Parameter-free: S token grids (B, S, T = h w, D) -> (B, S D gh gw), each grid average-pooled to (gh, gw)
    cells (``adaptive_avg_pool2d``) and flattened slot by slot."""

    def __init__(self, grid: tuple[int, int], out_grid: tuple[int, int]):
        super().__init__()
        self.h, self.w = int(grid[0]), int(grid[1])
        self.gh, self.gw = int(out_grid[0]), int(out_grid[1])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, S, D = tokens.shape[0], tokens.shape[1], tokens.shape[3]
        x = tokens.reshape(B * S, self.h, self.w, D).permute(0, 3, 1, 2)
        return F.adaptive_avg_pool2d(x, [self.gh, self.gw]).reshape(B, S * D * self.gh * self.gw)


class TokenPool(nn.Module):
    """The pre-fusion embedding of a set of token grids: (B, S, T, D) -> (B, E), L2-normalised.

    ``mean``: the mean over all S T tokens, ``Linear(D, E)`` (the seed's pooling; one slot's embedding lies in
    the same space). ``grid``: each slot's (h, w) token grid average-pooled to ``out_grid`` cells, every
    slot's cells concatenated, ``Linear(S gh gw D, E)``: the embedding keeps a coarse layout (what is where in
    which camera, or where around the ego), as a CNN embedder that flattens its last feature map does.

    Args:
        grid: (h, w) of each slot's tokens (T = h w, row-major); out_grid: (gh, gw); slots: S; mode: see above.
    """

    MODES = ("mean", "grid")

    def __init__(self, grid: tuple[int, int], out_grid: tuple[int, int], slots: int, dim: int, embed_dim: int,
                 mode: str = "grid"):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"pool must be one of {list(self.MODES)}, got {mode!r}")
        self.cells = GridCells(grid, out_grid)
        self.slots, self.mean = slots, mode == "mean"
        self.proj = nn.Linear(dim if self.mean else slots * int(out_grid[0]) * int(out_grid[1]) * dim, embed_dim,
                              bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.mean((1, 2)) if self.mean else self.cells(tokens)
        return F.normalize(self.proj(x), dim=-1)

    def single(self, tokens: torch.Tensor, slot: int) -> torch.Tensor:
        """One slot's contribution alone: (N, T, D) -> (N, E), L2-normalised (``grid``: that slot's block of
        the projection; ``mean``: the shared projection)."""
        if self.mean:
            return F.normalize(self.proj(tokens.mean(1)), dim=-1)
        w = self.proj.weight.view(self.proj.weight.shape[0], self.slots, -1)[:, slot]
        return F.normalize(F.linear(self.cells(tokens[:, None]), w), dim=-1)


class Fusion(nn.Module):
    """Camera embedding, cross-modal blocks and the fused embedding head (see the module docstring).

    Args:
        cameras: S; dim: D; depth: number of blocks; fused_dim: E_f; cross_attention: False = the ablation.
        image_cells, lidar_cells: how the head pools the fused tokens (:class:`GridCells`: the same coarse
            layout as the ``grid`` pre-fusion pooling); None = the mean of each stream's tokens (the seed's).
        azimuth_frequencies: F > 0 adds ``Linear(fourier_azimuth(azimuth, F))`` (one layer for both
            streams) to the image and LiDAR tokens before the blocks; 0 = no direction embedding.
        lidar_azimuth: (L,) rad, each LiDAR token's bearing (:func:`cell_azimuths`); needed when F > 0 or
            ``azimuth_bias`` > 0.
        azimuth_bias: the cross-attention direction bias's initial beta (:class:`CrossModalBlock`; 0 = none).
        gate: tanh-gated cross-attention starting closed (:class:`CrossModalBlock`; Flamingo).
    """

    def __init__(self, cameras: int, dim: int, depth: int, heads: int, mlp_ratio: float, fused_dim: int,
                 cross_attention: bool = True, image_cells: GridCells | None = None,
                 lidar_cells: GridCells | None = None, azimuth_frequencies: int = 0,
                 lidar_azimuth: torch.Tensor | None = None, azimuth_bias: float = 0.0, gate: bool = False):
        super().__init__()
        self.camera = nn.Parameter(torch.randn(1, cameras, 1, dim) * 0.02)
        if (azimuth_frequencies > 0 or azimuth_bias > 0) and lidar_azimuth is None:
            raise ValueError("azimuth_frequencies or azimuth_bias > 0 needs the LiDAR tokens' azimuths (lidar_azimuth)")
        self.direction_bias = bool(cross_attention and azimuth_bias > 0)
        self.frequencies = int(azimuth_frequencies)
        self.directional = self.direction_bias or self.frequencies > 0  # reads the image token azimuths
        # F = 0: no parameters (checkpoints of models without the embedding load unchanged)
        self.azimuth = nn.Linear(2 * self.frequencies, dim) if self.frequencies > 0 else nn.Identity()
        if isinstance(self.azimuth, nn.Linear):
            nn.init.normal_(self.azimuth.weight, std=0.02)
            nn.init.zeros_(self.azimuth.bias)
        self.register_buffer("lidar_azimuth", lidar_azimuth.float() if lidar_azimuth is not None else torch.zeros(1),
                             persistent=False)
        block = CrossModalBlock if cross_attention else PairwiseFeedForward
        self.blocks = nn.ModuleList([block(dim, heads, mlp_ratio, azimuth_bias, gate) for _ in range(depth)])
        self.grid = image_cells is not None and lidar_cells is not None
        self.image_cells = image_cells if image_cells is not None else GridCells((1, 1), (1, 1))
        self.lidar_cells = lidar_cells if lidar_cells is not None else GridCells((1, 1), (1, 1))
        width = (cameras * self.image_cells.gh * self.image_cells.gw + self.lidar_cells.gh * self.lidar_cells.gw) * dim \
            if self.grid else 2 * dim
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, fused_dim), nn.GELU(),
                                  nn.Linear(fused_dim, fused_dim))

    def forward(self, image_tokens: torch.Tensor, lidar_tokens: torch.Tensor, image_azimuth: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, S, T, D), (B, L, D), image token azimuths (B, S, T) rad (:func:`token_azimuths`; unused when
        ``azimuth_frequencies`` = 0) -> (image tokens (B, S T, D), LiDAR tokens (B, L, D), fused (B, E_f))."""
        a = image_tokens + self.camera[:, : image_tokens.shape[1]]
        b = lidar_tokens
        if self.frequencies > 0:
            a = a + self.azimuth(fourier_azimuth(image_azimuth.to(a.dtype), self.frequencies))
            b = b + self.azimuth(fourier_azimuth(self.lidar_azimuth.to(b.dtype), self.frequencies))
        a = a.flatten(1, 2)
        cos_ab = a.new_zeros(1, 1, 1)
        if self.direction_bias:  # (B, S T, L): cos of each image-LiDAR token pair's azimuth difference
            cos_ab = torch.cos(image_azimuth.flatten(1, 2)[:, :, None] - self.lidar_azimuth.to(a.dtype)[None, None, :])
        for block in self.blocks:
            a, b = block(a, b, cos_ab)
        if self.grid:
            pooled = torch.cat([self.image_cells(a.view(image_tokens.shape)), self.lidar_cells(b[:, None])], 1)
        else:
            pooled = torch.cat([a.mean(1), b.mean(1)], 1)
        return a, b, self.head(pooled)


class MatchHead(nn.Module):
    """ALBEF-style image-LiDAR matching head on the tokens of one jointly fused pair.

    Inputs: ``u``, ``v`` (P, E) the pre-fusion poolings (:class:`TokenPool`, shared with the contrastive
    embeddings) of the pair's image and LiDAR tokens *after* the cross-modal blocks, L2-normalised, and
    ``fused`` (P, E_f) the fused embedding. Logit (P,) = ``scale`` u.v + ``bias`` + MLP([u * v, |u - v|,
    fused]). ``scale``/``bias`` start at 10 / -5 and the MLP's last layer at zero, so at initialisation the
    head ranks candidates as the (post-fusion) cosine does and BCE trains it from there; without this
    multiplicative path the head sat at the constant "no match" answer (BCE H(1/3) = 0.6365) for 250 of 400
    steps. The same head serves the ablation without cross-attention (then an MLP on the product and
    difference of the two streams' own embeddings: a fair late-fusion re-ranker).

    ``token_dim`` > 0 adds a token-level term: ``mean_t MLP_a(a_t) + mean_l MLP_b(b_l)`` over the pair's
    post-fusion image tokens ``a`` (P, Ta, D) and LiDAR tokens ``b`` (P, L, D) (a two-layer MLP per stream,
    last layer zero, so the head still starts as the cosine). Each token scores the agreement of its own
    content with what it read from the other modality, before any pooling, so local evidence (this image
    patch and the scan in its direction) is not averaged away first; without cross-attention a token holds
    one modality only and the term cannot tell a pair from a non-pair.
    """

    def __init__(self, embed_dim: int, fused_dim: int, hidden: int, token_dim: int = 0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.bias = nn.Parameter(torch.tensor(-5.0))
        self.mlp = nn.Sequential(nn.LayerNorm(2 * embed_dim + fused_dim), nn.Linear(2 * embed_dim + fused_dim, hidden),
                                 nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[3].weight)
        nn.init.zeros_(self.mlp[3].bias)
        self.tokens = token_dim > 0
        self.token_a = token_score(token_dim) if self.tokens else nn.Identity()
        self.token_b = token_score(token_dim) if self.tokens else nn.Identity()

    def forward(self, u: torch.Tensor, v: torch.Tensor, fused: torch.Tensor, a: torch.Tensor | None = None,
                b: torch.Tensor | None = None) -> torch.Tensor:
        """(P, E), (P, E), (P, E_f) [, (P, Ta, D), (P, L, D) with ``token_dim`` > 0] -> (P,) logits."""
        x = torch.cat([u * v, (u - v).abs(), fused], 1)
        logit = self.scale * (u * v).sum(1) + self.bias + self.mlp(x).squeeze(1)
        if self.tokens:
            if a is None or b is None:
                raise ValueError("a token-level MatchHead needs the pair's post-fusion tokens a and b")
            logit = logit + self.token_a(a).mean((1, 2)) + self.token_b(b).mean((1, 2))
        return logit


def token_score(dim: int) -> nn.Sequential:
    """A per-token scorer (..., D) -> (..., 1): LayerNorm, Linear(D, D), GELU, Linear(D, 1) (last layer zero)."""
    mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))
    nn.init.zeros_(mlp[3].weight)
    nn.init.zeros_(mlp[3].bias)
    return mlp


class TokenFusionNet(nn.Module):
    """The trained model: encoders, contrastive projections (pre-fusion), fusion, matching head.

    ``forward(images (B, S, 3, H, W) [0, 1], intrinsics (B, S, 3, 3) px, cam2ego (B, S, 4, 4), points (B, N, F),
    mask (B, N))`` returns a dict: ``img``, ``lid`` (B, E) L2-normalised pre-fusion embeddings (they do not use
    the calibration), ``scale`` the exponentiated logit scale, ``img_tokens`` (B, S, T, D) and ``lid_tokens``
    (B, L, D) the encoders' tokens, ``img_azimuth`` (B, S, T) rad the image tokens' ray azimuths (zeros
    when the fusion has no direction option: unused), and
    per ``loss``: ``pre_fusion+fused`` adds ``match_logits`` ((2k + 1) B,) of the matching head (:class:`MatchHead`:
    each pair fused jointly, then the head on the pre-fusion poolings of its post-fusion tokens and on the
    fused embedding) on the positive pairs, k = ``match_negatives`` hard-negative LiDAR scans per image and k
    hard-negative images per scan (ALBEF: negatives drawn from the batch with probability
    softmax(similarity / ``match_temperature``), the partner excluded; in eval mode the k most similar
    non-partners; k is capped at B - 1), and ``match_labels`` ((2k + 1) B,) 1/0; ``fused_only`` adds ``img_fused``, ``lid_fused`` (B, E):
    the same poolings (:class:`TokenPool`) of the tokens *after* the cross-modal blocks (the seed's objective:
    each side has seen its partner, so InfoNCE on them is solved without aligning the modalities).
    """

    LOSSES = ("pre_fusion", "pre_fusion+fused", "fused_only")

    def __init__(self, image: ImageEncoder, lidar: LidarEncoder, fusion: Fusion, img_pool: TokenPool,
                 lid_pool: TokenPool, fused_dim: int, init_logit_scale: float, loss: str, match_tokens: bool = False,
                 match_negatives: int = 1, match_temperature: float = 0.1):
        super().__init__()
        if loss not in self.LOSSES:
            raise ValueError(f"loss must be one of {list(self.LOSSES)}, got {loss!r}")
        self.image, self.lidar, self.fusion = image, lidar, fusion
        self.img_pool, self.lid_pool = img_pool, lid_pool
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.match_head = MatchHead(img_pool.proj.out_features, fused_dim, fused_dim,
                                    image.pos.shape[-1] if match_tokens else 0)
        self.loss = loss
        self.match_negatives, self.match_temperature = int(match_negatives), float(match_temperature)
        # parts the chosen loss never reaches are frozen: no gradient, no optimizer state, no DDP bucket
        unused = {"pre_fusion": (self.fusion, self.match_head), "pre_fusion+fused": (),
                  "fused_only": (self.fusion.head, self.match_head)}[loss]
        for part in unused:
            part.requires_grad_(False)

    def image_azimuth(self, intrinsics: torch.Tensor, cam2ego: torch.Tensor) -> torch.Tensor:
        """(B, S, 3, 3), (B, S, 4, 4) -> (B, S, T) rad (:func:`token_azimuths` on this model's token grid)."""
        return token_azimuths(intrinsics, cam2ego, self.image.rows, self.image.cols, self.image.patch_size)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, S, 3, H, W) -> (B, S, T, D)."""
        B, S = images.shape[:2]
        tokens = self.image(images.flatten(0, 1))
        return tokens.view(B, S, tokens.shape[1], tokens.shape[2])

    def match_logits(self, image_tokens: torch.Tensor, lidar_tokens: torch.Tensor, image_azimuth: torch.Tensor
                     ) -> torch.Tensor:
        """Matching-head logit of each (image tokens (P, S, T, D), LiDAR tokens (P, L, D), image token
        azimuths (P, S, T)) pair -> (P,): the pair is fused jointly (cross-attention between exactly these
        two), then :class:`MatchHead`."""
        a, b, fused = self.fusion(image_tokens, lidar_tokens, image_azimuth)
        u, v = self.img_pool(a.view(image_tokens.shape)), self.lid_pool(b[:, None])
        return self.match_head(u, v, fused, a, b)

    def fused_pair_scores(self, image_tokens: torch.Tensor, lidar_tokens: torch.Tensor, image_azimuth: torch.Tensor
                          ) -> torch.Tensor:
        """The pair score each loss trains: matching logit, or for ``fused_only`` the cosine of the post-fusion
        projections (P,); ``pre_fusion`` trains none (its fusion is untouched) and gets zeros."""
        if self.loss == "fused_only":
            img, lid = self.post_fusion(image_tokens, lidar_tokens, image_azimuth)
            return (img * lid).sum(1)
        if self.loss == "pre_fusion+fused":
            return self.match_logits(image_tokens, lidar_tokens, image_azimuth)
        return image_tokens.new_zeros(image_tokens.shape[0])

    def post_fusion(self, image_tokens: torch.Tensor, lidar_tokens: torch.Tensor, image_azimuth: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pre-fusion poolings applied to the tokens *after* the cross-modal blocks: (B, E), (B, E)."""
        a, b, _ = self.fusion(image_tokens, lidar_tokens, image_azimuth)
        return self.img_pool(a.view(image_tokens.shape)), self.lid_pool(b[:, None])

    def forward(self, images: torch.Tensor, intrinsics: torch.Tensor, cam2ego: torch.Tensor, points: torch.Tensor,
                mask: torch.Tensor) -> dict[str, torch.Tensor]:
        it, lt = self.image_tokens(images), self.lidar(points, mask)
        az = self.image_azimuth(intrinsics, cam2ego) if self.fusion.directional else it.new_zeros(it.shape[:3])
        out = {"img": self.img_pool(it), "lid": self.lid_pool(lt[:, None]), "scale": self.logit_scale.exp(),
               "img_tokens": it, "lid_tokens": lt, "img_azimuth": az}
        if self.loss == "fused_only":
            out["img_fused"], out["lid_fused"] = self.post_fusion(it, lt, az)
        elif self.loss == "pre_fusion+fused":
            B = it.shape[0]
            if B > 1:
                k = min(self.match_negatives, B - 1)
                neg_lid, neg_img = hard_negatives(out["img"].detach(), out["lid"].detach(), sample=self.training,
                                                  temperature=self.match_temperature, count=k)
                neg_lid, neg_img = neg_lid.T.flatten(), neg_img.T.flatten()  # (k B,): negative j of every row
                it, az = torch.cat([it.repeat(k + 1, 1, 1, 1), it[neg_img]]), torch.cat([az.repeat(k + 1, 1, 1), az[neg_img]])
                lt = torch.cat([lt, lt[neg_lid], lt.repeat(k, 1, 1)])
            out["match_logits"] = self.match_logits(it, lt, az)
            out["match_labels"] = (torch.arange(len(it), device=it.device) < B).float()
        return out


def hard_negatives(img: torch.Tensor, lid: torch.Tensor, sample: bool = True, temperature: float = 0.1,
                   count: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """ALBEF's in-batch hard negatives: for each image ``count`` LiDAR scans and for each scan ``count`` images,
    never its partner, without repeats.

    Args:
        img, lid: (B, E) L2-normalised embeddings, row i a pair; B > ``count``.
        sample: draw with probability softmax(cosine / ``temperature``) over the non-partners (training; uses
            the global torch RNG; ALBEF's temperature is its contrastive one, here 0.1 by default: large
            values draw nearly uniformly from the batch); False: the ``count`` most similar non-partners
            (deterministic evaluation).
        count: negatives per row (>= 1).

    Returns:
        ((B, count) int64 LiDAR indices per image, (B, count) int64 image indices per scan).

    Raises:
        ValueError: ``count`` < 1 or >= B, or ``temperature`` <= 0.
    """
    B = len(img)
    if not 1 <= count < B:
        raise ValueError(f"hard_negatives: count must be in [1, batch size - 1 = {B - 1}], got {count}")
    if temperature <= 0:
        raise ValueError(f"hard_negatives: temperature must be > 0, got {temperature}")
    sim = img.float() @ lid.float().T
    eye = torch.eye(B, dtype=torch.bool, device=sim.device)
    sim = sim.masked_fill(eye, float("-inf"))
    if not sample:
        return sim.topk(count, 1).indices, sim.T.topk(count, 1).indices
    return (torch.multinomial(torch.softmax(sim / temperature, 1), count),
            torch.multinomial(torch.softmax(sim.T / temperature, 1), count))


class ImageEmbedding(nn.Module):
    """Export ``img_enc``: one camera image at a time, (N, 3, H, W) float [0, 1] -> (N, E) L2-normalised: the
    image's pre-fusion embedding as camera ``slot`` (:meth:`TokenPool.single`; with ``mean`` pooling the same
    for every slot)."""

    def __init__(self, image: ImageEncoder, pool: TokenPool, slot: int):
        super().__init__()
        self.image, self.pool, self.slot = image, pool, slot

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool.single(self.image(images), self.slot)


class LidarEmbedding(nn.Module):
    """Export ``lidar_enc``: (points (B, N, F >= 4) ego m, mask (B, N) bool or float) -> (B, E) L2-normalised."""

    def __init__(self, lidar: LidarEncoder, pool: TokenPool):
        super().__init__()
        self.lidar, self.pool = lidar, pool

    def forward(self, points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pool(self.lidar(points, mask)[:, None])


class FusedEmbedding(nn.Module):
    """Export ``fused``: (images (B, S, 3, H, W) [0, 1], intrinsics (B, S, 3, 3) px of those images, cam2ego
    (B, S, 4, 4), points (B, N, F), mask (B, N)) -> (B, E_f), the fused embedding of each sample's cameras
    and scan (not normalised)."""

    def __init__(self, image: ImageEncoder, lidar: LidarEncoder, fusion: Fusion):
        super().__init__()
        self.image, self.lidar, self.fusion = image, lidar, fusion

    def forward(self, images: torch.Tensor, intrinsics: torch.Tensor, cam2ego: torch.Tensor, points: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        B, S = images.shape[0], images.shape[1]
        tokens = self.image(images.flatten(0, 1))
        tokens = tokens.view(B, S, tokens.shape[1], tokens.shape[2])
        azimuth = token_azimuths(intrinsics, cam2ego, self.image.rows, self.image.cols, self.image.patch_size)
        return self.fusion(tokens, self.lidar(points, mask), azimuth)[2]
