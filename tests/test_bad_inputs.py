"""Bad input, everywhere (issue 14): every CLI answers an invalid value with one line on stderr naming the
flag, key or file and what was expected, exit code 2, no traceback.

:data:`CASES` is the table (also docs/reliability.md's "bad inputs tried per CLI", printed by
``python tests/test_bad_inputs.py --markdown``). Each case runs the CLI's real ``main(argv)`` in this
process (one torch import for the whole table) on real files: the session's synthetic shards and trained
run (tests/conftest.py), a truncated tar, a file that is not TorchScript, a dataroot without ``maps/``, a
read-only tmpfs (a path under a regular file where no tmpfs can be mounted). :func:`test_bad_input_in_a_subprocess`
runs one case per CLI as a real ``python -m`` process, where the exit code and stderr are the process's own.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import REPO, run_cli  # noqa: E402

pytestmark = pytest.mark.faults

C = str(REPO / "configs" / "lidar_tokenizer.yaml")
LT = ["--task", "lidar_tokenizer"]

#: (id, module, argv with {PLACEHOLDERS} filled by the ``paths`` fixture, text the one line must contain)
CASES: list[tuple[str, str, list[str], str]] = [
    # toolkit.train
    ("train-lr-0", "toolkit.train", ["-c", C, "optim.lr=0"], "optim.lr"),
    ("train-lr-negative", "toolkit.train", ["-c", C, "optim.lr=-1"], "optim.lr"),
    ("train-betas", "toolkit.train", ["-c", C, "optim.betas=[0.9,1.5]"], "optim.betas"),
    ("train-weight-decay", "toolkit.train", ["-c", C, "optim.weight_decay=-1"], "optim.weight_decay"),
    ("train-ema-decay", "toolkit.train", ["-c", C, "ema.decay=1.5"], "ema.decay"),
    ("train-precision", "toolkit.train", ["-c", C, "train.precision=fp8"], "train.precision"),
    ("train-unknown-key", "toolkit.train", ["-c", C, "train.lrr=1"], "train.lrr"),
    ("train-batch-0", "toolkit.train", ["-c", C, "data.batch_size=0"], "data.batch_size"),
    ("train-unknown-task", "toolkit.train", ["-c", C, "task.name=nope"], "task.name"),
    ("train-yaml-syntax", "toolkit.train", ["-c", "{BADYAML}"], "bad.yaml"),
    ("train-empty-config", "toolkit.train", ["-c", "{EMPTY}"], "empty.yaml"),
    ("train-missing-config", "toolkit.train", ["-c", "{TMP}/missing.yaml"], "missing.yaml"),
    ("train-unwritable-run-root", "toolkit.train", ["-c", C, "run.root={RO}", "run.name=x"], "run.root"),
    # toolkit.evaluate
    ("evaluate-max-frames", "toolkit.evaluate", [*LT, "--run", "{RUN}", "--shards", "{VAL}", "--max-frames", "-1"],
     "--max-frames"),
    ("evaluate-not-jit", "toolkit.evaluate", [*LT, "--enc", "{NOTJIT}", "--dec", "{DEC}", "--shards", "{VAL}"],
     "--enc '{NOTJIT}' is not a TorchScript file"),
    ("evaluate-enc-dec-swapped", "toolkit.evaluate", [*LT, "--enc", "{DEC}", "--dec", "{ENC}", "--shards", "{VAL}"],
     "--enc '{DEC}' / --dec '{ENC}'"),
    ("evaluate-corrupt-shard", "toolkit.evaluate", [*LT, "--run", "{RUN}", "--shards", "{CORRUPT}"], "{CORRUPT}"),
    ("evaluate-device", "toolkit.evaluate", [*LT, "--run", "{RUN}", "--shards", "{VAL}", "--device", "banana"],
     "--device"),
    ("evaluate-cuda-index", "toolkit.evaluate", [*LT, "--run", "{RUN}", "--shards", "{VAL}", "--device", "cuda:99"],
     "--device"),
    ("evaluate-unwritable-json", "toolkit.evaluate", [*LT, "--run", "{RUN}", "--shards", "{VAL}", "--json", "{RO}/r.json"],
     "--json"),
    ("evaluate-no-maps", "toolkit.evaluate", [*LT, "--run", "{RUN}", "--dataroot", "{NOMAPS}"], "--dataroot"),
    ("evaluate-bad-version", "toolkit.evaluate", [*LT, "--run", "{RUN}", "--dataroot", "{DATAROOT}", "--version", "v9"],
     "--version"),
    ("evaluate-other-task-checkpoint", "toolkit.evaluate", ["--task", "cilp", "--checkpoint", "{CKPT}", "--shards", "{VAL}"],
     "{CKPT}"),
    ("evaluate-missing-checkpoint", "toolkit.evaluate", [*LT, "--checkpoint", "{TMP}/nope.pt", "--shards", "{VAL}"],
     "nope.pt"),
    ("evaluate-missing-run", "toolkit.evaluate", [*LT, "--run", "{TMP}/no-run", "--shards", "{VAL}"], "no-run"),
    ("evaluate-no-shards", "toolkit.evaluate", [*LT, "--run", "{RUN}", "--shards", "{TMP}/none-*.tar"], "none-*.tar"),
    ("evaluate-range-order", "toolkit.evaluate", [*LT, "--run", "{RUN}", "--shards", "{VAL}", "--min-range", "50",
                                                  "--max-range", "10"], "--min-range"),
    ("evaluate-unknown-task", "toolkit.evaluate", ["--task", "nope", "--run", "{RUN}"], "--task"),
    ("evaluate-weights", "toolkit.evaluate", [*LT, "--run", "{RUN}", "--shards", "{VAL}", "--weights", "best"],
     "--weights"),
    # toolkit.reconstruct
    ("reconstruct-unwritable-out", "toolkit.reconstruct", [*LT, "--run", "{RUN}", "--shards", "{VAL}", "--out", "{RO}/o"],
     "--out"),
    ("reconstruct-max-frames", "toolkit.reconstruct", [*LT, "--run", "{RUN}", "--shards", "{VAL}", "--out", "{TMP}/o",
                                                       "--max-frames", "-2"], "--max-frames"),
    ("reconstruct-missing-sample", "toolkit.reconstruct", [*LT, "--run", "{RUN}", "--sample", "{TMP}/x.pcd.bin",
                                                           "--out", "{TMP}/o"], "x.pcd.bin"),
    ("reconstruct-no-input", "toolkit.reconstruct", [*LT, "--run", "{RUN}", "--out", "{TMP}/o"], "--shards"),
    # toolkit.predict
    ("predict-no-predict", "toolkit.predict", [*LT, "--run", "{RUN}"], "lidar_tokenizer"),
    ("predict-max-samples", "toolkit.predict", ["--task", "bev", "--run", "{RUN}", "--shards", "{VAL}", "--out", "{TMP}/p",
                                                "--max-samples", "-1"], "--max-samples"),
    # toolkit.bench
    ("bench-steps-0", "toolkit.bench", ["engine", "-c", C, "--steps", "0"], "--steps"),
    ("bench-no-config", "toolkit.bench", ["loader"], "--config"),
    ("bench-index-n", "toolkit.bench", ["index", "--n", "10"], "--n"),
    ("bench-missing-config", "toolkit.bench", ["loader", "-c", "{TMP}/missing.yaml"], "missing.yaml"),
    ("bench-config-key", "toolkit.bench", ["loader", "-c", C, "data.batch_size=0"], "data.batch_size"),
    ("bench-cameras-no-shards", "toolkit.bench", ["cameras"], "--shards"),
    # toolkit.report
    ("report-missing-run", "toolkit.report", ["{TMP}/no-run"], "no-run"),
    ("report-unfinished-run", "toolkit.report", ["{TMP}"], "summary.json"),
    ("report-unwritable-out", "toolkit.report", ["{RUN}", "--out", "{RO}/r.md"], "--out"),
    # python -m shards
    ("shards-readonly-out", "shards.__main__", ["nuscenes-lidar", "--dataroot", "{DATAROOT}", "--out", "{RO}/s"], "--out"),
    ("shards-range-order", "shards.__main__", ["nuscenes-lidar", "--dataroot", "{DATAROOT}", "--out", "{TMP}/s",
                                               "--min-range", "50", "--max-range", "10"], "--min-range"),
    ("shards-missing-dataroot", "shards.__main__", ["nuscenes-lidar", "--dataroot", "{TMP}/nope", "--out", "{TMP}/s"],
     "--dataroot"),
    ("shards-val-fraction", "shards.__main__", ["nuscenes-lidar", "--dataroot", "{DATAROOT}", "--out", "{TMP}/s",
                                                "--val-fraction", "1.5"], "--val-fraction"),
    ("shards-maxcount-0", "shards.__main__", ["nuscenes-lidar", "--dataroot", "{DATAROOT}", "--out", "{TMP}/s",
                                              "--maxcount", "0"], "--maxcount"),
    ("shards-multisensor-jpeg", "shards.__main__", ["nuscenes", "--dataroot", "{DATAROOT}", "--out", "{TMP}/s",
                                                    "--jpeg-quality", "0"], "--jpeg-quality"),
    ("shards-multisensor-sweeps", "shards.__main__", ["nuscenes", "--dataroot", "{DATAROOT}", "--out", "{TMP}/s",
                                                      "--sweeps", "-1"], "--sweeps"),
    ("shards-multisensor-image-size", "shards.__main__", ["nuscenes", "--dataroot", "{DATAROOT}", "--out", "{TMP}/s",
                                                          "--image-size", "big"], "--image-size"),
    ("shards-synthetic-scenes", "shards.__main__", ["synthetic-nuscenes", "--out", "{TMP}/d", "--scenes", "0"], "--scenes"),
    ("shards-synthetic-exists", "shards.__main__", ["synthetic-nuscenes", "--out", "{DATAROOT}", "--scenes", "1"],
     "{DATAROOT}"),
    ("shards-synthetic-cilp-per-class", "shards.__main__", ["synthetic-cilp", "--out", "{TMP}/c", "--per-class", "-1"],
     "--per-class"),
    ("shards-cilp-missing-root", "shards.__main__", ["cilp", "--root", "{TMP}/nope", "--out", "{TMP}/s"], "--root"),
    ("shards-unknown-command", "shards.__main__", ["frobnicate"], "frobnicate"),
    # python -m launch
    ("launch-nodes", "launch.__main__", ["-c", C, "--cluster", "slurm", "--dry-run", "--nodes=-1"], "--nodes"),
    ("launch-time", "launch.__main__", ["-c", C, "--cluster", "slurm", "--dry-run", "--time=-5"], "--time"),
    ("launch-mem", "launch.__main__", ["-c", C, "--cluster", "slurm", "--dry-run", "--mem=-4"], "--mem"),
    ("launch-signal", "launch.__main__", ["-c", C, "--cluster", "slurm", "--dry-run", "--signal=URG@-10"],
     "--signal-delay"),
    ("launch-signal-delay-negative", "launch.__main__", ["-c", C, "--cluster", "slurm", "--dry-run", "--signal-delay=-10"],
     "--signal-delay"),
    ("launch-signal-delay-vs-time", "launch.__main__", ["-c", C, "--cluster", "slurm", "--dry-run", "--time=1",
                                                        "--signal-delay=120"], "--signal-delay"),
    ("launch-tasks-0", "launch.__main__", ["-c", C, "--cluster", "slurm", "--dry-run", "--tasks-per-node=0"],
     "--tasks-per-node"),
    ("launch-cluster", "launch.__main__", ["-c", C, "--cluster", "k8s", "--dry-run"], "--cluster"),
    ("launch-profile", "launch.__main__", ["-c", C, "--cluster", "slurm", "--dry-run", "--profile", "nope"], "nope"),
    ("launch-local-nodes", "launch.__main__", ["-c", C, "--cluster", "local", "--dry-run", "--nodes", "2"], "--nodes"),
    ("launch-config-key", "launch.__main__", ["-c", C, "--cluster", "slurm", "--dry-run", "optim.lr=0"], "optim.lr"),
]

#: one case per CLI, also run as a real ``python -m`` process
SUBPROCESS = ["train-unwritable-run-root", "evaluate-corrupt-shard", "reconstruct-unwritable-out", "predict-max-samples",
              "bench-steps-0", "report-missing-run", "shards-range-order", "launch-signal-delay-vs-time"]


@pytest.fixture(scope="module")
def paths(trained_run, lidar_shards, synthetic_dataroot, tmp_path_factory):
    """The placeholders of :data:`CASES`: real files built once for the module."""
    values, mounted = build_paths(trained_run[0], lidar_shards, synthetic_dataroot, tmp_path_factory.mktemp("bad-inputs"))
    yield values
    if mounted:
        subprocess.run(["umount", "-l", values["RO"]], capture_output=True)


def build_paths(run: Path, lidar_shards: dict, synthetic_dataroot: Path, tmp: Path) -> tuple[dict, bool]:
    """The files the cases need, under ``tmp``; returns (placeholder values, whether a read-only tmpfs is mounted)."""
    step = max(int(p.stem[5:14]) for p in (run / "checkpoints").glob("iter_*.pt"))
    prefix = run / "checkpoints" / f"iter_{step:09d}"
    nomaps = tmp / "nomaps"
    nomaps.mkdir()
    for name in ("v1.0-mini", "samples"):
        shutil.copytree(synthetic_dataroot / name, nomaps / name)
    val = sorted(Path(lidar_shards["dir"]).glob("val-*.tar"))[0]
    (tmp / "corrupt-000000.tar").write_bytes(val.read_bytes()[:3000])
    (tmp / "notjit.jit").write_bytes(b"not a TorchScript archive")
    (tmp / "bad.yaml").write_text("task: {name: lidar_tokenizer\n  train: [\n")
    (tmp / "empty.yaml").write_text("")
    ro = tmp / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode == 0
    if not mounted:  # not root: a path under a regular file can be neither created nor written either
        ro.rmdir()
        ro.write_text("a file")
    values = {"RUN": str(run), "CKPT": f"{prefix}.pt", "ENC": f"{prefix}_enc.jit", "DEC": f"{prefix}_dec.jit",
              "VAL": lidar_shards["val"], "DATAROOT": str(synthetic_dataroot), "NOMAPS": str(nomaps),
              "CORRUPT": str(tmp / "corrupt-000000.tar"), "NOTJIT": str(tmp / "notjit.jit"),
              "BADYAML": str(tmp / "bad.yaml"), "EMPTY": str(tmp / "empty.yaml"), "RO": str(ro), "TMP": str(tmp)}
    return values, mounted


def fill(text: str, values: dict) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def run_in_process(module: str, argv: list[str], capfd) -> tuple[int, str]:
    """``module.main(argv)`` with SystemExit caught; returns (exit code, captured stderr)."""
    main = importlib.import_module(module).main
    capfd.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capfd.readouterr().err


def assert_one_line(code, err: str, expected: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit code {code}, stderr:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err[-3000:]}"
    assert expected in lines[0], f"{expected!r} not in {lines[0]!r}"
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(case, paths, capfd):
    _, module, argv, expected = case
    code, err = run_in_process(module, [fill(a, paths) for a in argv], capfd)
    assert_one_line(code, err, fill(expected, paths))


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in SUBPROCESS], ids=SUBPROCESS)
def test_bad_input_in_a_subprocess(case, paths):
    _, module, argv, expected = case
    res = run_cli(["-m", module.removesuffix(".__main__"), *[fill(a, paths) for a in argv]], timeout=120)
    assert_one_line(res.returncode, res.stderr, fill(expected, paths))


def test_slurm_launch_without_srun_is_one_line_exit_2(tmp_path):
    """Where SLURM's ``srun`` is not on PATH (a laptop, a CI runner), ``--cluster slurm`` (even ``--dry-run``)
    and a SLURM sweep answer one line naming srun, not submitit's traceback."""
    path = {"PATH": str(Path(sys.executable).parent)}
    res = run_cli(["-m", "launch", "-c", C, "--cluster", "slurm", "--dry-run", f"run.root={tmp_path}"],
                  timeout=120, env=path)
    assert_one_line(res.returncode, res.stderr, "srun")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"config: {C}\nseeds: [0]\ngrid:\n  optim.lr: [0.001]\nroot: {tmp_path}\n")
    res = run_cli(["-m", "launch", "--sweep", str(sweep), "--cluster", "slurm"], timeout=120, env=path)
    assert_one_line(res.returncode, res.stderr, "srun")


