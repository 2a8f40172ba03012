"""Task ``token_fusion``: image patch tokens + LiDAR pillar tokens, cross-attention fusion, contrastive alignment.

Data: multi-sensor shards (``python -m shards nuscenes``, :mod:`toolkit.data.multisensor`), decoded by
:class:`~toolkit.data.multisensor.MultiSensorDecoder` with ``task.sample`` (six images resized, optional
Simple-BEV jitter; up to ``sample.max_points`` LiDAR points; no BEV targets).

Model (:mod:`.model`, :mod:`.pillars`, :mod:`.patches`): per-camera ViT-style image encoder, PointPillars LiDAR
tokens and encoder (conv-stem patch embeddings by default, ``task.stem``), pre-fusion embeddings of coarse
token grids (``task.pool: grid``; ``mean`` = the seed's mean pooling), two-way cross-attention blocks
(``task.cross_attention: false`` = feed-forward only, the ablation), direction-aware (tokens'
ego-frame azimuths: image tokens' camera rays from the intrinsics and camera -> ego transforms, LiDAR tokens'
cell bearings; ``task.azimuth_frequencies``: a shared azimuth embedding of both streams, ``task.azimuth_bias``:
a cross-attention bias towards the same bearing), a fused embedding head and a matching head. Training
augmentation: the Simple-BEV image jitter (``sample.augment``), a whole-sample left-right
mirror (``task.mirror``) and a per-sample colour jitter (``task.colour_jitter``). A small
``data.shuffle_buffer`` keeps runs of keyframes of the same scenes in a batch: the contrastive negatives are
then mostly keyframes of the same street, which only geometry tells apart.

Loss (``task.loss``):

* ``pre_fusion``: symmetric InfoNCE (CLIP; :func:`toolkit.tasks.cilp.loss.clip_loss`: gathered over ranks
  with gradients, local loss, learnable temperature clamped to ln 100) between the pooled, projected image
  tokens (six cameras) and LiDAR tokens *before* fusion (``train/contrastive``);
* ``pre_fusion+fused`` (default): plus ``match_weight`` x binary cross-entropy of the matching head
  (:class:`~.model.MatchHead`: the cosine of the pair's post-fusion poolings, scaled, plus an MLP on their
  product, difference and the fused embedding) on the true pairs and on in-batch hard negatives (ALBEF's
  image-text matching, ``train/match``; one negative scan per image and one negative image per scan, drawn
  with probability softmax(cosine / 0.1) over the non-partners of this rank's batch; ``match_negatives``,
  ``match_temperature``);
* ``fused_only``: the seed's objective, InfoNCE between the same projections of the tokens *after* fusion
  (``train/contrastive_fused``): each side has attended to its partner, so the loss falls towards 0 while the
  pre-fusion embeddings stay unaligned (logged: ``train/contrastive_pre_fusion``, never trained).

Metrics over the held-out set (gathered features, as :mod:`toolkit.tasks.cilp.contrastive`):
``i2l_recall@k``/``l2i_recall@k`` (k = 1, 5, 10) of the pre-fusion embeddings over all N pairs, ``chance@k``
= 100 k / N beside them; with ``rerank_k`` > 0 and a loss that trains a pair score, ``i2l_rerank_recall@k``/
``l2i_rerank_recall@k``: each query's ``rerank_k`` nearest candidates re-ordered by the fused pair score
(ALBEF's retrieval; matching logit, or for ``fused_only`` the post-fusion cosine). Also the validation
losses, within-batch top-1 (``retrieval_i2l``/``retrieval_l2i``) and the matching accuracy.

Re-ranking needs the model after the last batch: :meth:`TokenFusionTask.evaluate_batch` keeps a reference to
the module it was given and :meth:`~TokenFusionTask.metrics` runs its fusion on the gathered tokens (no
collective; every rank computes the same). Features then hold every sample's tokens: N (S T + L) D 4 bytes
(the tiny preset's 320 held-out samples: 320 x (396 + 64) x 64 x 4 B = 38 MB); set ``rerank_k: 0`` for large
validation sets.

Exports (TorchScript, one tensor each): ``img_enc`` (N, 3, H, W) float [0, 1] -> (N, E) L2-normalised, one
camera image at a time in the ``task.export_camera`` slot (what ``python -m toolkit.embed`` uses); ``lidar_enc`` (points (B, N, F), mask (B, N)) ->
(B, E); ``fused`` (images (B, S, 3, H, W), intrinsics (B, S, 3, 3), cam2ego (B, S, 4, 4), points, mask) -> (B, E_f).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.bev.grid import BEVGrid
from toolkit.data.multisensor import SHARD_KEYS, MultiSensorConfig, MultiSensorDecoder
from toolkit.datasets.nuscenes import CAMERAS
from toolkit.tasks.base import EvalOutput, StepOutput, Task
from toolkit.tasks.cilp.loss import clip_loss
from toolkit.tasks.common.retrieval import recall_at_k

from .model import (Fusion, FusedEmbedding, ImageEmbedding, ImageEncoder, LidarEmbedding, LidarEncoder,
                    GridCells, TokenFusionNet, TokenPool, cell_azimuths)
from .patches import STEMS
from .pillars import PillarTokenizer
from .rerank import rerank_recall

KS = (1, 5, 10)


def _tiny_sample() -> MultiSensorConfig:
    return MultiSensorConfig(image_height=96, image_width=176, augment=True, max_points=2048, targets=False)


@dataclass
class PillarConfig:
    """The PointPillars grid and caps (:mod:`.pillars`)."""

    #: pillar grid extent along ego x, m [min, max] (points outside are dropped)
    x_bounds: list[float] = field(default_factory=lambda: [-32.0, 32.0])
    #: pillar grid extent along ego y, m [min, max]
    y_bounds: list[float] = field(default_factory=lambda: [-32.0, 32.0])
    #: height interval kept, m [min, max] (keyframe ego frame)
    z_bounds: list[float] = field(default_factory=lambda: [-3.0, 5.0])
    #: pillar side, m (PointPillars KITTI 0.16, mmdet3d nuScenes 0.25); the extents must be multiples of it
    resolution: float = 1.0
    #: points kept per pillar N (PointPillars 100, mmdet3d nuScenes 64); >= 1
    max_points_per_pillar: int = 16
    #: non-empty pillars kept per sample P (PointPillars 12000); >= 1
    max_pillars: int = 4096
    #: PointPillars PFN width C (PointPillars 64); >= 1
    channels: int = 32
    #: pseudo-image cells per LiDAR token side; >= 1, a power of 2 with task.stem=conv, dividing the grid's rows and
    #: columns
    patch: int = 8

    def grid(self) -> BEVGrid:
        return BEVGrid(tuple(self.x_bounds), tuple(self.y_bounds), self.resolution, tuple(self.z_bounds), 1)


@dataclass
class TokenFusionConfig:
    """``task:`` section of a ``token_fusion`` run; the defaults are a CPU size.

    The preset ``configs/fusion_tokens/tiny.yaml`` differs from these defaults in ``cross_gate``,
    ``fusion_depth``, ``image_depth``, ``lidar_depth``, ``rerank_k`` (one block per stage, the gate on; checked
    by ``tests/test_config_reference.py``).
    """

    #: task name (selects this schema)
    name: str = "token_fusion"
    #: `pre_fusion`, `pre_fusion+fused` or `fused_only` (the module docstring of toolkit.tasks.token_fusion.task)
    loss: str = "pre_fusion+fused"
    #: two-way cross-attention in the fusion blocks (false: feed-forward only, the ablation)
    cross_attention: bool = True
    #: token width; >= 1, a multiple of task.heads
    dim: int = 64
    #: attention heads; >= 1
    heads: int = 4
    #: feed-forward width / dim
    mlp_ratio: float = 2.0
    #: image pixels per token side; >= 1, a power of 2 with task.stem=conv; divides the image height and width
    image_patch: int = 16
    #: patch embeddings of images and pillar pseudo-images: `conv` (stride-2 convolutions) or `linear` (one
    #: convolution per patch, the seed's)
    stem: str = "conv"
    #: transformer blocks of the per-camera image encoder; >= 0
    image_depth: int = 2
    #: transformer blocks of the LiDAR token encoder; >= 0
    lidar_depth: int = 2
    #: cross-modal fusion blocks; >= 0 (>= 1 with cross-attention and loss pre_fusion+fused)
    fusion_depth: int = 2
    #: contrastive (pre-fusion) embedding width E; >= 1
    embed_dim: int = 128
    #: fused embedding width E_f; >= 1
    fused_dim: int = 128
    #: pre-fusion pooling: `grid` (each camera's token grid pooled to image_pool_grid cells, the LiDAR grid to
    #: lidar_pool_grid, concatenated, projected) or `mean` (the mean of all tokens, projected)
    pool: str = "grid"
    #: pooling of the fused embedding and matching heads after the cross-modal blocks: `grid` (position-specific
    #: weights) or `mean` (each stream's token mean)
    fused_pool: str = "mean"
    #: [rows, cols] >= 1: cells each camera's token grid is pooled to (pool=grid)
    image_pool_grid: list[int] = field(default_factory=lambda: [2, 3])
    #: [rows, cols] >= 1: cells the LiDAR token grid is pooled to (pool=grid)
    lidar_pool_grid: list[int] = field(default_factory=lambda: [4, 4])
    #: the camera slot (a nuScenes camera name, CAM_FRONT...) of the single-image export img_enc
    export_camera: str = "CAM_FRONT"
    #: initial CLIP logit scale, ln(1/0.07) (CLIP)
    init_logit_scale: float = math.log(1 / 0.07)
    #: clamp of the learnable logit scale, ln 100 (CLIP)
    max_logit_scale: float = math.log(100.0)
    #: factor on the matching loss (loss pre_fusion+fused)
    match_weight: float = 1.0
    #: the matching head adds a token-level term: a score per post-fusion token, averaged (local agreement before
    #: pooling)
    match_tokens: bool = False
    #: hard-negative scans per image and images per scan in the matching loss (ALBEF: 1); >= 1
    match_negatives: int = 1
    #: sampling temperature T of the hard negatives, softmax(cosine / T) over the batch's non-partners (0.1: nearly
    #: always the nearest; large: nearly uniform); > 0
    match_temperature: float = 0.1
    #: candidates re-ranked by the fused pair score in validation (ALBEF retrieval); 0 = no re-ranking; >= 0
    rerank_k: int = 10
    #: F of the shared ego-frame azimuth embedding added to both streams' tokens before fusion (PETR-style, from image
    #: rays and LiDAR cell bearings); 0 = none; >= 0
    azimuth_frequencies: int = 8
    #: initial beta of the cross-attention direction bias beta_h cos(phi_q - phi_k), learnable per head; 0 = none; >=
    #: 0
    azimuth_bias: float = 0.0
    #: Flamingo's tanh gate on each cross-attention residual, initialised closed: the model starts as the ablation and
    #: opens the attention as far as the losses gain from it
    cross_gate: bool = False
    #: training augmentation: with probability 1/2 mirror the whole sample left-right (images flipped, left and right
    #: cameras swapped, LiDAR y negated)
    mirror: bool = True
    #: training colour augmentation of strength s (0 = off): one brightness, contrast and per-channel gain factor per
    #: sample, each from U(1 - s, 1 + s), applied to all six images alike
    colour_jitter: float = 0.3
    #: the PointPillars grid and caps of the LiDAR tokens
    pillars: PillarConfig = field(default_factory=PillarConfig)
    #: the multi-sensor decode: image size, jitter, points (targets is ignored: never computed)
    sample: MultiSensorConfig = field(default_factory=_tiny_sample)

    def validate(self) -> None:
        if self.loss not in TokenFusionNet.LOSSES:
            raise ValueError(f"task.loss must be one of {list(TokenFusionNet.LOSSES)}, got {self.loss!r}")
        for name in ("dim", "heads", "image_patch", "embed_dim", "fused_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"task.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("image_depth", "lidar_depth", "fusion_depth", "rerank_k", "azimuth_frequencies"):
            if getattr(self, name) < 0:
                raise ValueError(f"task.{name} must be >= 0, got {getattr(self, name)}")
        if self.match_negatives < 1:
            raise ValueError(f"task.match_negatives must be >= 1, got {self.match_negatives}")
        if self.match_temperature <= 0:
            raise ValueError(f"task.match_temperature must be > 0, got {self.match_temperature}")
        if self.azimuth_bias < 0:
            raise ValueError(f"task.azimuth_bias must be >= 0, got {self.azimuth_bias}")
        if self.fused_pool not in TokenPool.MODES:
            raise ValueError(f"task.fused_pool must be one of {list(TokenPool.MODES)}, got {self.fused_pool!r}")
        if self.pool not in TokenPool.MODES:
            raise ValueError(f"task.pool must be one of {list(TokenPool.MODES)}, got {self.pool!r}")
        if self.export_camera not in CAMERAS:
            raise ValueError(f"task.export_camera must be one of {list(CAMERAS)}, got {self.export_camera!r}")
        for name in ("image_pool_grid", "lidar_pool_grid"):
            if len(getattr(self, name)) != 2 or min(getattr(self, name)) < 1:
                raise ValueError(f"task.{name} must be [rows, cols] >= 1, got {getattr(self, name)}")
        if self.stem not in STEMS:
            raise ValueError(f"task.stem must be one of {list(STEMS)}, got {self.stem!r}")
        for name, patch in (("task.image_patch", self.image_patch), ("task.pillars.patch", self.pillars.patch)):
            if self.stem == "conv" and (patch < 2 or patch & (patch - 1)):
                raise ValueError(f"{name} must be a power of 2 >= 2 with task.stem=conv, got {patch}")
        if self.dim % self.heads:
            raise ValueError(f"task.dim ({self.dim}) must be a multiple of task.heads ({self.heads})")
        if self.loss == "pre_fusion+fused" and self.fusion_depth == 0 and self.cross_attention:
            raise ValueError("task.fusion_depth must be >= 1 for cross-attention")
        s = self.sample
        if not s.image_height or s.image_height % self.image_patch or s.image_width % self.image_patch:
            raise ValueError(f"task.sample.image_height/image_width ({s.image_height} x {s.image_width}) must be "
                             f"multiples of task.image_patch ({self.image_patch})")
        if s.max_points < 1:
            raise ValueError("task.sample.max_points must be > 0: the LiDAR tokens need points")
        try:
            s.validate()
        except ValueError as exc:
            raise ValueError(f"task.sample: {exc}") from exc
        p = self.pillars
        try:
            rows, cols = p.grid().shape
        except ValueError as exc:
            raise ValueError(f"task.pillars: {exc}") from exc
        for name in ("max_points_per_pillar", "max_pillars", "channels", "patch"):
            if getattr(p, name) < 1:
                raise ValueError(f"task.pillars.{name} must be >= 1, got {getattr(p, name)}")
        if rows % p.patch or cols % p.patch:
            raise ValueError(f"task.pillars grid is {rows} x {cols} cells; both must be multiples of "
                             f"task.pillars.patch ({p.patch})")


#: camera order after a left-right mirror (CAMERAS = FL, F, FR, BL, B, BR -> FR, F, FL, BR, B, BL)
MIRRORED_CAMERAS = [CAMERAS.index(c.replace("LEFT", "@").replace("RIGHT", "LEFT").replace("@", "RIGHT"))
                    for c in CAMERAS]


#: ego y -> -y and camera x -> -x (4 x 4): a mirrored camera's camera -> ego transform is M_EGO T M_CAM
_M_EGO, _M_CAM = np.diag([1.0, -1.0, 1.0, 1.0]).astype(np.float32), np.diag([-1.0, 1.0, 1.0, 1.0]).astype(np.float32)


def mirror_sample(example: dict) -> dict:
    """A decoded example mirrored left-right (ego y -> -y): images (S, 3, H, W) flipped along W and their
    cameras swapped left <-> right, points' ego y negated (padding rows stay zero), and, when present, the
    calibration to match: ``intrinsics`` (S, 3, 3) get c_x -> W - c_x, ``cam2ego`` (S, 4, 4) T -> M_ego T M_cam
    with M_ego = diag(1, -1, 1, 1), M_cam = diag(-1, 1, 1, 1) (u' = W - u in the flipped image; still a
    rotation, det +1), so every pixel's ray in the mirrored sample is the mirror of its original ray."""
    points = example["points"].copy()
    points[:, 1] *= -1
    out = {**example, "images": np.ascontiguousarray(example["images"][MIRRORED_CAMERAS, :, :, ::-1]),
           "points": points}
    if "intrinsics" in example:
        K = example["intrinsics"][MIRRORED_CAMERAS].copy()
        K[:, 0, 2] = example["images"].shape[-1] - K[:, 0, 2]
        out["intrinsics"] = K
    if "cam2ego" in example:
        out["cam2ego"] = (_M_EGO @ example["cam2ego"][MIRRORED_CAMERAS] @ _M_CAM).astype(np.float32)
    return out


