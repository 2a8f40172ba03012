"""PointPillars LiDAR tokens: points -> pillars -> 9 features per point -> PFN -> BEV pseudo-image -> patch tokens.

PointPillars (Lang et al., "PointPillars: Fast Encoders for Object Detection from Point Clouds", CVPR 2019,
arXiv 1812.05784; ``shared/notes/cilp-fusion-embedding.md`` section 2): the x-y plane is cut into a grid of
pillars (no z binning). Each point of a pillar is augmented to D = 9 features

    x, y, z, intensity, x - x_c, y - y_c, z - z_c, x - x_p, y - y_p

with ``(x_c, y_c, z_c)`` the mean of the pillar's (kept) points and ``(x_p, y_p)`` the pillar's centre, all
in metres in the keyframe ego frame (intensity as stored, nuScenes 0-255). A Pillar Feature Net
(Linear -> BatchNorm -> ReLU to ``C`` channels) runs on every point and the max over a pillar's points is its
feature; features are scattered to a ``(C, rows, cols)`` pseudo-image, zeros where there is no pillar.

Caps, as PointPillars' dense (D, P, N) tensor: at most ``max_points_per_pillar`` points per pillar (N; the
first ones in the input order, which the decode has already subsampled at random) and ``max_pillars``
pillars per sample (P; here the densest ones, ties by cell index, instead of PointPillars' random choice, so
evaluation is deterministic and no direction is dropped preferentially). Everything is vectorised index
arithmetic (``sort``, ``index_add_``, ``scatter_reduce``): no Python loop over points or
pillars; the batch is one flat set of points with per-sample pillar ids. BatchNorm statistics are over
the real (kept) points only, not over zero padding. TorchScript-compatible.

Grid convention (:mod:`toolkit.bev.grid`): rows along ego x (row 0 at ``x_min``), columns along ego y
(column 0 at ``y_min``); cell ``(i, j)`` covers ``[x_min + i r, x_min + (i + 1) r) x [y_min + j r, ...)``,
centre ``(x_min + (i + 0.5) r, y_min + (j + 0.5) r)``. Points outside the x, y or z bounds are dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .patches import patch_embedding

#: the per-point features, in order (PointPillars' D = 9).
PILLAR_FEATURES = ("x", "y", "z", "intensity", "dx_mean", "dy_mean", "dz_mean", "dx_centre", "dy_centre")


def _counts(pillar: torch.Tensor, total: int) -> torch.Tensor:
    """(total,) int64 points per pillar id (integer ``index_add_``: exact on every backend)."""
    return torch.zeros(total, dtype=torch.int64, device=pillar.device).index_add_(0, pillar, torch.ones_like(pillar))


def pillar_assign(points: torch.Tensor, mask: torch.Tensor, bounds: list[float], resolution: float, rows: int,
                  cols: int, max_points_per_pillar: int, max_pillars: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which points are kept and the pillar of each.

    Args:
        points: (B, N, F >= 3) float, ego frame, m (columns x, y, z, ...).
        mask: (B, N) real points (bool, or float > 0.5).
        bounds: ``[x_min, x_max, y_min, y_max, z_min, z_max]``, m.
        resolution: pillar side, m; rows, cols: the grid (cells along x, along y).
        max_points_per_pillar, max_pillars: the caps (see the module docstring).

    Returns:
        ``(index, pillar)``: (M,) int64 flat indices into ``points.reshape(B * N, F)`` of the kept points and
        (M,) int64 their pillar ids ``b * rows * cols + row * cols + col``.
    """
    B, N = points.shape[0], points.shape[1]
    cells = rows * cols
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    inside = ((mask > 0.5) if mask.dtype != torch.bool else mask) & (x >= bounds[0]) & (x < bounds[1]) \
        & (y >= bounds[2]) & (y < bounds[3]) & (z >= bounds[4]) & (z < bounds[5])
    row = torch.floor((x - bounds[0]) / resolution).long().clamp(0, rows - 1)
    col = torch.floor((y - bounds[2]) / resolution).long().clamp(0, cols - 1)
    batch = torch.arange(B, device=points.device).view(B, 1).expand(B, N)
    index = inside.reshape(-1).nonzero().squeeze(1)
    pillar = (batch * cells + row * cols + col).reshape(-1)[index]
    total = B * cells
    # at most max_points_per_pillar points per pillar: each point's rank among its pillar's points, in input order
    order = torch.sort(pillar, stable=True).indices
    counts = _counts(pillar, total)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(pillar)
    rank[order] = torch.arange(len(pillar), device=points.device) - start[pillar[order]]
    keep = rank < max_points_per_pillar
    index, pillar = index[keep], pillar[keep]
    # at most max_pillars pillars per sample: the densest ones (stable sort: ties by cell index)
    counts = _counts(pillar, total).view(B, cells)
    by_count = torch.sort(counts, dim=1, descending=True, stable=True).indices
    place = torch.empty_like(by_count)
    place.scatter_(1, by_count, torch.arange(cells, device=points.device).view(1, cells).expand(B, cells))
    ok = ((counts > 0) & (place < max_pillars)).reshape(-1)[pillar]
    return index[ok], pillar[ok]


