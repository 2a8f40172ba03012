"""The token_fusion task: the 9 PointPillars features on a hand-made cloud, the caps, the mirror augmentation,
a 2-rank torchrun run, and the fused-only (seed) loss and the no-cross-attention ablation in the engine."""

import json
import math

import numpy as np
import pytest
import torch
import webdataset as wds

from conftest import run_cli
from toolkit.tasks.token_fusion.example import TINY, example_samples
from toolkit.tasks.token_fusion.pillars import PILLAR_FEATURES, PillarTokenizer, pillar_assign, pillar_point_features

BOUNDS = [-2.0, 2.0, -2.0, 2.0, -1.0, 3.0]  # a 4 x 4 grid of 1 m pillars, z in [-1, 3)


def test_pillar_points_get_the_nine_documented_features():
    # (x, y, z, intensity, ring): two points in pillar (row 2, col 2) (centre (0.5, 0.5)), one in (row 0, col 3)
    # (centre (-1.5, 1.5)), one outside x, one above z_max, one masked out
    pts = torch.tensor([[[0.2, 0.3, 1.0, 10.0, 0.0], [0.6, 0.9, 2.0, 20.0, 1.0], [-1.8, 1.1, 0.0, 5.0, 2.0],
                         [2.5, 0.0, 0.0, 1.0, 3.0], [0.1, 0.1, 3.5, 1.0, 4.0], [0.4, 0.4, 0.0, 7.0, 5.0]]])
    mask = torch.tensor([[1.0, 1, 1, 1, 1, 0]])
    index, pillar = pillar_assign(pts, mask, BOUNDS, 1.0, 4, 4, max_points_per_pillar=8, max_pillars=16)
    assert index.tolist() == [0, 1, 2]
    assert pillar.tolist() == [2 * 4 + 2, 2 * 4 + 2, 0 * 4 + 3]
    feats = pillar_point_features(pts[0][index], pillar, BOUNDS, 1.0, 4, 4, 16)
    assert PILLAR_FEATURES == ("x", "y", "z", "intensity", "dx_mean", "dy_mean", "dz_mean", "dx_centre", "dy_centre")
    expected = torch.tensor([
        # x,   y,   z,   r,    x - mean (0.4, 0.6, 1.5),  x - centre
        [0.2, 0.3, 1.0, 10.0, -0.2, -0.3, -0.5, -0.3, -0.2],
        [0.6, 0.9, 2.0, 20.0, 0.2, 0.3, 0.5, 0.1, 0.4],
        [-1.8, 1.1, 0.0, 5.0, 0.0, 0.0, 0.0, -0.3, -0.4],  # alone in its pillar: mean = itself
    ])
    torch.testing.assert_close(feats, expected, atol=1e-6, rtol=0)

    # the pseudo-image holds, per pillar, the max over its points of ReLU(BN(Linear(features))), zeros elsewhere
    tok = PillarTokenizer(BOUNDS[:2], BOUNDS[2:4], BOUNDS[4:], 1.0, 8, 16, channels=5, patch=2, dim=4).eval()
    with torch.no_grad():
        image = tok.pseudo_image(pts, mask)[0]
        per_point = torch.relu(tok.norm(tok.linear(expected)))
    assert image.shape == (5, 4, 4)
    torch.testing.assert_close(image[:, 2, 2], per_point[:2].max(0).values)
    torch.testing.assert_close(image[:, 0, 3], per_point[2])
    occupied = torch.zeros(4, 4, dtype=torch.bool)
    occupied[2, 2] = occupied[0, 3] = True
    assert image[:, ~occupied].abs().max() == 0


