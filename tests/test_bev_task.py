"""The BEV task's parts: uncertainty weighting, global IoU, the parameter-free lifting, a 2-rank torchrun run,
and the TorchScript export in a fresh process."""

import json
import math
import sys
import textwrap

import numpy as np
import pytest
import torch
import webdataset as wds

from conftest import REPO, run_cli
from toolkit.bev.grid import BEVGrid
from toolkit.tasks.bev.example import TINY, example_samples
from toolkit.tasks.bev.losses import uncertainty_weighted
from toolkit.tasks.bev.metrics import iou_from_sums, iou_sums
from toolkit.tasks.bev.model import lift


def test_uncertainty_weighted_total_is_kendalls_formula():
    losses = {"seg": torch.tensor(0.7), "center": torch.tensor(0.2), "offset": torch.tensor(1.5)}
    w = {"seg": torch.tensor(-0.3), "center": torch.tensor(0.8), "offset": torch.tensor(0.1)}
    for scale in (1.0, 10.0):
        total = sum(uncertainty_weighted(losses, w, seg_scale=scale).values())
        expected = (scale * 0.7 * math.exp(0.3) + 0.5 * -0.3
                    + 0.2 / (2 * math.exp(0.8)) + 0.5 * 0.8
                    + 1.5 / (2 * math.exp(0.1)) + 0.5 * 0.1)
        assert total.item() == pytest.approx(expected, rel=1e-6)


def test_iou_is_summed_over_the_set_and_ignores_invalid_cells():
    # sample 1: 4 target cells, prediction hits 2 of them and 2 background cells; one hit cell is invalid
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2, :2] = 1
    logits = torch.full((2, 1, 4, 4), -5.0)
    logits[0, 0, 0, :2] = 5
    logits[0, 0, 3, 2:] = 5
    valid = torch.ones(2, 1, 4, 4)
    valid[0, 0, 0, 0] = 0
    # sample 2: empty target, one false positive
    logits[1, 0, 2, 2] = 5
    near = torch.zeros(4, 4, dtype=torch.bool)
    near[:2, :2] = True
    sums = {k: float(v) for k, v in iou_sums(logits, target, valid, near).items()}
    # valid-filtered: I = 1 (cell 0,1), U = 3 target (valid) + 2 FP + 1 FP = 6
    assert sums["inter"] == 1 and sums["union"] == 6
    assert sums["inter_all"] == 2 and sums["union_all"] == 7
    assert sums["inter_30m"] == 1 and sums["union_30m"] == 3
    ious = iou_from_sums(sums)
    assert ious["iou"] == pytest.approx(1 / 6) and ious["iou_all"] == pytest.approx(2 / 7)
    assert ious["iou_30m"] == pytest.approx(1 / 3)
    # a mean of per-sample IoUs would differ: (1/5 + 0) / 2
    assert ious["iou"] != pytest.approx(0.1)


