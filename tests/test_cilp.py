"""CILP data layout, distributed contrastive loss, the staged CILP pipeline and the report, for real."""

import json
import sys

import numpy as np
import pytest
import torch
import webdataset as wds

from conftest import REPO, run_cli
from toolkit.config import load_config
from toolkit.data.pipeline import eval_loader
from toolkit.engine.trainer import Trainer

sys.path.insert(0, str(REPO / "tests" / "helpers"))


@pytest.fixture(scope="module")
def cilp_data(tmp_path_factory):
    from shards.cilp import build_cilp_shards
    from shards.synthetic.cilp import generate_cilp_folder

    base = tmp_path_factory.mktemp("cilp")
    root = generate_cilp_folder(base / "folder", per_class=12, seed=3, progress=False)
    info = build_cilp_shards(str(root), str(base / "shards"), val_fraction=0.25, seed=5, maxcount=7, progress=False)
    return root, base / "shards", info


def _key_label(sample, rng):
    meta = json.loads(sample["json"])
    return {"key": sample["__key__"], "label": int(sample["cls"]), "split": meta["split"], "cls": meta["class"],
            "rgb_ok": sample["rgb.png"][:8] == b"\x89PNG\r\n\x1a\n"}


def test_layout_round_trip_keeps_every_sample_label_and_split(cilp_data):
    root, shards, info = cilp_data
    assert sorted(p.name for p in (root / "cubes").iterdir()) == ["azimuth.npy", "lidar", "rgb", "zenith.npy"]
    assert len(list((root / "spheres" / "rgb").glob("*.png"))) == 12
    images = [np.load(p) for p in sorted((root / "cubes" / "lidar").glob("*.npy"))]
    assert all(r.shape == (64, 64) and r.dtype == np.float32 and (r < 50).any() for r in images)
    assert any((r == 50.0).any() for r in images)  # misses (sky) are stored as the maximum range
    from PIL import Image

    assert Image.open(root / "cubes" / "rgb" / "0003.png").mode == "RGBA"

    seen = {}
    for split in ("train", "val"):
        for batch in eval_loader(str(shards / f"{split}-*.tar"), _key_label, 4, num_workers=2):
            for key, label, rec_split, cls, ok in zip(batch["key"], batch["label"].tolist(), batch["split"],
                                                      batch["cls"], batch["rgb_ok"].tolist()):
                assert key not in seen, f"{key} read twice"
                seen[key] = (label, rec_split, cls)
                assert rec_split == split and ok
    assert len(seen) == 24  # nothing lost
    for key, (label, _, cls) in seen.items():
        assert key.startswith(cls) and label == (0 if cls == "cubes" else 1)
    assert info["splits"]["val"]["per_class"] == {"cubes": 3, "spheres": 3}  # stratified 25 %
    # bytes are the files' own
    sample = next(s for s in wds.WebDataset(str(shards / "train-*.tar").replace("*", "000000"), shardshuffle=False))
    meta = json.loads(sample["json"])
    assert sample["rgb.png"] == (root / meta["rgb"]).read_bytes()
    assert sample["lidar.npy"] == (root / meta["lidar"]).read_bytes()