def test_pillar_caps_keep_the_first_points_and_the_densest_pillars():
    # pillar A (row 1, col 1): 3 points; pillar B (row 3, col 0): 2 points; pillar C (row 0, col 0): 1 point
    xy = [(-0.5, -0.5), (-0.4, -0.6), (-0.3, -0.2), (1.5, -1.5), (1.2, -1.9), (-1.5, -1.5)]
    pts = torch.tensor([[[x, y, 0.0, 1.0] for x, y in xy]])
    mask = torch.ones(1, 6)
    index, pillar = pillar_assign(pts, mask, BOUNDS, 1.0, 4, 4, max_points_per_pillar=2, max_pillars=2)
    assert sorted(index.tolist()) == [0, 1, 3, 4]  # A's third point over the cap, C the sparsest pillar
    assert sorted(set(pillar.tolist())) == [1 * 4 + 1, 3 * 4 + 0]
    # a batch of two samples: pillar ids are per sample, caps per sample
    index, pillar = pillar_assign(torch.cat([pts, pts]), torch.ones(2, 6), BOUNDS, 1.0, 4, 4, 2, 2)
    assert sorted(index.tolist()) == [0, 1, 3, 4, 6, 7, 9, 10]
    assert sorted(set(pillar.tolist())) == [5, 12, 16 + 5, 16 + 12]


