"""Embedding search end to end: export (shards and a real dataroot) -> Faiss index -> k-NN queries and contact
sheets; a kill -9'd export resumed equals an uninterrupted one; too-small sets for IVF-PQ are one-line errors;
UMAP coordinates and picture. The encoder is a real TorchScript export of the token_fusion task (untrained,
tiny), scripted exactly as the engine scripts it."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import webdataset as wds
from torch import nn

from conftest import REPO, run_cli
from toolkit.tasks.token_fusion.example import TINY, example_samples

N_SAMPLES = 4  # x 6 cameras = 24 images


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A multi-sensor shard of the example samples and the tiny token_fusion image encoder (64 x 32 input)."""
    from toolkit.config import load_config
    from toolkit.engine.checkpoint import script_modules
    from toolkit.tasks import build_task

    root = tmp_path_factory.mktemp("embedding")
    with wds.TarWriter(str(root / "cams-000000.tar")) as sink:
        for sample in example_samples(root / "images", np.random.default_rng(0), n=N_SAMPLES):
            sink.write(sample)
    over = [f"task.{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in TINY.items()]
    task = build_task(load_config(None, ["task.name=token_fusion", *over]).task)
    torch.manual_seed(0)
    module = script_modules({"img_enc": task.exports(task.build_model())["img_enc"]})["img_enc"]
    torch.jit.save(module, str(root / "img_enc.jit"))
    return root


def _embed(workdir, out, *extra):
    from toolkit.embed import main

    return main(["--encoder", str(workdir / "img_enc.jit"), "--image-size", "64x32", "--shards",
                 str(workdir / "cams-000000.tar"), "--out", str(out), "--no-progress", *extra])


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_every_vector_finds_itself_first(workdir, tmp_path, kind, capsys):
    from toolkit.embedding.faiss_index import load_index, prepare
    from toolkit.embedding.store import EmbeddingStore
    from toolkit.index import main as index_main
    from toolkit.search import main as search_main

    emb = tmp_path / "emb"
    assert _embed(workdir, emb, "--chunk", "10") == 0
    store = EmbeddingStore(emb)
    records = store.records()
    assert store.rows == 6 * N_SAMPLES and len(store.chunks) == 3
    assert [r["row"] for r in records] == list(range(store.rows))
    assert {r["camera"] for r in records} == {"CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT",
                                              "CAM_BACK", "CAM_BACK_RIGHT"}
    assert records[0]["source"] == "shard" and records[0]["member"] == "cam_front_left.jpg"
    assert records[0]["class"] == "vehicle.car" and records[0]["scene"] == "scene-example"

    index_path = tmp_path / f"{kind}.faiss"
    assert index_main(["--embeddings", str(emb), "--type", kind, "--out", str(index_path)]) == 0
    index, info = load_index(index_path)
    assert info["type"] == kind and info["rows"] == store.rows and info["normalize"]
    scores, ids = index.search(prepare(store.vectors()), 1)
    assert ids[:, 0].tolist() == list(range(store.rows))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)

    # the CLI: a token query (CAM_FRONT by default) and a vector query, a contact sheet of the neighbours
    token = records[7]["sample_token"]
    capsys.readouterr()
    sheet, hits = tmp_path / "sheet.png", tmp_path / "hits.json"
    assert search_main(["--index", str(index_path), "--token", token, "-k", "5", "--sheet", str(sheet),
                        "--json", str(hits)]) == 0
    result = json.loads(hits.read_text())
    first = result["neighbours"][0]
    assert (first["sample_token"], first["camera"], first["rank"]) == (token, "CAM_FRONT", 1)
    assert len(result["neighbours"]) == 5 and token in capsys.readouterr().out
    from PIL import Image

    assert Image.open(sheet).size[0] > 0
    np.save(tmp_path / "q.npy", store.vectors()[11])
    assert search_main(["--index", str(index_path), "--vector", str(tmp_path / "q.npy"), "-k", "1",
                        "--json", str(hits)]) == 0
    assert json.loads(hits.read_text())["neighbours"][0]["row"] == 11


