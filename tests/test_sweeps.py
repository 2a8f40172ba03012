"""Sweeps (launch/sweep.py): expansion and names, bad sweep files, the local runner (real toolkit.train
subprocesses on the test shards, a failing point, a resubmission), and evaluation over a sweep."""

import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli, run_finished, tiny_overrides
from launch.sweep import load_sweep, point_name, read_manifest, seed_major

CONFIG = str(REPO / "configs" / "lidar_tokenizer.yaml")


def _write(tmp_path: Path, data: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_grid_and_points_times_seeds_expand_to_named_runs(tmp_path):
    path = _write(tmp_path, {"config": CONFIG, "name": "abl", "root": str(tmp_path / "runs"),
                             "overrides": ["train.max_steps=7"],
                             "points": [{"name": "ref"}, {"task.channels": 4, "optim.lr": 0.002}],
                             "grid": {"task.latent_channels": [2, 4], "optim.schedule": ["cosine", "constant"]},
                             "seeds": [3, 5]})
    sweep = load_sweep(path)
    points = [("ref", {}), ("channels-4_lr-0.002", {"task.channels": 4, "optim.lr": 0.002})] + [
        (f"latent_channels-{c}_schedule-{s}", {"task.latent_channels": c, "optim.schedule": s})
        for c in (2, 4) for s in ("cosine", "constant")]
    expected = [(f"{p}_s{seed}", p, seed, o) for p, o in points for seed in (3, 5)]
    assert [(r.name, r.point, r.seed, r.overrides) for r in sweep.runs] == expected
    for r in sweep.runs:
        assert r.dir == str((tmp_path / "runs" / "abl" / r.name).resolve())
        assert f"run.seed={r.seed}" in r.args and f"run.dir={r.dir}" in r.args and r.args[0] == "train.max_steps=7"
        assert r.max_steps == 7
    # names are stable: the same file gives the same runs; clashing short keys keep the whole key
    assert [r.name for r in load_sweep(path).runs] == [r.name for r in sweep.runs]
    # runs start seed by seed, so the pairs of a comparison finish together
    assert [r.name for r in seed_major(sweep.runs)][:6] == [f"{p}_s3" for p, _ in points]
    assert point_name({"task.a.size": 1, "task.b.size": 2}) == "task.a.size-1_task.b.size-2"
    assert point_name({"data.train": "data/x-{000..002}.tar"}) == "train-data-x-000..002-.tar"


@pytest.mark.parametrize("change, message", [
    ({"sedes": [0, 1]}, "unknown key(s) ['sedes']"),
    ({"grid": {}}, "'grid' is empty"),
    ({"grid": {"task.channels": []}}, "grid.task.channels must be a non-empty list"),
    ({"seeds": [0, 1, 0]}, "'seeds' lists [0] more than once"),
    ({"config": "configs/nope.yaml"}, "config 'configs/nope.yaml' does not exist"),
    ({"grid": {"task.chanels": [4]}}, "run chanels-4_s0: override 'task.chanels=4': unknown key 'task.chanels'"),
    ({"points": [{"run.dir": "x"}]}, "run.* is set by the sweep"),
    ({"points": [{"task.channels": 4}, {"task.channels": 4}]}, "both named 'channels-4'"),
])
def test_bad_sweep_files_get_one_line_and_exit_2(tmp_path, capsys, change, message):
    from launch.__main__ import main

    data = {"config": CONFIG, "root": str(tmp_path / "runs"), "grid": {"task.channels": [4]}, "seeds": [0]}
    data.update(change)
    assert main(["--sweep", str(_write(tmp_path, data)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert str(tmp_path / "sweep.yaml") in err
    assert not (tmp_path / "runs").exists()


def test_dry_run_lists_runs_and_overrides_and_runs_nothing(tmp_path, capsys):
    from launch.__main__ import main

    path = _write(tmp_path, {"config": CONFIG, "root": str(tmp_path / "runs"),
                             "grid": {"task.channels": [4, 8]}, "seeds": [0, 1]})
    assert main(["--sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[2:]] == ["channels-4_s0", "channels-4_s1", "channels-8_s0", "channels-8_s1"]
    assert all("task.channels=" in line and "[new]" in line for line in out[2:])
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def local_sweep(lidar_shards, tmp_path_factory):
    """A 3-run sweep trained by ``python -m launch --sweep`` (2 at once): two points and one that fails."""
    tmp = tmp_path_factory.mktemp("sweep")
    common = [o for o in tiny_overrides(lidar_shards, tmp / "unused", **{"train.max_steps": 2, "checkpoint.every": 2,
                                                                       "eval.every": 2, "log.every": 1})
              if not o.startswith("run.")]
    path = _write(tmp, {"config": CONFIG, "name": "tiny", "root": str(tmp / "runs"), "overrides": common,
                        "points": [{"name": "broken", "data.train": str(tmp / "missing-*.tar")}],
                        "grid": {"task.channels": [4, 8]}, "seeds": [0]})
    res = run_cli(["-m", "launch", "--sweep", str(path), "--parallel", "2"], timeout=600)
    return path, tmp / "runs" / "tiny", res


def test_local_sweep_records_a_failing_point_and_finishes_the_others(local_sweep):
    path, sweep_dir, res = local_sweep
    assert res.returncode == 1, res.stderr[-3000:]
    manifest = read_manifest(sweep_dir / "manifest.json")
    status = {r["name"]: r["status"] for r in manifest["runs"]}
    assert status == {"broken_s0": "failed", "channels-4_s0": "finished", "channels-8_s0": "finished"}, res.stderr
    broken = next(r for r in manifest["runs"] if r["name"] == "broken_s0")
    assert broken["returncode"] == 2 and "missing-" in broken["error"]
    assert manifest["threads_per_run"] == max(1, int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())) // 2)
    for name in ("channels-4_s0", "channels-8_s0"):
        assert run_finished(sweep_dir / name)
        cfg = yaml.safe_load((sweep_dir / name / "config.yaml").read_text())
        assert cfg["task"]["channels"] == int(name.split("-")[1].split("_")[0]) and cfg["run"]["seed"] == 0
    assert "1 failed, 2 finished" in res.stdout


def test_resubmitted_sweep_skips_finished_runs_and_duplicates_nothing(local_sweep):
    path, sweep_dir, _ = local_sweep
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("*") if p.is_file() and "logs" not in p.parts
              and p.name != "manifest.json" and "broken" not in str(p)}
    res = run_cli(["-m", "launch", "--sweep", str(path), "--parallel", "2"], timeout=300)
    assert res.returncode == 1  # the broken point fails again
    assert "channels-4_s0: finished already, skipped" in res.stderr and "channels-8_s0: finished already" in res.stderr
    after = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("*") if p.is_file() and "logs" not in p.parts
             and p.name != "manifest.json" and "broken" not in str(p)}
    assert after == before  # no file of a finished run touched, no new run folder
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["broken_s0", "channels-4_s0", "channels-8_s0",
                                                                          "logs"]
    runs = read_manifest(sweep_dir)["runs"]
    assert [r["skipped"] for r in runs if r["status"] == "finished"] == [True, True]


def test_evaluate_sweep_caches_per_run_and_skips_cached(local_sweep):
    _, sweep_dir, _ = local_sweep
    manifest = str(sweep_dir / "manifest.json")
    res = run_cli(["-m", "toolkit.evaluate", "--sweep", manifest, "--draws", "2"], timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    cached = {}
    for name in ("channels-4_s0", "channels-8_s0"):
        files = list((sweep_dir / name / "eval").glob("*.json"))
        assert len(files) == 1, files
        cached[name] = (files[0], files[0].stat().st_mtime_ns, json.loads(files[0].read_text()))
        assert len(cached[name][2]["draws"]) == 2 and "loss" in cached[name][2]["metrics"]
    assert "broken_s0: not finished (failed), skipped" in res.stdout
    again = run_cli(["-m", "toolkit.evaluate", "--sweep", manifest, "--draws", "2"], timeout=300)
    assert again.returncode == 0 and "0 evaluated, 2 cached, 0 failed" in again.stdout, again.stdout
    assert all(f.stat().st_mtime_ns == t for f, t, _ in cached.values())


def test_every_sweep_run_logs_its_overrides_and_final_metrics_as_hparams(local_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, sweep_dir, _ = local_sweep
    for name, channels in (("channels-4_s0", 4), ("channels-8_s0", 8)):
        acc = EventAccumulator(str(sweep_dir / name / "tb"))  # the run's own log dir, no subfolder
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        params = start.session_start_info.hparams
        assert params["task.channels"].number_value == channels and params["run.seed"].number_value == 0
        assert params["sweep.point"].string_value == name[:-3]
        exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        tags = {m.name.tag for m in exp.metric_infos}
        final = json.loads((sweep_dir / name / "summary.json").read_text())["last_eval"]
        assert tags == {k for k in final if k.startswith(("val/", "val_ema/"))} and "val/loss" in tags
        logged = {e.step: e.value for e in acc.Scalars("val/loss")}
        assert logged[2] == pytest.approx(final["val/loss"])


def test_report_of_a_sweep_without_metric_is_the_runs_table(local_sweep, capsys):
    from toolkit.report import main

    _, sweep_dir, _ = local_sweep
    out = sweep_dir / "table.md"
    assert main(["--sweep", str(sweep_dir / "manifest.json"), "--out", str(out)]) == 0
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| lidar_tokenizer")]
    assert [r.split(" | ")[0] for r in rows] == ["| lidar_tokenizer [channels-4]", "| lidar_tokenizer [channels-8]"]
    assert "Not finished: broken_s0 (failed)" in table and table.strip() in capsys.readouterr().out
