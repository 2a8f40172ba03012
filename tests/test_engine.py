"""The engine with real components: training runs, TensorBoard files read back, exact resume, JIT exports."""

import io
import json
import sys
import tarfile
import textwrap

import pytest
import torch

from conftest import REPO, run_cli, tiny_overrides
from toolkit.config import load_config
from toolkit.engine.checkpoint import Checkpointer
from toolkit.engine.trainer import Trainer

CONFIG = REPO / "configs" / "lidar_tokenizer.yaml"


def test_run_writes_checkpoints_exports_and_summary(trained_run):
    run, summary = trained_run
    assert summary["status"] == "finished" and summary["step"] == 6
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == sorted(f"iter_{s:09d}{suffix}" for s in (3, 6) for suffix in (".pt", "_dec.jit", "_ema.jit", "_enc.jit"))
    state = torch.load(run / "checkpoints" / "iter_000000006.pt", weights_only=True)
    assert state["step"] == 6 and state["config"]["task"]["name"] == "lidar_tokenizer"
    assert set(state) >= {"model", "ema", "optimizer", "scheduler", "scaler", "rng", "data", "config"}
    assert all(isinstance(v, torch.Tensor) for v in state["rng"]["0"].values())
    assert (run / "config.yaml").exists() and json.loads((run / "summary.json").read_text())["step"] == 6


def test_tensorboard_event_files_have_scalars_and_images(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = trained_run
    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/lr", "train/grad_norm", "perf/samples_per_s", "perf/step_time_s",
                "perf/peak_mem_mb", "data/skipped_samples", "train/ema_decay", "info/compression",
                "val/rmse_m", "val/mae_m", "val/rel_err", "val/loss", "val_ema/rmse_m"):
        assert tag in scalars, tag
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6]
    assert acc.Scalars("info/compression")[0].value == pytest.approx(32 * 1084 / (15 * 4 * 136))
    assert set(acc.Tags()["images"]) >= {"images/range_input", "images/range_recon", "images/range_abs_error"}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val/rmse_m" in row for row in lines)


def test_resume_restores_state_exactly_and_continues_identically(lidar_shards, tmp_path, trained_run):
    """Stop after the step-3 checkpoint (by deleting the later one), start again: the state equals the
    saved one and the continued run ends bit-identical to the uninterrupted run."""
    ref_run, _ = trained_run
    run = tmp_path / "resume"
    (run / "checkpoints").mkdir(parents=True)
    for f in (ref_run / "checkpoints").glob("iter_000000003*"):
        (run / "checkpoints" / f.name).write_bytes(f.read_bytes())
    saved = torch.load(run / "checkpoints" / "iter_000000003.pt", weights_only=True)

    trainer = Trainer(load_config(CONFIG, tiny_overrides(lidar_shards, run)))
    trainer.resume()
    assert trainer.step == 3
    for key, value in trainer.unwrapped.state_dict().items():
        assert torch.equal(value, saved["model"][key]), key
    opt = trainer.optimizer.state_dict()
    for pid, pstate in saved["optimizer"]["state"].items():
        for name, value in pstate.items():
            assert torch.equal(opt["state"][pid][name], value), (pid, name)
    assert trainer.scheduler.state_dict()["last_epoch"] == saved["scheduler"]["last_epoch"]

    summary = Trainer(load_config(CONFIG, tiny_overrides(lidar_shards, run))).fit()
    assert summary["resumed_from"].endswith("iter_000000003.pt") and summary["step"] == 6
    final = torch.load(run / "checkpoints" / "iter_000000006.pt", weights_only=True)
    ref = torch.load(ref_run / "checkpoints" / "iter_000000006.pt", weights_only=True)
    for key in ref["model"]:
        assert torch.equal(final["model"][key], ref["model"][key]), key
        assert torch.equal(final["ema"]["module"][key], ref["ema"]["module"][key]), key


def test_finished_run_is_a_no_op_when_started_again(lidar_shards, trained_run):
    run, first = trained_run
    before = (run / "checkpoints" / "iter_000000006.pt").stat().st_mtime_ns
    summary = Trainer(load_config(CONFIG, tiny_overrides(lidar_shards, run))).fit()
    assert summary["step"] == 6 and (run / "checkpoints" / "iter_000000006.pt").stat().st_mtime_ns == before
    # the results of the finished run (last evaluation, timings) are kept, not replaced by an empty rerun
    assert summary == json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(first))
    assert summary["last_eval"]