def colour_jitter(images: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """(S, 3, H, W) uint8 -> the same with one brightness, contrast and RGB gain draw (U(1 - s, 1 + s) each)
    for all cameras of the sample; contrast about the sample's mean grey."""
    lo, hi = 1.0 - strength, 1.0 + strength
    x = images.astype(np.float32)
    mean = x.mean()
    x = (x - mean) * rng.uniform(lo, hi) + mean
    x = x * rng.uniform(lo, hi) * rng.uniform(lo, hi, size=(1, 3, 1, 1)).astype(np.float32)
    return np.clip(x, 0, 255).astype(np.uint8)


class TokenFusionTask(Task):
    """See module docstring."""

    name = "token_fusion"
    Config = TokenFusionConfig
    shard_keys = SHARD_KEYS
    report_columns = (("I->L R@1 (%)", "val/i2l_recall@1", ".2f"), ("I->L R@5 (%)", "val/i2l_recall@5", ".2f"),
                      ("L->I R@1 (%)", "val/l2i_recall@1", ".2f"),
                      ("I->L R@1 re-ranked (%)", "val/i2l_rerank_recall@1", ".2f"),
                      ("chance@1 (%)", "val/chance@1", ".3f"), ("held-out pairs", "val/retrieval_pairs", ".0f"))

    def __init__(self, cfg: TokenFusionConfig):
        super().__init__(cfg)
        sample = dataclasses.replace(cfg.sample, image_dtype="uint8", targets=False)
        self._train = MultiSensorDecoder(sample)
        self._eval = MultiSensorDecoder(dataclasses.replace(sample, augment=False))
        self._scorer: TokenFusionNet | None = None  # the module of the latest evaluate_batch (re-ranking)

    # --- model --------------------------------------------------------------------------------
    def blocks(self, model: TokenFusionNet) -> list[nn.Module]:
        """The image, LiDAR and cross-modal transformer blocks."""
        return [*model.image.blocks, *model.lidar.blocks, *model.fusion.blocks]

    def build_model(self) -> TokenFusionNet:
        c, p = self.cfg, self.cfg.pillars
        image = ImageEncoder((c.sample.image_height, c.sample.image_width), c.image_patch, c.dim, c.image_depth,
                             c.heads, c.mlp_ratio, c.stem)
        pillars = PillarTokenizer(p.x_bounds, p.y_bounds, p.z_bounds, p.resolution, p.max_points_per_pillar,
                                  p.max_pillars, p.channels, p.patch, c.dim, c.stem)
        lidar = LidarEncoder(pillars, c.dim, c.lidar_depth, c.heads, c.mlp_ratio)
        img_grid = (c.sample.image_height // c.image_patch, c.sample.image_width // c.image_patch)
        rows, cols = p.grid().shape
        lid_grid = (rows // p.patch, cols // p.patch)
        img_pool = TokenPool(img_grid, c.image_pool_grid, 6, c.dim, c.embed_dim, c.pool)
        lid_pool = TokenPool(lid_grid, c.lidar_pool_grid, 1, c.dim, c.embed_dim, c.pool)
        cells = ((GridCells(img_grid, c.image_pool_grid), GridCells(lid_grid, c.lidar_pool_grid))
                 if c.fused_pool == "grid" else (None, None))
        lidar_azimuth = cell_azimuths(p.x_bounds, p.y_bounds, p.resolution * p.patch)  # one per LiDAR token
        fusion = Fusion(6, c.dim, c.fusion_depth, c.heads, c.mlp_ratio, c.fused_dim, c.cross_attention, *cells,
                        azimuth_frequencies=c.azimuth_frequencies, lidar_azimuth=lidar_azimuth,
                        azimuth_bias=c.azimuth_bias, gate=c.cross_gate)
        return TokenFusionNet(image, lidar, fusion, img_pool, lid_pool, c.fused_dim, c.init_logit_scale, c.loss,
                              c.match_tokens, c.match_negatives, c.match_temperature)

    # --- data ---------------------------------------------------------------------------------
    @staticmethod
    def _keep(sample: dict) -> dict:
        return {k: sample[k] for k in ("images", "intrinsics", "cam2ego", "points", "points_mask")}

    def decode_train(self, sample: dict, rng: np.random.Generator) -> dict:
        out = self._keep(self._train(sample, rng))
        if self.cfg.mirror and rng.random() < 0.5:
            out = mirror_sample(out)
        if self.cfg.colour_jitter:
            out["images"] = colour_jitter(out["images"], self.cfg.colour_jitter, rng)
        return out

    def decode_eval(self, sample: dict, rng: np.random.Generator) -> dict:
        return self._keep(self._eval(sample, rng))

    @staticmethod
    def _inputs(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images [0, 1], intrinsics, cam2ego, points, mask): the model's inputs (float32)."""
        return (batch["images"].float() / 255.0, batch["intrinsics"].float(), batch["cam2ego"].float(),
                batch["points"].float(), batch["points_mask"].float())

    # --- training -------------------------------------------------------------------------------
    def _terms(self, out: dict, gather: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(loss terms, logged values) of a forward's outputs (see the module docstring)."""
        scale = out["scale"].float()
        terms, logs = {}, {"logit_scale": out["scale"].detach()}
        if self.cfg.loss == "fused_only":
            terms["contrastive_fused"] = clip_loss(out["img_fused"].float(), out["lid_fused"].float(), scale, gather)
            with torch.no_grad():
                logs["contrastive_pre_fusion"] = clip_loss(out["img"].float(), out["lid"].float(), scale, gather=False)
        else:
            terms["contrastive"] = clip_loss(out["img"].float(), out["lid"].float(), scale, gather)
        if self.cfg.loss == "pre_fusion+fused":
            logits, labels = out["match_logits"].float(), out["match_labels"]
            terms["match"] = self.cfg.match_weight * F.binary_cross_entropy_with_logits(logits, labels)
            logs["match_accuracy"] = ((logits > 0).float() == labels).float().mean().detach()
        return terms, logs

    def losses(self, model: nn.Module, batch: dict) -> StepOutput:
        terms, logs = self._terms(model(*self._inputs(batch)), gather=True)
        return StepOutput(terms, logs)

    def after_optimizer_step(self, model: nn.Module) -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, self.cfg.max_logit_scale)

    # --- evaluation -------------------------------------------------------------------------------
    def _reranks(self) -> bool:
        return self.cfg.rerank_k > 0 and self.cfg.loss != "pre_fusion"

    def evaluate_batch(self, model: nn.Module, batch: dict) -> EvalOutput:
        out = model(*self._inputs(batch))
        terms, logs = self._terms(out, gather=False)
        img, lid = out["img"].float(), out["lid"].float()
        n = len(img)
        sim = img @ lid.T
        target = torch.arange(n, device=img.device)
        sums = {f"{k}_sum": v.double() * n for k, v in terms.items()}
        sums.update(count=torch.tensor(float(n), dtype=torch.float64),
                    i2l_correct=(sim.argmax(1) == target).sum().double(),
                    l2i_correct=(sim.argmax(0) == target).sum().double())
        if "match_logits" in out:
            pairs = len(out["match_logits"])
            sums["match_correct"] = logs["match_accuracy"].double() * pairs
            sums["match_pairs"] = torch.tensor(float(pairs), dtype=torch.float64)
        if "contrastive_pre_fusion" in logs:
            sums["contrastive_pre_fusion_sum"] = logs["contrastive_pre_fusion"].double() * n
        features = {"img": img, "lid": lid}
        if self._reranks():
            features.update(img_tokens=out["img_tokens"], lid_tokens=out["lid_tokens"], img_azimuth=out["img_azimuth"])
            self._scorer = model
        return EvalOutput(sums=sums, features=features)

    def metrics(self, sums: dict[str, float], features: dict[str, torch.Tensor]) -> dict[str, float]:
        n = max(sums.get("count", 0.0), 1.0)
        out = {k[:-4]: v / n for k, v in sums.items() if k.endswith("_sum")}
        out.update(retrieval_i2l=100.0 * sums.get("i2l_correct", 0.0) / n,
                   retrieval_l2i=100.0 * sums.get("l2i_correct", 0.0) / n)
        if sums.get("match_pairs"):
            out["match_accuracy"] = 100.0 * sums["match_correct"] / sums["match_pairs"]
        if "img" in features:
            img, lid = features["img"], features["lid"]
            N = len(img)
            for name, (query, gallery) in (("i2l", (img, lid)), ("l2i", (lid, img))):
                out.update({f"{name}_recall@{k}": v for k, v in recall_at_k(query, gallery, KS).items()})
            out.update({f"chance@{k}": 100.0 * min(k, N) / N for k in KS})
            out["retrieval_pairs"] = float(N)
            if "img_tokens" in features and self._scorer is not None:
                out.update(rerank_recall(self._scorer, img, lid, features["img_tokens"], features["lid_tokens"],
                                         features["img_azimuth"], self.cfg.rerank_k, KS))
        return out

    def visuals(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        from toolkit.tasks.bev.visuals import camera_grid
        from toolkit.tasks.cilp.visuals import similarity_image

        images, intrinsics, cam2ego, points, mask = self._inputs(batch)
        out = model(images, intrinsics, cam2ego, points, mask)
        bev = model.lidar.tokenizer.pseudo_image(points[:1], mask[:1])[0].amax(0)
        bev = (bev / (bev.max() + 1e-6)).flip(0, 1).cpu()  # forward up, left on the left (toolkit.bev.grid)
        return {"similarity": similarity_image(out["scale"] * out["img"] @ out["lid"].T),
                "cameras": camera_grid(images[0]), "pillars": bev.expand(3, *bev.shape).clone()}

    # --- export ---------------------------------------------------------------------------------
    def exports(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"img_enc": ImageEmbedding(model.image, model.img_pool, CAMERAS.index(self.cfg.export_camera)),
                "lidar_enc": LidarEmbedding(model.lidar, model.lid_pool),
                "fused": FusedEmbedding(model.image, model.lidar, model.fusion)}

    def export_inputs(self, batch: dict) -> dict[str, tuple[torch.Tensor, ...]]:
        images, intrinsics, cam2ego, points, mask = self._inputs(batch)
        return {"img_enc": (images.flatten(0, 1),), "lidar_enc": (points, mask),
                "fused": (images, intrinsics, cam2ego, points, mask)}

    def info(self, model: nn.Module) -> dict[str, float]:
        rows, cols = self.cfg.pillars.grid().shape
        return {"parameters": float(sum(p.numel() for p in model.parameters())),
                "trainable_parameters": float(sum(p.numel() for p in model.parameters() if p.requires_grad)),
                "image_tokens": float(6 * model.image.tokens), "lidar_tokens": float(model.lidar.tokenizer.tokens),
                "pillar_rows": float(rows), "pillar_cols": float(cols)}

    @classmethod
    def title(cls, task_cfg: dict) -> str:
        cross = "" if task_cfg.get("cross_attention", True) else ", no cross-attention"
        return f"Token fusion ({task_cfg.get('loss', 'pre_fusion+fused')}{cross})"

    # --- contract test ----------------------------------------------------------------------------
    @classmethod
    def example(cls, workdir: Path, rng: np.random.Generator) -> tuple[dict, list[dict]]:
        from .example import TINY, example_samples

        return dict(TINY), example_samples(workdir, rng)