def test_mirror_swaps_left_and_right_cameras_and_negates_y():
    from toolkit.config import load_config
    from toolkit.tasks import build_task
    from toolkit.tasks.token_fusion.task import mirror_sample

    over = [f"task.{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in TINY.items()]
    task = build_task(load_config(None, ["task.name=token_fusion", *over]).task)
    images = np.random.default_rng(0).integers(0, 255, (6, 3, 4, 5), dtype=np.uint8)
    points = np.array([[1.0, 2.0, 0.5, 9.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    ex = {"images": images, "points": points, "points_mask": np.array([True, False])}
    m = mirror_sample(ex)
    # CAMERAS = FL, F, FR, BL, B, BR: mirrored slot 0 (FL) holds the flipped FR image, slot 1 the flipped front
    assert np.array_equal(m["images"][0], images[2, :, :, ::-1]) and np.array_equal(m["images"][1], images[1, :, :, ::-1])
    assert np.array_equal(m["images"][3], images[5, :, :, ::-1])
    assert m["points"][0].tolist() == [1.0, -2.0, 0.5, 9.0, 0.0] and not m["points"][1].any()
    back = mirror_sample(m)
    assert np.array_equal(back["images"], images) and np.array_equal(back["points"], points)
    assert task.cfg.mirror


def _rig(yaws_deg, width, height):
    """Six level pinhole cameras at the ego origin looking along the given yaws (ego z up): K (6, 3, 3), T (6, 4, 4)."""
    cam_axes = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])  # columns: camera x, y, z in a forward-looking ego
    T = np.tile(np.eye(4), (6, 1, 1))
    for s, yaw in enumerate(np.radians(yaws_deg)):
        c, n = np.cos(yaw), np.sin(yaw)
        T[s, :3, :3] = np.array([[c, -n, 0], [n, c, 0], [0, 0, 1]]) @ cam_axes
    K = np.tile(np.array([[3.0, 0, 0.4 * width], [0, 3.0, 0.5 * height], [0, 0, 1]]), (6, 1, 1))
    return K.astype(np.float32), T.astype(np.float32)


def test_mirrored_calibration_mirrors_every_token_ray():
    """After mirror_sample, the ray azimuth of each image token is minus that of the token it came from
    (the mirrored camera, columns reversed), with an off-centre principal point, so the direction embedding
    stays true to the flipped images."""
    from toolkit.tasks.token_fusion.model import token_azimuths
    from toolkit.tasks.token_fusion.task import MIRRORED_CAMERAS, mirror_sample

    H, W = 4, 6
    K, T = _rig([55, 0, -55, 110, 180, -110], W, H)
    ex = {"images": np.zeros((6, 3, H, W), np.uint8), "points": np.zeros((1, 5), np.float32),
          "points_mask": np.array([False]), "intrinsics": K, "cam2ego": T}
    m = mirror_sample(ex)
    az = token_azimuths(torch.from_numpy(K)[None], torch.from_numpy(T)[None], H, W, 1)[0].view(6, H, W)
    maz = token_azimuths(torch.from_numpy(m["intrinsics"])[None], torch.from_numpy(m["cam2ego"])[None], H, W, 1)
    want = -az[MIRRORED_CAMERAS].flip(-1)
    diff = (maz[0].view(6, H, W) - want + torch.pi) % (2 * torch.pi) - torch.pi
    assert diff.abs().max() < 1e-5 and az.std() > 1.0
    assert np.allclose(np.linalg.det(m["cam2ego"][:, :3, :3]), 1.0)


def _example_shard(tmp_path, n=4):
    shard = tmp_path / "tf-000000.tar"
    with wds.TarWriter(str(shard)) as sink:
        for sample in example_samples(tmp_path / "images", np.random.default_rng(0), n=n):
            sink.write(sample)
    return shard


def _overrides(shard, run, **extra):
    over = {"task.name": "token_fusion",
            **{f"task.{k}": json.dumps(v) if isinstance(v, list) else v for k, v in TINY.items()},
            "data.train": shard, "data.val": shard, "data.batch_size": 2, "data.num_workers": 0,
            "data.shuffle_buffer": 2, "train.max_steps": 4, "checkpoint.every": 4, "eval.every": 4, "log.every": 1,
            "log.image_every": 0, "log.progress": False, "optim.warmup_steps": 1, "run.dir": run, **extra}
    return [f"{k}={v}" for k, v in over.items()]


@pytest.mark.slow
def test_token_fusion_trains_under_torchrun_with_two_ranks(tmp_path):
    run = tmp_path / "run"
    res = run_cli(["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "toolkit.train",
                   *_overrides(_example_shard(tmp_path), run)], timeout=600, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 4
    ev = summary["last_eval"]
    # whole-set retrieval over the 4 samples gathered from both ranks, chance k / N beside it
    assert ev["val/retrieval_pairs"] == 4 and ev["val/chance@1"] == 25.0 and ev["val/chance@10"] == 100.0
    for key in ("i2l_recall@1", "l2i_recall@5", "i2l_rerank_recall@1", "l2i_rerank_recall@10", "contrastive",
                "match", "match_accuracy"):
        assert f"val/{key}" in ev, key
    logged = set().union(*[json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()])
    assert {"train/contrastive", "train/match", "train/logit_scale", "train/match_accuracy"} <= logged
    for suffix in ("img_enc", "lidar_enc", "fused"):
        assert (run / "checkpoints" / f"iter_000000004_{suffix}.jit").exists(), suffix


@pytest.mark.parametrize("extra", [{"task.loss": "fused_only"}, {"task.cross_attention": "false"},
                                   {"task.azimuth_frequencies": 4, "task.azimuth_bias": 2.0, "task.fused_pool": "mean",
                                    "task.match_tokens": "true", "task.cross_gate": "true"}],
                         ids=["fused_only", "no_cross_attention", "direction_aware"])
def test_fused_only_loss_and_the_ablation_train_in_the_engine(tmp_path, extra):
    from toolkit.config import load_config
    from toolkit.engine.checkpoint import load_trained_model
    from toolkit.engine.trainer import Trainer
    from toolkit.tasks.token_fusion.model import CrossModalBlock, PairwiseFeedForward

    run = tmp_path / "run"
    cfg = load_config(None, _overrides(_example_shard(tmp_path, n=3), run, **{"train.max_steps": 2,
                                                                                 "checkpoint.every": 2,
                                                                                 "eval.every": 2, **extra}))
    summary = Trainer(cfg).fit()
    assert summary["status"] == "finished" and summary["step"] == 2
    ev = summary["last_eval"]
    logged = set().union(*[json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()])
    net = load_trained_model(run, "model").model
    if extra.get("task.loss") == "fused_only":
        # the seed's objective: InfoNCE after fusion; the pre-fusion value is only logged; the parts it never
        # reaches are frozen (no gradient, not in the optimizer)
        assert {"train/contrastive_fused", "train/contrastive_pre_fusion"} <= logged and "train/contrastive" not in logged
        assert "val/contrastive_fused" in ev and "val/i2l_rerank_recall@1" in ev
        assert not any(p.requires_grad for p in net.match_head.parameters())
        assert not any(p.requires_grad for p in net.fusion.head.parameters())
        assert all(isinstance(b, CrossModalBlock) for b in net.fusion.blocks)
    elif "task.azimuth_bias" in extra:
        # the direction embedding and the per-head bias train (the bias moved off its initial 2.0)
        assert {"train/contrastive", "train/match"} <= logged
        block = net.fusion.blocks[0]
        assert isinstance(block, CrossModalBlock) and block.biased and not torch.all(block.beta == 2.0)
        assert net.fusion.azimuth.weight.shape == (16, 8) and not net.fusion.grid
        assert net.match_head.tokens and net.match_head.token_a[3].weight.abs().sum() > 0  # trained off zero
        assert block.gated and block.alpha.abs().min() > 0  # the closed gate opened
        assert (run / "checkpoints" / "iter_000000002_fused.jit").exists()
    else:
        assert {"train/contrastive", "train/match"} <= logged
        assert all(isinstance(b, PairwiseFeedForward) for b in net.fusion.blocks)
        assert not any("a_from_b" in name for name, _ in net.named_parameters())
    assert ev["val/retrieval_pairs"] == 3 and "val/i2l_recall@1" in ev


class _PerfectScorer(torch.nn.Module):
    """A pair scorer that knows the truth: every token of sample i holds the value i, the score of a pair is
    -(i - j)^2 (0 for the partner, < 0 otherwise)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # rerank_recall reads the device from a parameter

    def fused_pair_scores(self, image_tokens, lidar_tokens, image_azimuth):
        return -(image_tokens.flatten(1)[:, 0] - lidar_tokens.flatten(1)[:, 0]) ** 2


def test_a_perfect_head_reranks_shuffled_candidates_and_misses_stay_misses():
    from toolkit.tasks.common.retrieval import partner_ranks
    from toolkit.tasks.token_fusion.rerank import rerank_recall

    N = 24
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(N, 8, generator=g), dim=1)
    lid = torch.nn.functional.normalize(torch.randn(N, 8, generator=g), dim=1)  # unrelated: candidates in random order
    ids = torch.arange(N, dtype=torch.float32)
    img_tokens, lid_tokens = ids.view(N, 1, 1, 1).expand(N, 2, 3, 4), ids.view(N, 1, 1).expand(N, 5, 4)
    azimuth = torch.zeros(N, 2, 3)
    model = _PerfectScorer()
    ranks = {"i2l": partner_ranks(img, lid), "l2i": partner_ranks(lid, img)}
    assert float((ranks["i2l"] == 0).double().mean()) < 0.5  # the contrastive order alone gets most wrong
    full = rerank_recall(model, img, lid, img_tokens, lid_tokens, azimuth, k_top=N, ks=(1, 5), chunk=7)
    assert full["i2l_rerank_recall@1"] == 100.0 and full["l2i_rerank_recall@1"] == 100.0
    # K = 3: a partner among the 3 candidates moves to rank 0, one outside keeps its contrastive rank (>= 3)
    part = rerank_recall(model, img, lid, img_tokens, lid_tokens, azimuth, k_top=3, ks=(1, 5), chunk=5)
    for name in ("i2l", "l2i"):
        r = ranks[name]
        assert part[f"{name}_rerank_recall@1"] == pytest.approx(100.0 * float((r < 3).double().mean()))
        assert part[f"{name}_rerank_recall@5"] == pytest.approx(100.0 * float((r < 5).double().mean()))
    assert model.training  # the training flag is restored


def test_hard_negatives_never_pick_the_partner_and_follow_the_similarity():
    from toolkit.tasks.token_fusion.model import hard_negatives

    torch.manual_seed(0)
    B = 6
    emb = torch.nn.functional.normalize(torch.randn(B, 16), dim=1)
    # each pair is its own most similar row, and row i's nearest non-partner is row (i + 1) % B
    lid = torch.nn.functional.normalize(emb + 0.6 * emb.roll(-1, 0), dim=1)
    picks_lid, picks_img = [], []
    for _ in range(300):
        neg_lid, neg_img = hard_negatives(emb, lid, sample=True)
        assert neg_lid.shape == (B, 1) and neg_img.shape == (B, 1) and neg_lid.dtype == torch.int64
        picks_lid.append(neg_lid[:, 0])
        picks_img.append(neg_img[:, 0])
    picks_lid, picks_img = torch.stack(picks_lid), torch.stack(picks_img)
    rows = torch.arange(B)
    assert not (picks_lid == rows).any() and not (picks_img == rows).any()
    # softmax(cos / 0.1) sampling: the most similar non-partner is the most frequent draw of every image
    sim = (emb @ lid.T).masked_fill(torch.eye(B, dtype=torch.bool), float("-inf"))
    counts = torch.stack([(picks_lid == j).sum(0) for j in range(B)], 1)  # (B images, B scans)
    assert torch.equal(counts.argmax(1), sim.argmax(1))
    assert len(set(picks_lid[:, 0].tolist())) > 1  # sampled, not always the argmax
    det_lid, det_img = hard_negatives(emb, lid, sample=False)
    assert torch.equal(det_lid[:, 0], sim.argmax(1)) and torch.equal(det_img[:, 0], sim.argmax(0))
    # several negatives: distinct, never the partner; a high temperature spreads the draws over the batch
    many_lid, many_img = hard_negatives(emb, lid, sample=True, count=3)
    assert many_lid.shape == (B, 3) and all(len(set(r.tolist())) == 3 for r in many_lid)
    assert not (many_lid == rows[:, None]).any() and not (many_img == rows[:, None]).any()
    assert torch.equal(hard_negatives(emb, lid, sample=False, count=2)[0], sim.topk(2, 1).indices)
    flat = torch.stack([hard_negatives(emb, lid, sample=True, temperature=100.0)[0][:, 0] for _ in range(300)])
    spread = torch.stack([(flat == j).sum(0) for j in range(B)], 1).float()  # (B images, B scans) draw counts
    assert spread.masked_fill(torch.eye(B, dtype=torch.bool), 300).min() > 30  # about 60 each when uniform
    with pytest.raises(ValueError, match="count"):
        hard_negatives(emb, lid, count=B)


def test_matching_loss_fuses_k_negatives_per_row_and_never_the_partner(tmp_path):
    """``task.match_negatives`` = k: (2k + 1) B fused pairs, B positives first, every negative pair from two
    different samples (each sample's tokens carry its index, so the fused pairs can be read back)."""
    from toolkit.config import load_config
    from toolkit.tasks import build_task

    cfg = load_config(None, _overrides(tmp_path / "unused.tar", tmp_path / "run", **{"task.match_negatives": 2,
                                                                                        "task.match_temperature": 1.0}))
    net = build_task(cfg.task).build_model()
    seen = []
    net.match_logits = lambda it, lt, az: seen.append((it[:, 0, 0, 0].clone(), lt[:, 0, 0].clone())) or it.new_zeros(len(it))
    B, S = 4, 6
    net.image_tokens = lambda images: torch.arange(B, dtype=torch.float32)[:, None, None, None].expand(B, S, 8, 16)
    net.lidar.forward = lambda points, mask: torch.arange(B, dtype=torch.float32)[:, None, None].expand(B, 16, 16)
    h, w = cfg.task.sample.image_height, cfg.task.sample.image_width
    K = torch.tensor([[20.0, 0, w / 2], [0, 20.0, h / 2], [0, 0, 1]]).expand(B, S, 3, 3)
    out = net(torch.rand(B, S, 3, h, w), K, torch.eye(4).expand(B, S, 4, 4), torch.rand(B, 32, 5), torch.ones(B, 32))
    img_id, lid_id = seen[0]
    assert out["match_labels"].shape == (5 * B,) and out["match_labels"].sum() == B
    assert torch.equal(img_id[:B], lid_id[:B]) and (img_id[B:] != lid_id[B:]).all()
    for i in range(B):  # each image meets 2 distinct negative scans, each scan 2 distinct negative images
        assert len(set(lid_id[B:3 * B][img_id[B:3 * B] == i].tolist())) == 2
        assert len(set(img_id[3 * B:][lid_id[3 * B:] == i].tolist())) == 2
    with pytest.raises(ValueError, match="task.match_temperature"):
        load_config(None, _overrides(tmp_path / "unused.tar", tmp_path / "run", **{"task.match_temperature": 0}))


def test_match_head_starts_as_the_post_fusion_cosine_and_gets_gradient():
    from toolkit.tasks.token_fusion.model import MatchHead

    torch.manual_seed(0)
    head = MatchHead(8, 6, 6)
    u = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    v = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    fused = torch.randn(5, 6, requires_grad=True)
    logits = head(u, v, fused)
    torch.testing.assert_close(logits, 10.0 * (u * v).sum(1) - 5.0)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 0, 0, 1, 0])).backward()
    # the zero-initialised last layer gets gradient at once, so the MLP path trains from step 1
    assert head.mlp[3].weight.grad.abs().sum() > 0 and head.scale.grad != 0 and head.bias.grad != 0


def test_token_level_match_head_scores_each_token_before_pooling():
    """The token-level term starts at zero (the head is still the cosine), trains from step 1 and, once
    trained, tells apart two pairs with the same token means: local evidence is not averaged away."""
    from toolkit.tasks.token_fusion.model import MatchHead

    torch.manual_seed(0)
    head = MatchHead(8, 6, 6, token_dim=4)
    u = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
    v = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
    fused = torch.randn(2, 6)
    a = torch.randn(2, 5, 4, requires_grad=True)
    b = torch.randn(2, 3, 4)
    logits = head(u, v, fused, a, b)
    torch.testing.assert_close(logits, 10.0 * (u * v).sum(1) - 5.0)
    logits.sum().backward()
    assert head.token_a[3].weight.grad.abs().sum() > 0 and head.token_b[3].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="post-fusion tokens"):
        head(u, v, fused)
    # two token sets with the same mean (so the same mean pooling) but different spreads score differently
    torch.nn.init.normal_(head.token_a[3].weight)
    same = torch.zeros(1, 5, 4)
    spread = torch.tensor([[1.0, -1.0, 2.0, -2.0]]).repeat(5, 1)[None] * torch.tensor([1, -1, 1, -1, 0.0])[None, :, None]
    assert torch.allclose(same.mean(1), spread.mean(1))
    first = head(u[:1], v[:1], fused[:1], same, b[:1])
    second = head(u[:1], v[:1], fused[:1], spread, b[:1])
    assert (first - second).abs().item() > 1e-3
    assert not MatchHead(8, 6, 6).tokens and not any("token_a" in n for n, _ in MatchHead(8, 6, 6).named_parameters())