def pillar_point_features(points: torch.Tensor, pillar: torch.Tensor, bounds: list[float], resolution: float,
                          rows: int, cols: int, total: int) -> torch.Tensor:
    """The 9 PointPillars features (:data:`PILLAR_FEATURES`) of each kept point.

    Args:
        points: (M, F >= 4) float kept points (x, y, z, intensity, ...), m.
        pillar: (M,) int64 their pillar ids (:func:`pillar_assign`); total: the number of pillar ids (B rows cols).

    Returns:
        (M, 9) float: x, y, z, intensity, offsets to the pillar's point mean (3), offsets to its centre (2).
    """
    xyz = points[:, :3]
    counts = _counts(pillar, total).clamp(min=1).to(points.dtype)
    mean = torch.zeros(total, 3, dtype=points.dtype, device=points.device).index_add_(0, pillar, xyz)
    mean = mean / counts[:, None]
    local = pillar % (rows * cols)
    centre_x = bounds[0] + ((local // cols).to(points.dtype) + 0.5) * resolution
    centre_y = bounds[2] + ((local % cols).to(points.dtype) + 0.5) * resolution
    centre = torch.stack([centre_x, centre_y], 1)
    return torch.cat([points[:, :4], xyz - mean[pillar], xyz[:, :2] - centre], 1)


class PillarTokenizer(nn.Module):
    """LiDAR points -> PointPillars pseudo-image -> patch tokens (see the module docstring).

    Args:
        x_bounds, y_bounds, z_bounds: the grid's extent in the ego frame, m; resolution: pillar side, m.
        max_points_per_pillar, max_pillars: the caps (PointPillars N and P).
        channels: PFN width C (PointPillars 64).
        patch: pseudo-image cells per token side; stem: its patch embedding (:mod:`.patches`: ``conv``, a few
            stride-2 convolutions in the role of PointPillars' 2-D backbone, or ``linear``, one convolution with
            kernel = stride = ``patch``).
        dim: token width.

    Input ``points`` (B, N, F >= 4) float (x, y, z, intensity, ...; ego frame, m) and ``mask`` (B, N) (real
    points; bool or float > 0.5). Output (B, T, dim) tokens, T = (rows / patch) (cols / patch), row-major
    over the grid, each LayerNorm-ed plus a learned positional embedding.
    """

    def __init__(self, x_bounds: list[float], y_bounds: list[float], z_bounds: list[float], resolution: float,
                 max_points_per_pillar: int, max_pillars: int, channels: int, patch: int, dim: int,
                 stem: str = "conv"):
        super().__init__()
        self.bounds = [float(v) for v in (*x_bounds, *y_bounds, *z_bounds)]
        self.resolution = float(resolution)
        self.rows = round((x_bounds[1] - x_bounds[0]) / resolution)
        self.cols = round((y_bounds[1] - y_bounds[0]) / resolution)
        if self.rows % patch or self.cols % patch:
            raise ValueError(f"the pillar grid ({self.rows} x {self.cols}) must be a multiple of patch {patch}")
        self.max_points_per_pillar, self.max_pillars, self.channels = max_points_per_pillar, max_pillars, channels
        self.linear = nn.Linear(len(PILLAR_FEATURES), channels, bias=False)
        self.norm = nn.BatchNorm1d(channels)
        self.patch = patch_embedding(channels, dim, patch, stem)
        self.token_norm = nn.LayerNorm(dim)
        self.tokens = (self.rows // patch) * (self.cols // patch)
        self.pos = nn.Parameter(torch.randn(1, self.tokens, dim) * 0.02)

    def pseudo_image(self, points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C, rows, cols) float: the max-pooled PFN feature of each pillar, 0 where there is none."""
        B, N, F_ = points.shape[0], points.shape[1], points.shape[2]
        total = B * self.rows * self.cols
        index, pillar = pillar_assign(points, mask, self.bounds, self.resolution, self.rows, self.cols,
                                      self.max_points_per_pillar, self.max_pillars)
        kept = points.reshape(B * N, F_)[index]
        feats = pillar_point_features(kept, pillar, self.bounds, self.resolution, self.rows, self.cols, total)
        h = self.linear(feats)
        if h.shape[0] > 1 or not self.training:  # BatchNorm cannot train on a single point
            h = self.norm(h)
        h = F.relu(h)
        canvas = torch.zeros(total, self.channels, dtype=h.dtype, device=h.device)
        canvas = canvas.scatter_reduce(0, pillar[:, None].expand(-1, self.channels), h, reduce="amax",
                                       include_self=True)  # ReLU >= 0: the zero init never wins over a point
        return canvas.view(B, self.rows, self.cols, self.channels).permute(0, 3, 1, 2)

    def forward(self, points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.patch(self.pseudo_image(points, mask)).flatten(2).transpose(1, 2)
        return self.token_norm(x) + self.pos