def test_jit_exports_load_in_a_fresh_process_and_match_eager(trained_run, tmp_path):
    """All exports hold the EMA weights (eval.ema is on): scripted and loaded without the package, they
    reproduce the eager EMA modules."""
    from toolkit.tasks.lidar_tokenizer.model import RangeAutoencoderExport, RangeDecoder, RangeEncoder

    run, _ = trained_run
    state = torch.load(run / "checkpoints" / "iter_000000006.pt", weights_only=True)
    from toolkit.config import from_dict
    from toolkit.tasks import build_task

    task = build_task(from_dict(state["config"]).task)
    ema = task.build_model().eval()
    ema.load_state_dict(state["ema"]["module"])
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 32, 1084, generator=gen) * 80 + 0.5
    x[:, :, 28:] = 0.0  # no-return pixels
    with torch.no_grad():
        latent = RangeEncoder(ema)(x)
        expected = {"enc": latent, "dec": RangeDecoder(ema)(latent), "ema": RangeAutoencoderExport(ema)(x)}
    torch.save({"x": x, "latent": latent, **{f"exp_{k}": v for k, v in expected.items()}}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        d = torch.load({str(tmp_path / 'io.pt')!r})
        ck = {str(run / 'checkpoints')!r} + "/iter_000000006_"
        out = {{"enc": torch.jit.load(ck + "enc.jit")(d["x"]), "dec": torch.jit.load(ck + "dec.jit")(d["latent"]),
               "ema": torch.jit.load(ck + "ema.jit")(d["x"])}}
        assert "toolkit" not in sys.modules
        for k, v in out.items():
            err = (v - d["exp_" + k]).abs().max().item()
            assert v.shape == d["exp_" + k].shape, k
            assert err <= 1e-5, (k, err)
        print("ok", sorted(out))
    """)
    res = run_cli([sys.executable, "-c", script], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "ok ['dec', 'ema', 'enc']" in res.stdout


def test_keep_prunes_old_checkpoints_and_their_exports(lidar_shards, tmp_path):
    run = tmp_path / "prune"
    Trainer(load_config(CONFIG, tiny_overrides(lidar_shards, run, **{"train.max_steps": 4, "checkpoint.every": 1,
                                                                        "checkpoint.keep": 2, "eval.every": 0,
                                                                        "log.image_every": 0}))).fit()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert [n for n in names if n.endswith(".pt")] == ["iter_000000003.pt", "iter_000000004.pt"]
    assert len(names) == 8


def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    ck = Checkpointer(tmp_path, keep=5)
    ck.write(1, {"model": {}, "step": 1})
    ck.write(2, {"model": {}, "step": 2})
    (tmp_path / "iter_000000002.pt").write_bytes(b"truncated")
    state, path = ck.load_latest()
    assert state["step"] == 1 and path.name == "iter_000000001.pt"


def test_ema_tracks_the_weights():
    from toolkit.engine.ema import EMA

    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.5, warmup=False)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, start + 0.5)



def test_ema_weighted_by_a_device_flag_equals_the_plain_update_and_a_skip_leaves_it_bit_for_bit():
    """The device-skip path (``good``: a 0-d bool tensor) gives bit for bit the host path's EMA when the
    step was good, and leaves the EMA (parameters and buffers) exactly as it was when it was not, with
    the warm-up decay (weight 0.9 at the first update) too."""
    from toolkit.engine.ema import EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    plain, flagged, skipped = (EMA(model, decay=0.99, warmup=True) for _ in range(3))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model[1].running_mean.add_(1.0)
    before = {k: v.clone() for k, v in skipped.module.state_dict().items()}
    plain.update(model)
    flagged.update(model, good=torch.tensor(True))
    skipped.update(model, good=torch.tensor(False))
    for key, value in plain.module.state_dict().items():
        assert torch.equal(flagged.module.state_dict()[key], value), key
        assert torch.equal(skipped.module.state_dict()[key], before[key]), key
    assert not torch.equal(plain.module[0].weight, before["0.weight"])

def test_gradient_accumulation_matches_the_large_batch(lidar_shards, tmp_path):
    """2 micro-batches of 2 give the same loss and gradient as one batch of 4 (same samples, unmasked
    mean loss). Compared before the optimizer: Adam's update is scale-invariant and would hide a wrong
    1/grad_accum factor."""
    common = {"train.max_steps": 1, "checkpoint.every": 1, "eval.every": 0, "log.image_every": 0,
              "task.masked_loss": False, "ema.enabled": False, "data.shuffle_buffer": 1, "optim.warmup_steps": 1}
    logged, states = [], []
    for name, extra in (("big", {"data.batch_size": 4, "train.grad_accum": 1}),
                        ("accum", {"data.batch_size": 2, "train.grad_accum": 2})):
        run = tmp_path / name
        Trainer(load_config(CONFIG, tiny_overrides(lidar_shards, run, **common, **extra))).fit()
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        logged.append([row for row in rows if "train/loss" in row][-1])
        states.append(torch.load(run / "checkpoints" / "iter_000000001.pt", weights_only=True)["model"])
    assert logged[0]["train/loss"] == pytest.approx(logged[1]["train/loss"], rel=1e-5)
    assert logged[0]["train/grad_norm"] == pytest.approx(logged[1]["train/grad_norm"], rel=1e-4)
    for key in states[0]:  # lr 2e-3: elements may differ only where float noise flips Adam's first step
        assert torch.allclose(states[0][key], states[1][key], atol=5e-4), key


def test_resume_reads_the_saved_data_position(lidar_shards, tmp_path, trained_run, capfd):
    """The stream is fast-forwarded by the position stored in the checkpoint, not one recomputed from the
    config: a position saved with another batch size cannot be replayed, so the stream is reseeded, said so."""
    ref_run, _ = trained_run
    run = tmp_path / "changed"
    (run / "checkpoints").mkdir(parents=True)
    for f in (ref_run / "checkpoints").glob("iter_000000003*"):
        (run / "checkpoints" / f.name).write_bytes(f.read_bytes())
    saved = torch.load(run / "checkpoints" / "iter_000000003.pt", weights_only=True)["data"]
    assert saved == {"batches_per_rank": 3, "batch_size": 4, "num_workers": 0}
    summary = Trainer(load_config(CONFIG, tiny_overrides(lidar_shards, run, **{"data.batch_size": 2}))).fit()
    err = capfd.readouterr().err
    assert summary["step"] == 6 and "cannot be replayed: the stream is reseeded" in err
    assert "fast-forwarding" not in err


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_local_tar_reader_gives_webdataset_s_members(tmp_path, fmt):
    """The loader's own tar parser (toolkit.data.pipeline._read_local_tar) yields the members tarfile's
    stream mode gives webdataset, for long names, pax headers, directories and meta members; a cut-off
    file and a damaged header are errors (counted skips in the loaders)."""
    from webdataset import tariterators

    from toolkit.data.pipeline import _KeepKeys, _read_local_tar

    path = tmp_path / "x.tar"
    long_dir = "d" * 60 + "/" + "e" * 60 if fmt != tarfile.GNU_FORMAT else "f" * 150
    with tarfile.open(path, "w", format=fmt) as tar:
        info = tarfile.TarInfo("dir")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for i, (name, size) in enumerate([("a.range.npy", 0), ("a.json", 700), ("__meta__", 3),
                                          (f"{long_dir}/b.range.npy", 1025), ("b.json", 512)]):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes([i + 1]) * size))
    for select in (None, _KeepKeys(["range.npy"])):
        ref = [(d["fname"], d["data"]) for d in tariterators.tar_file_expander(
            tariterators.url_opener([{"url": str(path)}]), select_files=select) if d]
        assert list(_read_local_tar(str(path), select)) == ref and ref
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:1800])
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        list(_read_local_tar(str(cut), None))
    bad = tmp_path / "bad.tar"
    bad.write_bytes(data[:600] + b"\x07" + data[601:])
    with pytest.raises(tarfile.HeaderError, match="checksum"):
        list(_read_local_tar(str(bad), None))