def _forward_camera(y_m: float, z_m: float, K: torch.Tensor) -> torch.Tensor:
    """(1, 1, 4, 4) cam2ego of a camera at ego (0, y, z) looking along ego +x."""
    T = torch.eye(4)
    T[:3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # columns: right, down, fwd
    T[:3, 3] = torch.tensor([0.0, y_m, z_m])
    return T.view(1, 1, 4, 4)


def test_lifting_puts_a_painted_feature_into_the_voxel_of_its_3d_point_and_nothing_behind_the_camera():
    grid = BEVGrid((-8.0, 8.0), (-4.0, 4.0), 1.0, (0.0, 2.0), 2)  # voxel centres x, y = k + 0.5, z = 0.5, 1.5
    centers = torch.from_numpy(grid.voxel_centers()).float().reshape(-1, 3)
    H, W = 48, 64  # stride-8 features: 6 x 8; feature pixel (r, c) centre is image pixel (8c + 3.5, 8r + 3.5)
    K = torch.tensor([[40.0, 0.0, 8 * 3 + 3.5], [0.0, 40.0, 8 * 2 + 3.5], [0.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    cam2ego = _forward_camera(0.5, 1.5, K)  # the optical axis runs through voxel centres (x + 0.5, 0.5, 1.5)
    feats = torch.zeros(1, 1, 6, 8)
    feats[0, 0, 2, 3] = 1.0  # painted where the point (5.5, 0.5, 1.5) projects: on the optical axis
    vox = lift(feats, centers, K, cam2ego, (H, W)).view(grid.z_cells, *grid.shape)
    level, row, col = 1, 13, 4  # the voxel containing (5.5, 0.5, 1.5): x index (5.5 + 8) - 0.5, y (0.5 + 4) - 0.5
    assert vox[level, row, col].item() == pytest.approx(1.0, abs=1e-6)
    # depth-less and bilinear: the feature lands on voxels in front of the camera whose centres project within
    # one feature pixel (8 image px) of the painted one, and nowhere else
    cam = centers - torch.tensor([0.0, 0.5, 1.5])
    depth, u, v = cam[:, 0], 27.5 - 40 * cam[:, 1] / cam[:, 0], 19.5 - 40 * cam[:, 2] / cam[:, 0]
    near = (depth > 0) & ((u - 27.5).abs() < 8) & ((v - 19.5).abs() < 8)
    lit = vox.flatten() > 0
    assert lit.any() and not (lit & ~near).any()
    assert vox.max().item() == pytest.approx(1.0, abs=1e-6)
    # a point behind the camera: however the features look, voxels there get nothing
    vox_all = lift(torch.ones(1, 1, 6, 8), centers, K, cam2ego, (H, W)).view(grid.z_cells, *grid.shape)
    assert vox_all[:, :8].abs().max().item() == 0.0  # rows 0-7: x < 0, behind the camera
    assert vox_all[:, 8:].max().item() == pytest.approx(1.0)


def _example_shard(tmp_path, n=4):
    shard = tmp_path / "bev-000000.tar"
    with wds.TarWriter(str(shard)) as sink:
        for sample in example_samples(tmp_path / "images", np.random.default_rng(0), n=n):
            sink.write(sample)
    return shard


def _tiny_overrides(shard, run, **extra):
    over = {"task.name": "bev", **{f"task.{k}": json.dumps(v) if isinstance(v, list) else v for k, v in TINY.items()},
            "data.train": shard, "data.val": shard, "data.batch_size": 2, "data.num_workers": 1,
            "data.shuffle_buffer": 2, "train.max_steps": 4, "checkpoint.every": 4, "eval.every": 4, "log.every": 1,
            "log.image_every": 4, "log.progress": False, "optim.warmup_steps": 1, "run.dir": run, **extra}
    return [f"{k}={v}" for k, v in over.items()]


@pytest.mark.slow
def test_bev_trains_under_torchrun_with_two_ranks(tmp_path):
    run = tmp_path / "run"
    res = run_cli(["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "toolkit.train",
                   *_tiny_overrides(_example_shard(tmp_path), run, **{"task.inputs": "cam+lidar"})],
                  timeout=600, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 4
    assert "val/iou" in summary["last_eval"] and "val/iou_all" in summary["last_eval"]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = set().union(*rows)
    for head in ("seg", "center", "offset"):
        assert {f"train/{head}", f"train/raw_{head}", f"train/logvar_{head}", f"train/sigma_{head}",
                f"train/weight_{head}"} <= logged
    assert (run / "checkpoints" / "iter_000000004_model.jit").exists()
    assert (run / "checkpoints" / "iter_000000004_encoder.jit").exists()


def test_exported_model_runs_without_toolkit_and_matches_eager(tmp_path):
    from torch.utils.data import default_collate

    from toolkit.config import load_config
    from toolkit.engine.checkpoint import script_modules
    from toolkit.tasks import build_task

    cfg = load_config(None, _tiny_overrides(_example_shard(tmp_path), tmp_path / "run", **{"task.inputs": "cam+lidar"}))
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model().eval()
    samples = example_samples(tmp_path / "images", np.random.default_rng(3), n=2)
    batch = default_collate([task.decode_eval(s, np.random.default_rng(0)) for s in samples])
    exports = task.exports(model)
    inputs = task.export_inputs(batch)
    io = {}
    for name, module in script_modules(exports).items():
        torch.jit.save(module, str(tmp_path / f"{name}.jit"))
        with torch.no_grad():
            io[name] = {"inputs": list(inputs[name]), "expected": exports[name](*inputs[name])}
    assert io["model"]["expected"].shape == (2, 4, *cfg.task.sample.grid().shape)
    torch.save(io, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        io = torch.load({str(tmp_path / 'io.pt')!r})
        for name, d in io.items():
            out = torch.jit.load({str(tmp_path)!r} + "/" + name + ".jit")(*d["inputs"])
            err = (out - d["expected"]).abs().max().item()
            assert err <= 1e-5, (name, err)
        assert "toolkit" not in sys.modules
        print("ok", sorted(io))
    """)
    res = run_cli([sys.executable, "-c", script], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ok ['encoder', 'model']" in res.stdout


def test_seg_head_starts_at_the_prior_probability():
    from toolkit.tasks.bev.decoder import BEVDecoder

    torch.manual_seed(0)
    bev = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        seg, _, _ = BEVDecoder(8, width=4, seg_prior=0.02)(bev)
        seg_default, _, _ = BEVDecoder(8, width=4)(bev)
    assert abs(torch.sigmoid(seg).median().item() - 0.02) < 0.01
    assert abs(torch.sigmoid(seg_default).median().item() - 0.02) > 0.1
    with pytest.raises(ValueError, match="seg_prior"):
        BEVDecoder(8, width=4, seg_prior=1.0)


@pytest.mark.slow
def test_predict_and_evaluate_cli_on_a_trained_run(tmp_path):
    """A 4-step run; ``toolkit.predict`` writes one PNG per sample with the IoU in its title and
    ``toolkit.evaluate`` the IoU table as JSON, both from the eager checkpoint."""
    from PIL import Image

    shard, run = _example_shard(tmp_path), tmp_path / "run"
    res = run_cli(["-m", "toolkit.train", *_tiny_overrides(shard, run, **{"task.inputs": "cam+lidar"})], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_cli(["-m", "toolkit.predict", "--task", "bev", "--run", str(run), "--shards", str(shard),
                   "--out", str(tmp_path / "pred"), "--max-samples", "2"], timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    pngs = sorted((tmp_path / "pred").glob("*.png"))
    assert len(pngs) == 2 and res.stdout.count("wrote ") == 2
    assert all(min(Image.open(p).size) > 200 for p in pngs)
    res = run_cli(["-m", "toolkit.evaluate", "--task", "bev", "--run", str(run), "--shards", str(shard),
                   "--json", str(tmp_path / "eval.json")], timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval.json").read_text())
    flat = json.dumps(metrics)
    assert "iou" in flat and "iou_all" in flat and "iou_30m" in flat
