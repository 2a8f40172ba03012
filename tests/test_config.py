"""Config loading: YAML over typed dataclasses, dotted overrides, errors naming the key."""

import pytest

from conftest import REPO, run_cli
from toolkit.config import ConfigError, from_dict, load_config, to_dict

CONFIG = REPO / "configs" / "lidar_tokenizer.yaml"


def test_overrides_are_typed_and_applied():
    cfg = load_config(CONFIG, ["train.max_steps=7", "optim.betas=[0.8,0.9]", "task.latent_channels=16",
                               "train.precision=bf16"])
    assert cfg.train.max_steps == 7 and cfg.optim.betas == [0.8, 0.9]
    assert cfg.task.latent_channels == 16 and cfg.train.precision == "bf16"
    assert cfg.run.name == "lidar_tokenizer"
    assert from_dict(to_dict(cfg)) == cfg  # the dict stored in checkpoints rebuilds the same config


@pytest.mark.parametrize("override,message", [
    ("train.lrr=1", "unknown key 'train.lrr'"),
    ("task.nope=1", "unknown key 'task.nope'"),
    ("train.max_steps=abc", "train.max_steps"),
    ("train.precision=fp64", "train.precision='fp64' is not one of"),
    ("task.normalization=cubic", "task.normalization='cubic'"),
    ("task.name=nonexistent", "task.name='nonexistent' is unknown"),
    ("data.batch_size=0", "data.batch_size must be >= 1"),
    ("train.strategy=zero", "train.strategy='zero' is not one of"),
    ("deepspeed.stage=4", "deepspeed.stage=4 is not one of"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")) as info:
        load_config(CONFIG, [override])
    assert f"override '{override}'" in str(info.value) or str(CONFIG) in str(info.value)


def test_unknown_key_in_the_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text().replace("  batch_size: 16", "  batchsize: 16"))
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'data.batchsize'"):
        load_config(bad)


def test_missing_file_and_malformed_override():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(CONFIG, ["train.max_steps"])


def test_train_cli_reports_config_errors_and_prints_config():
    res = run_cli(["-m", "toolkit.train", "--config", str(CONFIG), "train.foo=1"])
    assert res.returncode == 2 and "unknown key 'train.foo'" in res.stderr
    res = run_cli(["-m", "toolkit.train", "--config", str(CONFIG), "--print-config", "train.max_steps=3"])
    assert res.returncode == 0 and "max_steps: 3" in res.stdout and "# run folder: runs/lidar_tokenizer" in res.stdout
    res = run_cli(["-m", "toolkit.train", "--help"])
    assert res.returncode == 0 and "train.precision" in res.stdout and "torchrun" in res.stdout