def test_lidar_inputs_depth_and_xyza_agree_with_the_range_image(cilp_data):
    from toolkit.tasks.cilp.data import CILPDataConfig, lidar_input

    root = cilp_data[0]
    images = [np.load(p) for p in sorted((root / "spheres" / "lidar").glob("*.npy"))]
    with_sky = [im for im in images if 0 < (im < 50.0).sum() < im.size]
    assert with_sky, "no synthetic range image with both hits and misses"
    rng_img = with_sky[0]
    az, ze = np.load(root / "spheres" / "azimuth.npy"), np.load(root / "spheres" / "zenith.npy")
    depth = lidar_input(rng_img, az, ze, CILPDataConfig(lidar_input="depth"))
    xyza = lidar_input(rng_img, az, ze, CILPDataConfig(lidar_input="xyza"))
    assert depth.shape == (1, 64, 64) and xyza.shape == (4, 64, 64)
    hit = rng_img < 50.0
    np.testing.assert_array_equal(xyza[3], hit.astype(np.float32))
    # |xyz| is the range on hits (scaled by range_scale_m = 10 m); misses are 0 in xyz, max range in depth
    np.testing.assert_allclose(np.linalg.norm(xyza[:3], axis=0)[hit], rng_img[hit] / 10.0, rtol=1e-5)
    np.testing.assert_allclose(depth[0][hit], rng_img[hit] / 10.0, rtol=1e-6)
    assert np.all(xyza[:3][:, ~hit] == 0) and np.all(depth[0][~hit] == 5.0)
    with pytest.raises(ValueError, match="does not match"):
        lidar_input(rng_img[:10], az, ze, CILPDataConfig())


def test_generator_poses_are_deterministic_and_checked():
    from shards.synthetic.cilp import render_sample

    for pose in ("fixed", "random"):
        a = render_sample("cubes", np.random.default_rng([1, 0, 3]), pose)
        b = render_sample("cubes", np.random.default_rng([1, 0, 3]), pose)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert a[0].shape == (64, 64, 4) and a[1].shape == (64, 64) and a[1].dtype == np.float32
    fixed = [render_sample("spheres", np.random.default_rng([1, 1, i]))[1] for i in range(2)]
    # one sensor pose: the ground far from the object is seen identically (up to the 1 cm range noise)
    assert np.abs(fixed[0][:, -8:] - fixed[1][:, -8:]).max() < 0.1
    with pytest.raises(ValueError, match="pose"):
        render_sample("cubes", np.random.default_rng(0), "orbit")


def test_a_real_download_with_a_missing_pair_is_a_clear_error(cilp_data, tmp_path):
    import shutil

    root, _, _ = cilp_data
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "spheres" / "lidar" / "0005.npy").unlink()
    res = run_cli(["-m", "shards", "cilp", "--root", str(copy), "--out", str(tmp_path / "o")])
    assert res.returncode == 2 and "lack their RGB or LiDAR file" in res.stderr


@pytest.mark.slow
def test_distributed_clip_loss_and_gradients_equal_the_single_process_ones(tmp_path):
    from clip_loss_ranks import make_inputs, make_model

    from toolkit.tasks.cilp.loss import clip_loss

    res = run_cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   str(REPO / "tests" / "helpers" / "clip_loss_ranks.py"), str(tmp_path)], env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    model = make_model()
    rgb, lidar = make_inputs()
    img, lid, scale = model(rgb, lidar)
    loss = clip_loss(img, lid, scale)  # one process, the concatenated batch
    loss.backward()
    distributed_loss = (ranks[0]["loss"] + ranks[1]["loss"]) / 2
    assert torch.allclose(distributed_loss, loss.detach(), atol=1e-5), (distributed_loss, loss)
    for name, p in model.named_parameters():
        for r in range(2):  # DDP leaves the averaged gradient on every rank
            assert torch.allclose(ranks[r]["grads"][name], p.grad, atol=1e-5), (name, r)
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"])  # the ranks really saw different halves


def test_locked_lidar_trunk_stays_fixed_while_the_rest_trains():
    from toolkit.tasks.cilp.loss import clip_loss
    from toolkit.tasks.cilp.models import CILPModel, UnimodalClassifier

    torch.manual_seed(0)
    source = UnimodalClassifier(1, [4, 8, 8, 8], norm="batch")
    source.trunk(torch.rand(8, 1, 64, 64))  # non-default BatchNorm statistics
    model = CILPModel(4, 1, [4, 8, 8, 8], emb_dim=16, hidden=8, norm="batch")
    model.lock_lidar_trunk(source.trunk.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        img, lidar, scale = model(torch.rand(6, 4, 64, 64), torch.rand(6, 1, 64, 64))
        clip_loss(img, lidar, scale).backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    for key, value in source.trunk.state_dict().items():  # weights and BatchNorm statistics of the source
        assert torch.equal(after[f"lidar.trunk.{key}"], value), key
    assert not model.lidar.trunk.training
    for prefix in ("lidar.head.", "image.trunk.", "image.head."):
        assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith(prefix)), prefix
    with pytest.raises(RuntimeError):
        model.lock_lidar_trunk(UnimodalClassifier(1, [4, 8, 8, 8], norm="none").trunk.state_dict())