def _plain_block(azimuth_bias, dim):
    """A CrossModalBlock whose attention logits are only the direction bias (q = k = 0), whose values are the
    normalised context tokens and whose feed-forward layers add nothing."""
    from toolkit.tasks.token_fusion.model import CrossModalBlock

    blk = CrossModalBlock(dim, 2, 2.0, azimuth_bias=azimuth_bias)
    with torch.no_grad():
        for att in (blk.a_from_b, blk.b_from_a):
            for p in (*att.q.parameters(), *att.kv.parameters(), att.out.bias):
                p.zero_()
            att.kv.weight[dim:] = torch.eye(dim)
            att.out.weight.copy_(torch.eye(dim))
        for ff in (blk.ff_a, blk.ff_b):
            ff[3].weight.zero_()
            ff[3].bias.zero_()
    return blk


def test_direction_bias_makes_cross_attention_read_the_same_bearing():
    """With the azimuth bias, each image token reads the LiDAR token in its own direction (and each LiDAR
    token the image token in its direction); without it the same block reads the context's mean."""
    torch.manual_seed(0)
    D = 8
    phi_a = torch.tensor([[0.0, 0.5, -0.5, 1.0]]) * math.pi  # 90 deg apart: no LiDAR token is halfway
    phi_b = torch.linspace(-math.pi, math.pi, 13)[:-1][None]  # 12 LiDAR tokens, 30 deg apart
    a, b = torch.randn(1, 4, D), torch.randn(1, 12, D)
    cos = torch.cos(phi_a[..., None] - phi_b[:, None, :])
    blk = _plain_block(200.0, D)
    a2, b2 = blk(a, b, cos)
    torch.testing.assert_close(a2 - a, blk.norm_b(b)[:, cos[0].argmax(1)], atol=1e-3, rtol=0)
    torch.testing.assert_close(b2 - b, blk.norm_a(a)[:, cos[0].argmax(0)], atol=1e-3, rtol=0)
    assert blk.beta.requires_grad and blk.beta.shape == (2, 2)
    flat = _plain_block(0.0, D)
    a2, _ = flat(a, b, cos)
    torch.testing.assert_close(a2 - a, flat.norm_b(b).mean(1, keepdim=True).expand(1, 4, D), atol=1e-5, rtol=0)
    assert "beta" not in dict(flat.named_parameters()) and "beta" not in flat.state_dict()


