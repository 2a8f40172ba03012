"""Reliability under faults (issue 14): real training processes, real files, real signals, a real full
disk; no mocks. Each test reproduces one fault and asserts what the run does about it.

Runs use the tiny preset on the session's synthetic shards (tests/conftest.py); every subprocess has a
timeout, so a hang fails the test instead of blocking it. Random choices are seeded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_cli, tiny_overrides
from toolkit.config import ConfigError, load_config
from toolkit.engine.checkpoint import Checkpointer
from toolkit.engine.step import NonFiniteError
from toolkit.engine.trainer import Trainer

pytestmark = pytest.mark.faults

CONFIG = REPO / "configs" / "lidar_tokenizer.yaml"
STEPS = 8  #: the reference run: checkpoints at 2, 4, 6, 8 (all kept), no exports, no validation


def fault_overrides(shards: dict, run: Path, **extra) -> list[str]:
    """A quick run: log every step (so a test can follow it), checkpoints every 2 steps, all kept."""
    base = {"train.max_steps": STEPS, "checkpoint.every": 2, "checkpoint.keep": 10, "log.every": 1,
            "eval.every": 0, "log.image_every": 0, "data.val": "", "checkpoint.export_jit": False}
    return tiny_overrides(shards, run, **{**base, **extra})


def train_cmd(overrides: list[str]) -> list[str]:
    return ["-m", "toolkit.train", "--config", str(CONFIG), *overrides]


def start(overrides: list[str], log: Path) -> subprocess.Popen:
    """Start a training process in its own session; stdout+stderr go to ``log`` (read while it runs)."""
    return subprocess.Popen([sys.executable, *train_cmd(overrides)], cwd=REPO, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            start_new_session=True)


def wait_until(condition, proc: subprocess.Popen | None = None, timeout: float = 120.0, what: str = "") -> None:
    t0 = time.monotonic()
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}")
        if time.monotonic() - t0 > timeout:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def finish(proc: subprocess.Popen, timeout: float = 120.0) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"process did not end within {timeout} s") from None


def logged_step(run: Path) -> int:
    """The newest training step in ``metrics.jsonl`` (0 if none yet)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # a line being written
            continue
        if "perf/step_time_s" in row:
            steps.append(row["step"])
    return max(steps)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_checkpoints(src: Path, dst: Path, steps) -> None:
    (dst / "checkpoints").mkdir(parents=True, exist_ok=True)
    for step in steps:
        for f in (src / "checkpoints").glob(f"iter_{step:09d}*"):
            shutil.copy2(f, dst / "checkpoints" / f.name)


def assert_same_training_state(a: Path, b: Path) -> None:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
        assert torch.equal(sa["ema"]["module"][key], sb["ema"]["module"][key]), key
    for pid, pstate in sa["optimizer"]["state"].items():
        for name, value in pstate.items():
            assert torch.equal(value, sb["optimizer"]["state"][pid][name]), (pid, name)


def all_finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point())


@pytest.fixture(scope="module")
def reference(lidar_shards, tmp_path_factory) -> Path:
    """The uninterrupted run every fault is compared with (in this process)."""
    run = tmp_path_factory.mktemp("faults") / "reference"
    summary = Trainer(load_config(CONFIG, fault_overrides(lidar_shards, run))).fit()
    assert summary["status"] == "finished" and summary["step"] == STEPS
    return run