def _train(config: str, run_dir, shards, **extra):
    values = {"data.train": str(shards / "train-*.tar"), "data.val": str(shards / "val-*.tar"), "data.batch_size": 8,
              "data.val_batch_size": 6, "data.num_workers": 0, "data.shuffle_buffer": 16, "train.max_steps": 4,
              "checkpoint.every": 4, "eval.every": 4, "log.every": 2, "log.image_every": 4, "log.progress": False,
              "train.precision": "fp32",  # Accelerate keeps one precision per process; these runs share one
              "run.dir": str(run_dir), **extra}
    if "task.channels" not in extra and config in ("fusion", "lidar_classifier", "cilp"):
        values["task.channels"] = "[4,8,8,8]"
    cfg = load_config(REPO / "configs" / "cilp" / f"{config}.yaml", [f"{k}={v}" for k, v in values.items()])
    return Trainer(cfg).fit()


@pytest.mark.slow
def test_staged_pipeline_keeps_frozen_parts_frozen_and_reports(cilp_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from toolkit.engine.checkpoint import load_trained_weights

    def load_run(run):
        return load_trained_weights(run)[:2]

    def sub_state(state, prefix):
        return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}

    _, shards, _ = cilp_data
    runs = {name: tmp_path / name for name in ("lidar", "cilp", "projector", "rgb2lidar", "late")}
    _train("lidar_classifier", runs["lidar"], shards)
    _train("cilp", runs["cilp"], shards, **{"task.lidar_trunk_run": runs["lidar"]})
    _train("cilp_projector", runs["projector"], shards, **{"task.cilp_run": runs["cilp"],
                                                          "task.lidar_classifier_run": runs["lidar"]})
    summary = _train("rgb2lidar", runs["rgb2lidar"], shards, **{
        "task.cilp_run": runs["cilp"], "task.lidar_classifier_run": runs["lidar"], "task.projector_run": runs["projector"],
        "optim.lr": 0.05})
    _train("fusion", runs["late"], shards)
    assert summary["trainable_parameters"] < summary["parameters"]

    final = torch.load(runs["rgb2lidar"] / "checkpoints" / "iter_000000004.pt", weights_only=True)
    cilp_state, _ = load_run(str(runs["cilp"]))
    lidar_state, _ = load_run(str(runs["lidar"]))
    proj_state, _ = load_run(str(runs["projector"]))
    for key, value in sub_state(lidar_state, "trunk").items():  # CILP's locked LiDAR trunk (LiT): the classifier's
        assert torch.equal(cilp_state[f"lidar.trunk.{key}"], value), key
    for key, value in sub_state(cilp_state, "image").items():  # frozen image embedder: unchanged
        assert torch.equal(final["model"][f"image_embedder.module.{key}"], value), key
    for key, value in sub_state(lidar_state, "head").items():  # frozen LiDAR head: unchanged
        assert torch.equal(final["model"][f"head.module.{key}"], value), key
    changed = [k for k, v in sub_state(proj_state, "projector").items()
               if not torch.equal(final["model"][f"projector.{k}"], v)]
    assert changed, "the projector did not train"
    n_projector = len(sub_state(proj_state, "projector"))
    assert len(final["optimizer"]["state"]) == n_projector  # only the projector is optimised

    acc = EventAccumulator(str(runs["late"] / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert {"images/inputs", "images/val_confusion_matrix"} <= set(acc.Tags()["images"])
    assert {"val/accuracy", "val/loss"} <= set(acc.Tags()["scalars"])
    acc = EventAccumulator(str(runs["cilp"] / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert "images/similarity" in acc.Tags()["images"] and "train/logit_scale" in acc.Tags()["scalars"]
    assert {"val/i2l_recall@1", "val/l2i_recall@5", "val/retrieval_i2l"} <= set(acc.Tags()["scalars"])
    for run, exports in ((runs["cilp"], ("img_enc", "lidar_enc")), (runs["rgb2lidar"], ("classifier",)),
                         (runs["projector"], ("projector",)), (runs["late"], ("classifier", "rgb_enc", "lidar_enc"))):
        for suffix in exports:
            assert (run / "checkpoints" / f"iter_000000004_{suffix}.jit").exists(), (run, suffix)

    res = run_cli(["-m", "toolkit.report", *(str(runs[k]) for k in ("late", "lidar", "cilp", "projector", "rgb2lidar")),
                   "--out", str(tmp_path / "report.md")])
    assert res.returncode == 0, res.stderr
    table = (tmp_path / "report.md").read_text()
    for name in ("Late Fusion", "LiDAR Classifier", "CILP (Contrastive Pretraining)", "Cross-Modal Projector",
                 "RGB → LiDAR Fine-Tuning"):
        assert f"| {name} |" in table
    assert table.count("\n|") == 6  # header, rule and five runs


@pytest.mark.slow
def test_whole_set_retrieval_is_gathered_over_ranks_and_matches_one_process(cilp_data, tmp_path):
    """Two gloo ranks each embed part of the validation set; the evaluator gathers every rank's
    embeddings, so recall@k is computed over all pairs, equal to a one-process evaluation of the same
    checkpoint (``python -m toolkit.evaluate --task cilp``), and differs from the within-batch figure."""
    _, shards, info = cilp_data
    run = tmp_path / "ddp"
    overrides = [f"data.train={shards / 'train-*.tar'}", f"data.val={shards / 'val-*.tar'}", "data.batch_size=4",
                 "data.val_batch_size=2", "data.num_workers=0", "train.max_steps=2", "checkpoint.every=2",
                 "eval.every=2", "eval.ema=false", "log.every=1", "log.image_every=0", "log.progress=false",
                 "train.precision=fp32", "task.channels=[4,8,8,8]", "task.norm=none", "task.lidar_trunk_run=",
                 f"run.dir={run}"]
    res = run_cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "toolkit.train", "-c",
                   str(REPO / "configs" / "cilp" / "cilp.yaml"), *overrides], env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    logged = json.loads((run / "summary.json").read_text())["last_eval"]
    n_val = info["splits"]["val"]["samples"]
    assert logged["val/retrieval_pairs"] == n_val == 6  # every rank's pairs, not one rank's share

    out = tmp_path / "eval.json"
    res = run_cli(["-m", "toolkit.evaluate", "--task", "cilp", "--checkpoint", str(run / "checkpoints" / "iter_000000002.pt"),
                   "--weights", "model", "--shards", str(shards / "val-*.tar"), "--json", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    single = json.loads(out.read_text())["metrics"]
    for key in ("i2l_recall@1", "i2l_recall@5", "l2i_recall@1", "l2i_recall@5", "retrieval_pairs"):
        assert logged[f"val/{key}"] == pytest.approx(single[key]), key
    assert single["i2l_recall@5"] >= single["i2l_recall@1"] and "retrieval_i2l" in single  # within-batch kept beside


def test_recall_at_k_counts_the_partner_rank():
    from toolkit.tasks.common.retrieval import partner_ranks, recall_at_k

    query = torch.eye(4)
    gallery = torch.eye(4)[[0, 2, 1, 3]]  # pairs 1 and 2 swapped: their partners rank second
    assert partner_ranks(query, gallery).tolist() == [0, 1, 1, 0]
    assert recall_at_k(query, gallery, (1, 2)) == {1: 50.0, 2: 100.0}
    with pytest.raises(ValueError, match="must both be"):
        partner_ranks(query, gallery[:3])