def test_gated_cross_attention_starts_as_the_ablation_and_opens():
    """``gate``: with alpha = 0 the block is the feed-forward ablation exactly (same feed-forward weights), the
    gate gets a gradient at once, and once opened the output depends on the other modality; ungated blocks
    have no alpha parameter and TorchScript compiles both."""
    from toolkit.tasks.token_fusion.model import CrossModalBlock, PairwiseFeedForward

    torch.manual_seed(0)
    D = 8
    gated, plain = CrossModalBlock(D, 2, 2.0, gate=True), PairwiseFeedForward(D, 2, 2.0)
    plain.ff_a.load_state_dict(gated.ff_a.state_dict())
    plain.ff_b.load_state_dict(gated.ff_b.state_dict())
    a, b, cos = torch.randn(2, 5, D), torch.randn(2, 3, D), torch.zeros(1, 1, 1)
    for x, y in zip(gated(a, b, cos), plain(a, b, cos)):
        torch.testing.assert_close(x, y)
    gated(a, b, cos)[0].square().sum().backward()
    assert gated.alpha.grad[0].abs() > 0
    with torch.no_grad():
        gated.alpha.fill_(1.0)
    other = torch.randn(2, 3, D)
    assert (gated(a, b, cos)[0] - gated(a, other, cos)[0]).abs().max() > 1e-3
    assert "alpha" not in dict(CrossModalBlock(D, 2, 2.0).named_parameters())
    for blk in (gated, CrossModalBlock(D, 2, 2.0)):
        scripted = torch.jit.script(blk)
        torch.testing.assert_close(scripted(a, b, cos)[0], blk(a, b, cos)[0])