# --- 1. checkpoints: pruning, quarantine, integrity ----------------------------------------------------
def test_foreign_and_unreadable_checkpoints_are_quarantined_not_counted(lidar_shards, reference, tmp_path):
    """keep=1 with a foreign iter_000000999.pt (another task's checkpoint) and an unreadable
    iter_000000998.pt: both are moved to quarantine/ byte for byte, the run resumes from its own newest
    checkpoint and ends with its final checkpoint and exports in place."""
    run = tmp_path / "run"
    copy_checkpoints(reference, run, (2, 4))
    ck = run / "checkpoints"
    torch.save({"model": {"head.weight": torch.zeros(3, 3)}, "step": 999, "config": {"task": {"name": "cilp_fusion"}}},
               ck / "iter_000000999.pt")
    (ck / "iter_000000998.pt").write_bytes(b"not a checkpoint at all")
    foreign, garbage = sha(ck / "iter_000000999.pt"), sha(ck / "iter_000000998.pt")

    res = run_cli(train_cmd(fault_overrides(lidar_shards, run, **{"checkpoint.keep": 1, "checkpoint.export_jit": True})),
                  timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"].endswith("iter_000000004.pt") and summary["step"] == STEPS
    names = sorted(p.name for p in ck.iterdir() if p.is_file())
    assert names == [f"iter_{STEPS:09d}{s}" for s in (".pt", "_dec.jit", "_ema.jit", "_enc.jit")]
    assert Checkpointer.load(ck / f"iter_{STEPS:09d}.pt")["step"] == STEPS
    q = ck / "quarantine"
    assert sha(q / "iter_000000999.pt") == foreign and sha(q / "iter_000000998.pt") == garbage
    assert "iter_000000999.pt' belongs to task 'cilp_fusion'" in res.stderr and "moved iter_000000998.pt" in res.stderr


def test_only_unusable_checkpoints_refuse_a_fresh_start(lidar_shards, tmp_path):
    """A folder whose every checkpoint is unreadable: starting from step 0 is refused (exit 2, one line,
    files untouched) until checkpoint.allow_fresh_start=true, which quarantines them first."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    bad = run / "checkpoints" / "iter_000000005.pt"
    bad.write_bytes(b"\x00" * 1000)
    res = run_cli(train_cmd(fault_overrides(lidar_shards, run, **{"train.max_steps": 1})), timeout=120)
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refusing to start again from step 0" in errors[0]
    assert "checkpoint.allow_fresh_start=true" in errors[0] and "iter_000000005.pt" in errors[0]
    assert bad.read_bytes() == b"\x00" * 1000 and not (run / "checkpoints" / "quarantine").exists()

    res = run_cli(train_cmd(fault_overrides(lidar_shards, run, **{"train.max_steps": 1,
                                                                   "checkpoint.allow_fresh_start": True})), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run / "checkpoints" / "quarantine" / "iter_000000005.pt").read_bytes() == b"\x00" * 1000
    assert Checkpointer.load(run / "checkpoints" / "iter_000000001.pt")["step"] == 1


def test_bit_flip_is_detected_and_the_previous_checkpoint_used(lidar_shards, reference, tmp_path):
    """One flipped bit inside a tensor of the newest checkpoint (torch.load does not notice): its content
    hash does not match, it is quarantined with a warning, the run resumes from the previous one and
    ends bit-identical to the uninterrupted run."""
    run = tmp_path / "run"
    copy_checkpoints(reference, run, (4, 6))
    newest = run / "checkpoints" / "iter_000000006.pt"
    data = bytearray(newest.read_bytes())
    rng = random.Random(14)
    data[rng.randrange(len(data) // 3, 2 * len(data) // 3)] ^= 1 << rng.randrange(8)
    newest.write_bytes(bytes(data))
    torch.load(newest, weights_only=True)  # still loads: only the hash can tell

    res = run_cli(train_cmd(fault_overrides(lidar_shards, run)), timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "iter_000000006.pt' is damaged" in res.stderr and "resuming from iter_000000004.pt" in res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["resumed_from"].endswith("iter_000000004.pt")
    assert (run / "checkpoints" / "quarantine" / "iter_000000006.pt").read_bytes() == bytes(data)
    assert_same_training_state(run / "checkpoints" / f"iter_{STEPS:09d}.pt", reference / "checkpoints" / f"iter_{STEPS:09d}.pt")


def test_stale_tmp_orphaned_and_missing_exports_are_handled_at_start(lidar_shards, tmp_path, capfd):
    """What a killed save leaves behind: a stale .tmp is removed, exports whose .pt is gone are removed,
    a checkpoint whose recorded exports are missing is reported by file name."""
    run = tmp_path / "run"
    cfg = load_config(CONFIG, fault_overrides(lidar_shards, run, **{"train.max_steps": 2, "checkpoint.export_jit": True}))
    Trainer(cfg).fit()
    ck = run / "checkpoints"
    (ck / "iter_000000002_dec.jit").unlink()
    (ck / "iter_000000004.pt.tmp").write_bytes(b"half")
    shutil.copy(ck / "iter_000000002_enc.jit", ck / "iter_000000003_enc.jit")  # an orphan
    capfd.readouterr()
    trainer = Trainer(cfg)
    assert trainer.resume() and trainer.step == 2
    err = capfd.readouterr().err
    assert not (ck / "iter_000000004.pt.tmp").exists() and not (ck / "iter_000000003_enc.jit").exists()
    assert "removed iter_000000004.pt.tmp" in err and "removed orphaned export iter_000000003_enc.jit" in err
    assert "iter_000000002.pt: its exports are missing: iter_000000002_dec.jit" in err


# --- 2. non-finite values ----------------------------------------------------------------------------
def test_divergence_stops_the_run_and_no_checkpoint_holds_non_finite_values(lidar_shards, tmp_path):
    """optim.lr=1e6 (a real divergence, not an injected NaN) with a loader worker: non-finite steps are
    skipped, 4 in a row stop the run with exit 1 naming the step and the last finite checkpoint, in
    bounded time; non-finite validation metrics are reported, not a crash; every iter_N.pt and export
    written holds finite values only."""
    run = tmp_path / "run"
    overrides = fault_overrides(lidar_shards, run, **{"optim.lr": 1e6, "train.max_steps": 60, "train.max_bad_steps": 4,
                                                      "checkpoint.export_jit": True, "data.num_workers": 1,
                                                      "data.val": lidar_shards["val"], "eval.every": 2})
    t0 = time.monotonic()
    res = run_cli(train_cmd(overrides), timeout=180)
    assert res.returncode == 1, res.stderr[-3000:]
    assert time.monotonic() - t0 < 120
    error = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "4 optimizer steps in a row (since step" in error[0] and "non-finite loss" in error[0]
    assert "last finite checkpoint:" in error[0] and "iter_" in error[0]
    assert "warning: non-finite validation metrics at step 2: val/rmse_m" in res.stderr  # reported, no crash
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("train/skipped_steps", 0) for r in rows) >= 3  # logged before the 4th
    ckpts = sorted((run / "checkpoints").glob("iter_*.pt"))
    assert ckpts, "the steps before the divergence were checkpointed"
    for path in ckpts:
        state = Checkpointer.load(path)  # weights_only=True, hash checked
        assert all_finite(state["model"]) and all_finite(state["ema"]["module"]), path
    for path in (run / "checkpoints").glob("iter_*.jit"):
        module = torch.jit.load(str(path))
        assert all_finite(dict(module.state_dict())), path


def test_a_checkpoint_is_never_written_from_non_finite_weights(tmp_path):
    model = torch.nn.Linear(3, 2)
    ck = Checkpointer(tmp_path, parts={"model": model})
    ck.save(1)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"refusing to write .*iter_000000002.pt: non-finite weights in model.weight"):
        ck.save(2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_000000001.pt"]


# --- 3. one writer per run folder ----------------------------------------------------------------------
def test_second_writer_exits_2_within_5_s_and_leaves_the_first_run_alone(lidar_shards, tmp_path):
    run = tmp_path / "run"
    overrides = fault_overrides(lidar_shards, run, **{"train.max_steps": 10_000, "checkpoint.keep": 10_000})
    first = start(overrides, tmp_path / "first.log")
    try:
        wait_until(lambda: (run / "checkpoints" / "iter_000000002.pt").exists(), first, what="the first checkpoint")
        before = {p.name: sha(p) for p in (run / "checkpoints").glob("iter_*.pt")}
        t0 = time.monotonic()
        second = run_cli(train_cmd(overrides), timeout=60)
        elapsed = time.monotonic() - t0
        assert second.returncode == 2, second.stderr[-3000:]
        assert elapsed < 5.0, f"the second writer took {elapsed:.1f} s to fail"
        assert f"run folder '{run}' is in use by pid {first.pid} on host" in second.stderr
        assert first.poll() is None, "the first run keeps training"
        for name, digest in before.items():
            assert sha(run / "checkpoints" / name) == digest, name
    finally:
        first.send_signal(signal.SIGTERM)
        assert finish(first) == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "stopped"


# --- 5. signals, kill -9, data that never yields ---------------------------------------------------------
def test_sigint_checkpoints_and_exits_and_a_second_one_aborts(lidar_shards, tmp_path):
    """Ctrl-C: a checkpoint at the next step and exit 0, as SIGTERM (checkpoint.every=0: only then).
    Resumed on a data stream that never yields (a ``pipe:`` shard that hangs, so the run never reaches
    a step to checkpoint at), Ctrl-C twice: the second aborts at once (exit 130); the earlier
    checkpoint is untouched."""
    run = tmp_path / "run"
    overrides = fault_overrides(lidar_shards, run, **{"train.max_steps": 10_000, "checkpoint.every": 0})
    proc = start(overrides, tmp_path / "a.log")
    wait_until(lambda: logged_step(run) >= 2, proc, what="step 2")
    proc.send_signal(signal.SIGINT)
    assert finish(proc, 60) == 0, (tmp_path / "a.log").read_text()[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped" and "received SIGINT" in (tmp_path / "a.log").read_text()
    saved = run / "checkpoints" / f"iter_{summary['step']:09d}.pt"
    assert [p.name for p in (run / "checkpoints").glob("*.pt")] == [saved.name]
    digest = sha(saved)

    log = tmp_path / "b.log"
    proc = start([*overrides, "data.train=pipe:sleep 600"], log)  # a stalled stream: no step ever comes
    try:
        wait_until(lambda: "fast-forwarding the data stream" in log.read_text(), proc, what="the resume")
        time.sleep(0.5)  # into the loader's blocking read
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: "received SIGINT" in log.read_text(), proc, 30, "the first Ctrl-C")
        time.sleep(0.7)  # a second key press, not the same one passed on (toolkit.train.DEBOUNCE_S)
        assert proc.poll() is None, "the stalled run cannot have reached a checkpoint"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert finish(proc, 30) == 130, log.read_text()[-3000:]
        assert time.monotonic() - t0 < 10
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the pipe's sleep
        except ProcessLookupError:
            pass
    assert "aborted by a second Ctrl-C" in log.read_text()
    assert sha(saved) == digest and Checkpointer.load(saved)["step"] == summary["step"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == [saved.name]


def test_kill_9_at_random_points_resumes_to_the_same_result(lidar_shards, reference, tmp_path):
    """SIGKILL at seeded random steps (mid-step or mid-save), 3 times; each restart resumes from the
    newest complete checkpoint (the dead process's lock never blocks it) and the run ends bit-identical
    to the uninterrupted one."""
    run = tmp_path / "run"
    overrides = fault_overrides(lidar_shards, run)
    rng = random.Random(1914)
    for trial in range(3):
        done = logged_step(run)
        target = min(STEPS - 1, done + rng.randint(1, 3))
        proc = start(overrides, tmp_path / f"kill{trial}.log")
        wait_until(lambda: logged_step(run) >= target, proc, what=f"step {target}")
        time.sleep(rng.uniform(0.0, 0.15))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    res = run_cli(train_cmd(overrides), timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["step"] == STEPS
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert_same_training_state(run / "checkpoints" / f"iter_{STEPS:09d}.pt", reference / "checkpoints" / f"iter_{STEPS:09d}.pt")


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_empty_or_foreign_shards_are_a_clear_error_in_bounded_time(lidar_shards, tmp_path):
    """An empty tar or another task's shards: training refuses at start-up (exit 2, one line naming the
    spec, the shard and the missing member); a stream of them (past that check) ends with an error
    naming the shards instead of spinning, in a worker process too."""
    empty = _tar(tmp_path / "empty-000000.tar", {})
    foreign = _tar(tmp_path / "foreign-000000.tar", {"s0.rgb.png": b"png", "s0.cls": b"1", "s1.rgb.png": b"png"})
    for shard, expected in ((empty, "is empty"), (foreign, "has no range.npy (its first sample 's0' holds cls, rgb.png)")):
        res = run_cli(train_cmd(fault_overrides(lidar_shards, tmp_path / shard.stem, **{"data.train": shard})), timeout=60)
        assert res.returncode == 2, res.stderr[-3000:]
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"data.train '{shard}'" in errors[0] and expected in errors[0], res.stderr[-2000:]

    script = (f"from toolkit.data.pipeline import train_loader\n"
              f"loader = train_loader({str(foreign)!r}, lambda s, r: s, 2, seed=0, num_workers=1, keys=('range.npy',))\n"
              f"next(iter(loader))\n")
    res = run_cli([sys.executable, "-c", script], timeout=60)
    assert res.returncode != 0
    assert "NoSamplesError" in res.stderr and "shards in a row gave no sample with the members range.npy" in res.stderr
    assert "foreign-000000.tar' has no range.npy" in res.stderr


def test_validation_without_a_valid_sample_is_an_error(lidar_shards, tmp_path):
    """A validation shard whose every range map is damaged passes the member check but scores nothing:
    an error naming data.val, not a score of 0."""
    from toolkit.data.pipeline import NoSamplesError
    from toolkit.engine.evaluator import Evaluator
    from toolkit.tasks import build_task

    src = lidar_shards["dir"] / "val-000001.tar"
    with tarfile.open(src) as tar:
        members = {m.name: tar.extractfile(m).read()[:40] if m.name.endswith("range.npy") else tar.extractfile(m).read()
                   for m in tar.getmembers()}
    damaged = _tar(tmp_path / "damaged-000000.tar", members)
    cfg = load_config(CONFIG, fault_overrides(lidar_shards, tmp_path / "run", **{"data.val": damaged}))
    task = build_task(cfg.task)
    with pytest.raises(NoSamplesError, match=r"validation read no valid sample from data.val '.*damaged-000000.tar'"):
        Evaluator(cfg, task).evaluate(task.build_model())


# --- 6. a full disk ----------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MiB tmpfs (root only; skipped where it cannot be mounted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_full_disk_keeps_the_previous_checkpoint_and_resumes_when_space_is_back(lidar_shards, small_disk):
    """The second checkpoint (with exports) does not fit: the run stops with exit 1 naming the file and
    'No space left on device', leaves no partial file, keeps the first; the same command resumes once
    the disk is larger."""
    run = small_disk / "run"
    overrides = fault_overrides(lidar_shards, run, **{"train.max_steps": 4, "checkpoint.keep": 1,
                                                      "checkpoint.export_jit": True, "data.num_workers": 1})
    res = run_cli(train_cmd(overrides), timeout=180)
    assert res.returncode == 1, res.stderr[-3000:]
    error = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "No space left on device" in error[0] and "iter_000000004" in error[0], res.stderr[-2000:]
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [f"iter_000000002{s}" for s in (".pt", "_dec.jit", "_ema.jit", "_enc.jit")]
    assert Checkpointer.load(run / "checkpoints" / "iter_000000002.pt")["step"] == 2

    subprocess.run(["mount", "-o", "remount,size=32m", str(small_disk)], check=True)
    res = run_cli(train_cmd(overrides), timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"].endswith("iter_000000002.pt") and summary["step"] == 4
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # a line cut off by the full disk was ended, not glued to the next one


# --- 4. configuration ------------------------------------------------------------------------------------
@pytest.mark.parametrize("override,message", [
    ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio must be in [0, 1], got 1.5"),
    ("optim.min_lr_ratio=-0.1", "optim.min_lr_ratio must be in [0, 1]"),
    ("optim.lr=0", "optim.lr must be a finite number > 0"),
    ("optim.lr=-1e-3", "optim.lr must be a finite number > 0"),
    ("optim.lr=.nan", "optim.lr must be a finite number > 0, got nan"),
    ("optim.weight_decay=-0.01", "optim.weight_decay must be a finite number >= 0"),
    ("optim.eps=0", "optim.eps must be a finite number > 0"),
    ("optim.betas=[0.9,1.5]", "optim.betas must be 2 values in [0, 1)"),
    ("train.max_steps=0", "train.max_steps must be >= 1"),
    ("train.grad_accum=-2", "train.grad_accum must be >= 1"),
    ("train.max_bad_steps=0", "train.max_bad_steps must be >= 1"),
    ("data.batch_size=0", "data.batch_size must be >= 1"),
    ("data.num_workers=-1", "data.num_workers must be >= 0"),
    ("checkpoint.every=-1", "checkpoint.every must be >= 0"),
    ("checkpoint.keep=0", "checkpoint.keep must be >= 1"),
    ("log.every=0", "log.every must be >= 1"),
    ("train.grad_clip=.inf", "train.grad_clip must be a finite number >= 0"),
])
def test_bad_config_values_are_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG, [override])
    assert str(info.value).startswith(f"override '{override}': {message}")


def test_bad_config_value_on_the_command_line_exits_2_with_one_line():
    res = run_cli(train_cmd(["optim.min_lr_ratio=1.5"]), timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "config error: override 'optim.min_lr_ratio=1.5': optim.min_lr_ratio must be in [0, 1], got 1.5"]


def test_an_override_on_resume_is_applied_not_undone(lidar_shards, reference, tmp_path, capfd):
    """optim.lr, optim.weight_decay and train.max_steps changed on resume: the restored optimizer and
    schedule take the new values (the lr of the resumed step recomputed), and the run says so."""
    run = tmp_path / "run"
    copy_checkpoints(reference, run, (4,))
    cfg = load_config(CONFIG, fault_overrides(lidar_shards, run, **{"optim.lr": 5e-4, "optim.weight_decay": 0.05,
                                                                     "train.max_steps": 16}))
    trainer = Trainer(cfg)
    trainer._start()
    trainer.logger.close()
    groups = trainer.optimizer.param_groups
    assert trainer.step == 4 and [g["initial_lr"] for g in groups] == [5e-4, 5e-4]
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    fn = trainer.scheduler.lr_lambdas[0]
    assert fn.total == 16 and groups[0]["lr"] == pytest.approx(5e-4 * fn(4))
    err = capfd.readouterr().err
    assert "applied over the checkpoint's optimizer/schedule" in err and "initial_lr: 0.002 -> 0.0005" in err
    # an unchanged config resumes bit-exactly: nothing is re-applied
    same = Trainer(load_config(CONFIG, fault_overrides(lidar_shards, run)))
    same.resume()
    assert same.applied == []


# --- 7. the kill and non-finite cases under torchrun --nproc_per_node=2 ----------------------------------
def ddp_cmd(overrides: list[str]) -> list[str]:
    return ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", *train_cmd(overrides)]


DDP_ENV = {"OMP_NUM_THREADS": "1"}
DDP_STEPS = 30  #: the 2-rank reference: a kill at step <= 20 lands before the end even on a quiet machine


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    out = []
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return out
    for child in children:
        out += [child, *descendants(child)]
    return out


@pytest.fixture(scope="module")
def reference_ddp(lidar_shards, tmp_path_factory) -> Path:
    """The uninterrupted 2-rank run the torchrun faults are compared with."""
    run = tmp_path_factory.mktemp("faults-ddp") / "reference"
    res = run_cli(ddp_cmd(fault_overrides(lidar_shards, run, **{"train.max_steps": DDP_STEPS})), timeout=300,
                  env=DDP_ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    return run


def test_kill_9_of_a_torchrun_run_resumes_to_the_same_result(lidar_shards, reference_ddp, tmp_path):
    """torchrun with 2 ranks, SIGKILL to torchrun and both workers at once (a node lost) at a seeded random
    step; the restarted 2-rank run resumes from the newest complete checkpoint (rank 0's dead lock does not
    block it) and ends bit-identical to the uninterrupted 2-rank run."""
    run = tmp_path / "run"
    overrides = fault_overrides(lidar_shards, run, **{"train.max_steps": DDP_STEPS})
    rng = random.Random(2014)
    target = rng.randint(3, DDP_STEPS - 10)
    log = tmp_path / "kill.log"
    proc = subprocess.Popen([sys.executable, *ddp_cmd(overrides)], cwd=REPO, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **DDP_ENV})
    try:
        wait_until(lambda: logged_step(run) >= target, proc, timeout=180, what=f"step {target}")
        time.sleep(rng.uniform(0.0, 0.3))
        victims = [proc.pid, *descendants(proc.pid)]
        assert len(victims) >= 3, f"torchrun and its 2 workers expected, found {victims}"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
        proc.wait(30)
    # a kill inside the last step's save is a kill too (only a written summary means the run had finished)
    summary_path = run / "summary.json"
    assert not summary_path.exists() or json.loads(summary_path.read_text())["status"] != "finished", \
        "the run finished before it was killed"
    res = run_cli(ddp_cmd(overrides), timeout=300, env=DDP_ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == DDP_STEPS and summary["world_size"] == 2
    assert summary["resumed_from"] and "iter_" in summary["resumed_from"], summary
    assert not list((run / "checkpoints").glob("*.tmp"))
    final = f"iter_{DDP_STEPS:09d}.pt"
    assert_same_training_state(run / "checkpoints" / final, reference_ddp / "checkpoints" / final)


def test_divergence_under_torchrun_stops_both_ranks_and_saves_only_finite_values(lidar_shards, tmp_path):
    """optim.lr=1e6 with 2 ranks: both ranks skip the same non-finite steps and stop together after the
    bad-step limit (each names the step and the last finite checkpoint), torchrun exits non-zero in
    bounded time, and every iter_N.pt and export holds finite values only."""
    run = tmp_path / "run"
    overrides = fault_overrides(lidar_shards, run, **{"optim.lr": 1e6, "train.max_steps": 60, "train.max_bad_steps": 4,
                                                      "checkpoint.export_jit": True})
    t0 = time.monotonic()
    res = run_cli(ddp_cmd(overrides), timeout=240, env=DDP_ENV)
    elapsed = time.monotonic() - t0
    assert res.returncode != 0, res.stderr[-3000:]
    assert elapsed < 180, f"took {elapsed:.0f} s"
    # one per rank; the two ranks share torchrun's stderr, so their lines may interleave: match, not split
    errors = re.findall(r"error: step \d+: .*?last finite checkpoint: \S+?\.pt", res.stderr)
    assert len(errors) == 2, res.stderr[-3000:]
    assert errors[0] == errors[1] and "4 optimizer steps in a row (since step" in errors[0]
    assert "last finite checkpoint:" in errors[0]
    ckpts = sorted((run / "checkpoints").glob("iter_*.pt"))
    assert ckpts, "the steps before the divergence were checkpointed"
    for path in ckpts:
        state = Checkpointer.load(path)  # weights_only=True, hash checked
        assert state["world_size"] == 2
        assert all_finite(state["model"]) and all_finite(state["ema"]["module"]), path
    exports = list((run / "checkpoints").glob("iter_*.jit"))
    assert exports
    for path in exports:
        assert all_finite(dict(torch.jit.load(str(path)).state_dict())), path