def test_the_table_is_large_and_covers_every_cli():
    modules = {c[1] for c in CASES}
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
    assert modules == {"toolkit.train", "toolkit.evaluate", "toolkit.reconstruct", "toolkit.predict", "toolkit.bench",
                       "toolkit.report", "shards.__main__", "launch.__main__"}
    assert {c[2][0] for c in CASES if c[1] == "shards.__main__"} >= {"nuscenes-lidar", "nuscenes", "synthetic-nuscenes",
                                                                     "synthetic-cilp", "cilp"}


def markdown_table() -> str:
    """Run every case once (on files built like the fixtures') and return the docs/reliability.md table of the real messages,
    paths shortened to their placeholders."""
    import contextlib
    import io
    import tempfile

    from conftest import tiny_overrides
    from shards.nuscenes_lidar import build_nuscenes_lidar_shards
    from shards.synthetic.nuscenes_dataroot import generate_dataroot
    from toolkit.config import load_config
    from toolkit.engine.trainer import Trainer

    base = Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    root = generate_dataroot(base / "dataroot", scenes=3, samples_per_scene=4, seed=7, workers=1, progress=False,
                             cameras=False)
    info = build_nuscenes_lidar_shards(str(root), "v1.0-mini", str(base / "shards"), val_fraction=0.34, seed=0,
                                       maxcount=3, progress=False)
    shards = {"dir": base / "shards", "train": info["splits"]["train"]["pattern"], "val": info["splits"]["val"]["pattern"]}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        Trainer(load_config(C, tiny_overrides(shards, base / "run"))).fit()
    (base / "tmp").mkdir()
    values, mounted = build_paths(base / "run", shards, root, base / "tmp")
    rows = ["| CLI | input | the one-line message (exit code 2) |", "|---|---|---|"]
    short = sorted(((v, "{" + k + "}") for k, v in values.items()), key=lambda kv: -len(kv[0])) + [(str(REPO) + "/", "")]
    for _, module, argv, _ in CASES:
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = importlib.import_module(module).main([fill(a, values) for a in argv])
            except SystemExit as exc:
                code = exc.code
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        message = lines[-1] if lines else ""
        shown = " ".join(argv)
        for value, key in short:
            message = message.replace(value, key)
            shown = shown.replace(value, key)
        assert code == 2 and len(lines) == 1, (module, argv, code, lines)
        cli = "python -m " + module.removesuffix(".__main__")
        rows.append(f"| `{cli}` | `{shown}` | {message.replace('|', '/')} |")
    if mounted:
        subprocess.run(["umount", "-l", values["RO"]], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)
    return "\n".join(rows)


if __name__ == "__main__" and "--markdown" in sys.argv:
    print(markdown_table())