def test_evaluate_draws_average_the_random_point_subsample(tmp_path):
    """``toolkit.evaluate --draws 3`` on a trained run: three evaluations with the decode's point subsample
    seeded run.seed + 0..2 (the example scans hold more points than ``sample.max_points``, so draws differ);
    the printed metrics are their mean, draw 0 is the single evaluation."""
    from toolkit.config import load_config
    from toolkit.engine.trainer import Trainer

    shard, run = _example_shard(tmp_path, n=4), tmp_path / "run"
    Trainer(load_config(None, _overrides(shard, run, **{"train.max_steps": 2, "checkpoint.every": 2,
                                                         "eval.every": 0, "task.sample.max_points": 64}))).fit()
    results = {}
    for draws in (1, 3):
        out = tmp_path / f"draws{draws}.json"
        res = run_cli(["-m", "toolkit.evaluate", "--task", "token_fusion", "--run", str(run), "--shards", str(shard),
                       "--draws", str(draws), "--json", str(out)], timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        results[draws] = json.loads(out.read_text())
    many = results[3]
    assert many["seeds"] == [0, 1, 2] and len(many["draws"]) == 3 and "over 3 draws" in res.stdout
    for key, value in many["metrics"].items():
        assert value == pytest.approx(np.mean([d[key] for d in many["draws"]]), rel=1e-9, abs=1e-12), key
        assert many["metrics_std"][key] == pytest.approx(np.std([d[key] for d in many["draws"]]), abs=1e-12)
    assert many["draws"][0] == results[1]["metrics"]
    assert many["draws"][0]["contrastive"] != many["draws"][1]["contrastive"]  # another point subsample
    res = run_cli(["-m", "toolkit.evaluate", "--task", "token_fusion", "--run", str(run), "--shards", str(shard),
                   "--draws", "0"], timeout=300)
    assert res.returncode == 2 and "--draws must be >= 1, got 0" in res.stderr
