"""Bad input: truncated shards and corrupt samples are counted skips; missing paths are clear errors."""

import io
import shutil
import tarfile

import pytest

from conftest import run_cli
from toolkit.data.pipeline import ShardListError, eval_loader, expand_shards, train_loader
from toolkit.lidar.shard_format import load_npy


def _decode(sample, rng):
    return {"range": load_npy(sample["range.npy"], "range.npy")[:, :8]}


def _count(loader):
    samples = 0
    for batch in loader:
        assert set(batch) == {"range"}  # the skip count never rides in the batch
        samples += len(batch["range"])
    return samples, loader.skipped


def test_truncated_shard_is_skipped_and_counted(lidar_shards, tmp_path):
    src = lidar_shards["dir"] / "train-000000.tar"
    good = tmp_path / "good-000000.tar"
    shutil.copy(src, good)
    cut = tmp_path / "good-000001.tar"
    data = src.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])  # a shard cut off mid-sample
    samples, skipped = _count(eval_loader(str(tmp_path / "good-{000000..000001}.tar"), _decode, 2))
    assert skipped >= 1
    assert 3 + 1 <= samples < 6  # all of the good shard, what precedes the cut of the other


def test_corrupt_sample_is_skipped_and_counted(lidar_shards, tmp_path):
    out = tmp_path / "corrupt-000000.tar"
    with tarfile.open(lidar_shards["dir"] / "train-000000.tar") as src, tarfile.open(out, "w") as dst:
        for i, member in enumerate(src.getmembers()):
            payload = src.extractfile(member).read()
            if member.name.endswith("range.npy") and i < 7:  # damage the first sample's range map
                payload = payload[:40]
            info = tarfile.TarInfo(member.name)
            info.size = len(payload)
            dst.addfile(info, io.BytesIO(payload))
    samples, skipped = _count(eval_loader(str(out), _decode, 1))
    assert (samples, skipped) == (2, 1)
    # the training stream keeps going and reports the skips too
    loader = train_loader(str(out), _decode, 2, seed=0, num_workers=0, shuffle_buffer=1)
    it = iter(loader)
    for _ in range(3):
        next(it)
    assert loader.skipped >= 1


def test_missing_shards_are_a_clear_error(tmp_path):
    with pytest.raises(ShardListError, match="matches no file"):
        expand_shards(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(ShardListError, match="do not exist"):
        expand_shards(str(tmp_path / "x-{000000..000002}.tar"))


def test_missing_dataroot_is_a_clear_error(tmp_path, real_dataroot):
    res = run_cli(["-m", "shards", "nuscenes-lidar", "--dataroot", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = run_cli(["-m", "shards", "nuscenes-lidar", "--dataroot", str(real_dataroot), "--version", "v1.0-trainval",
                   "--out", str(tmp_path / "o")])
    assert res.returncode == 2 and "no table folder 'v1.0-trainval'" in res.stderr and "v1.0-mini" in res.stderr


def test_train_with_missing_shards_fails_clearly(tmp_path):
    res = run_cli(["-m", "toolkit.train", "--config", "configs/lidar_tokenizer.yaml", f"run.dir={tmp_path / 'r'}",
                   f"data.train={tmp_path}/none-*.tar", "data.val="])
    assert res.returncode == 2 and "matches no file" in res.stderr