def test_real_dataroot_image_query_finds_its_own_image(workdir, tmp_path, real_dataroot):
    from toolkit.embed import main as embed_main
    from toolkit.index import main as index_main
    from toolkit.search import main as search_main

    emb, index = tmp_path / "real", tmp_path / "real.faiss"
    assert embed_main(["--encoder", str(workdir / "img_enc.jit"), "--image-size", "64x32", "--dataroot",
                       str(real_dataroot), "--version", "v1.0-mini", "--out", str(emb), "--no-progress"]) == 0
    assert index_main(["--embeddings", str(emb), "--out", str(index)]) == 0
    front = next((real_dataroot / "samples" / "CAM_FRONT").glob("*.jpg"))
    hits = tmp_path / "hits.json"
    assert search_main(["--index", str(index), "--image", str(front), "-k", "6", "--json", str(hits),
                        "--sheet", str(tmp_path / "sheet.png")]) == 0
    neighbours = json.loads(hits.read_text())["neighbours"]
    assert neighbours[0]["file"] == str(front.resolve()) and neighbours[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert len(neighbours) == 6 and neighbours[0]["source"] == "file"


def test_bev_encoder_feature_maps_are_mean_pooled(workdir, tmp_path):
    """bev's ``encoder`` export returns (N, C, H/8, W/8) feature maps: the export pools them to (N, C)."""
    from toolkit.config import load_config
    from toolkit.embedding.store import EmbeddingStore
    from toolkit.engine.checkpoint import script_modules
    from toolkit.tasks import build_task
    from toolkit.tasks.bev.example import TINY as BEV_TINY

    over = [f"task.{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in BEV_TINY.items()]
    task = build_task(load_config(None, ["task.name=bev", *over]).task)
    torch.manual_seed(0)
    jit = tmp_path / "encoder.jit"
    torch.jit.save(script_modules({"encoder": task.exports(task.build_model())["encoder"]})["encoder"], str(jit))
    from toolkit.embed import main

    assert main(["--encoder", str(jit), "--image-size", "64x32", "--shards", str(workdir / "cams-000000.tar"),
                 "--camera", "CAM_FRONT", "CAM_BACK", "--dtype", "float16", "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 0
    store = EmbeddingStore(tmp_path / "e")
    assert store.rows == 2 * N_SAMPLES and store.dim == BEV_TINY["feat_channels"]
    assert np.load(tmp_path / "e" / "vectors-000000.npy").dtype == np.float16
    assert [r["camera"] for r in store.records()[:2]] == ["CAM_FRONT", "CAM_BACK"]


class SlowEncoder(nn.Module):
    """A real image encoder (mean colour -> 8 features) that also spends ~0.1 s of matrix products per call,
    so a test can kill an export between chunks."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 8)
        self.register_buffer("w", torch.randn(256, 256) / 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.w
        for _ in range(60):
            y = torch.tanh(y @ self.w)
        return self.proj(x.mean((2, 3))) + 0.0 * y.mean()


@pytest.mark.slow  # > 15 s on 2 cores: left out of make test-fast
def test_killed_export_resumes_to_the_uninterrupted_table(workdir, tmp_path):
    from toolkit.embedding.store import EmbeddingStore

    torch.manual_seed(0)
    slow = tmp_path / "slow.jit"
    torch.jit.save(torch.jit.script(SlowEncoder().eval()), str(slow))
    args = [sys.executable, "-m", "toolkit.embed", "--encoder", str(slow), "--image-size", "64x32", "--shards",
            str(workdir / "cams-000000.tar"), "--chunk", "2", "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(killed)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while not (killed / "meta-000000.parquet").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = json.loads((killed / "manifest.json").read_text())
    written = sorted(p.name for p in killed.glob("meta-*.parquet"))
    assert not manifest["complete"] and 1 <= len(written) < 12, written
    with pytest.raises(ValueError, match="unfinished export"):
        EmbeddingStore(killed)

    resumed = run_cli([*args[1:], "--out", str(killed)], env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(written)} already there" in resumed.stdout
    whole = run_cli([*args[1:], "--out", str(tmp_path / "whole")], env={"OMP_NUM_THREADS": "1"})
    assert whole.returncode == 0, whole.stderr[-2000:]
    a, b = EmbeddingStore(killed), EmbeddingStore(tmp_path / "whole")
    assert a.rows == b.rows == 6 * N_SAMPLES
    np.testing.assert_allclose(a.vectors(), b.vectors(), rtol=0, atol=1e-6)
    assert a.table().equals(b.table())
    assert not list(killed.glob("*.tmp"))

    # other settings in the same folder are refused, not mixed in
    other = run_cli([*args[1:], "--out", str(killed), "--pool", "cls"])
    assert other.returncode == 2 and "other settings (differing: pool)" in other.stderr


def test_too_small_sets_for_ivfpq_are_one_line_errors(workdir, tmp_path):
    emb = tmp_path / "emb"
    assert _embed(workdir, emb) == 0
    for extra, says in (([], "256-centroid PQ"),
                        (["--nlist", "100", "--nbits", "2"], "cannot train --nlist 100 lists"),
                        (["--m", "3"], "--m 3 must divide the dimension 8")):
        res = run_cli(["-m", "toolkit.index", "--embeddings", str(emb), "--type", "ivfpq", "--out",
                       str(tmp_path / "x.faiss"), *extra])
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: IVF-PQ") and says in lines[0], res.stderr
        assert "--type flat" in lines[0] or "--m" in extra
    assert not (tmp_path / "x.faiss").exists()
    # small enough parameters build (with a one-line warning below Faiss' 39 points per centroid)
    res = run_cli(["-m", "toolkit.index", "--embeddings", str(emb), "--type", "ivfpq", "--nlist", "2", "--m", "4",
                   "--nbits", "2", "--nprobe", "2", "--out", str(tmp_path / "ok.faiss")])
    assert res.returncode == 0, res.stderr
    assert "warning: IVF-PQ: 24 training vectors < 39 x nlist = 78" in res.stderr


@pytest.mark.slow  # > 15 s on 2 cores: left out of make test-fast
def test_umap_writes_a_picture_and_one_coordinate_pair_per_row(workdir, tmp_path):
    from PIL import Image

    from toolkit.umap import main as umap_main, umap_learn

    assert umap_learn().__name__ == "umap" and hasattr(umap_learn(), "UMAP")  # umap-learn, not toolkit.umap
    emb, out = tmp_path / "emb", tmp_path / "umap"
    assert _embed(workdir, emb) == 0
    assert umap_main(["--embeddings", str(emb), "--color", "camera", "--out", str(out)]) == 0
    xy = np.load(out / "umap_coords.npy")
    assert xy.shape == (6 * N_SAMPLES, 2) and np.isfinite(xy).all()
    assert Image.open(out / "umap.png").size[0] > 100
    import pyarrow.parquet as pq

    table = pq.read_table(out / "umap.parquet")
    assert table.column_names == ["row", "x", "y", "camera"] and table.num_rows == 6 * N_SAMPLES


@pytest.mark.slow  # > 15 s on 2 cores: left out of make test-fast
def test_index_bench_measures_recall_against_exact_search():
    """``python -m toolkit.bench index`` at a small size: every row scored against Flat ground truth; the
    compressed IVF-PQ is smaller than Flat, the refine row (same IVF-PQ + exact vectors) at least as good;
    bad sizes are one-line errors (exit 2)."""
    from toolkit.bench import bench_index

    threads = torch.get_num_threads()
    out = bench_index(n=10_000, dim=32, queries=200, threads=1)
    # OpenMP's thread count is process-wide: later torch work in this process must keep its threads
    assert torch.get_num_threads() == threads and out["index_threads"] == 1
    assert out["ivfpq_params"].startswith("IVF256,PQ16x8")  # nlist = 2^floor(log2(4 sqrt(n))), m = dim / 2
    for name in ("hnsw", "ivfpq", "ivfpq_refine"):
        assert 0.0 <= out[f"{name}_recall@10"] <= 1.0 and out[f"{name}_qps"] > 0 and out[f"{name}_sweep"]
    assert out["hnsw_recall@10"] >= 0.9
    assert out["ivfpq_refine_recall@10"] >= out["ivfpq_recall@10"]
    assert out["ivfpq_bytes_per_vector"] < out["flat_bytes_per_vector"] == 4 * 32
    assert out["ivfpq_refine_bytes_per_vector"] > out["flat_bytes_per_vector"]  # it keeps the raw vectors
    for bad, says in ((["--dim", "31"], "--dim"), (["--n", "500"], "--n")):
        res = run_cli(["-m", "toolkit.bench", "index", *bad])
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "error" in res.stderr and says in res.stderr and "Traceback" not in res.stderr, res.stderr
