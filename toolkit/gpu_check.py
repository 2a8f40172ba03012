"""One-shot device check: the GPU test suite and a short benchmark in one command, one JSON and one Markdown.

``scripts/gpu-check --out DIR`` (which sets up the Python environment, then runs this module), or
``python -m toolkit.gpu_check --out DIR`` / ``python -m toolkit.bench gpu --out DIR`` in an environment
that has the project's dependencies. ``--dry-run`` prints the plan and each part's time budget and runs
nothing. ``--device cpu --tiny`` runs the same code path on CPU with tiny models in seconds (CI).

Parts, in order, each a child process under its own time budget (killed with its process group at the
budget, its partial figures kept; a failing part does not stop the next; the whole run stays inside
``--budget-s``):

======================  ============================================================================
``env``                 torch/CUDA versions, device name, memory, bf16 peak (:mod:`toolkit.engine.flops`)
``suite``               ``pytest tests/gpu`` (marker ``gpu``): outcome of every test; ``sync_debug`` is the
                        result of the ``torch.cuda.set_sync_debug_mode("error")`` test
``bench_<recipe>``      :func:`toolkit.gpu_bench.bench_recipe` for ``lidar_tokenizer`` (Cosmos width,
                        configs/lidar_tokenizer_gpu.yaml) and ``simple_bev`` (configs/bev/simple_bev_gpu.yaml)
``loader_<recipe>``     :func:`toolkit.gpu_bench.bench_loader` with ``--loader-workers`` (16) workers
======================  ============================================================================

Then, from those figures: each loader's rate against its step's demand (samples/s of the fastest mode at
the searched batch), and the estimated wall time of the Simple-BEV recipe (25k iterations, batch 40) on 8
such GPUs (:func:`toolkit.gpu_bench.estimate_wall_time`). Output: ``DIR/gpu_check.json`` (keys fixed by
:data:`SCHEMA`, a JSON Schema), ``DIR/gpu_check.md`` (the figures table) and ``DIR/gpu_check.log`` (every
part's output), rewritten after every part.

Exit status: 0 when every part ran and every test passed, 1 otherwise (the files are written either
way), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE_NAMES = ("lidar_tokenizer", "simple_bev")


@dataclass(frozen=True)
class Part:
    """One child process of the check: ``name``, its time budget in seconds (full and ``--tiny``) and what
    it measures (printed by ``--dry-run``)."""

    name: str
    budget_s: int
    tiny_budget_s: int
    what: str


PARTS = (
    Part("env", 20, 30, "torch, CUDA, device name, memory, bf16 peak TFLOP/s"),
    Part("suite", 240, 60, "pytest tests/gpu: every test's outcome, the sync-debug result"),
    Part("bench_lidar_tokenizer", 100, 60, "configs/lidar_tokenizer_gpu.yaml: batch search, fp32 / bf16 / "
         "bf16+compile step time, samples/s, peak memory, MFU"),
    Part("bench_simple_bev", 60, 60, "configs/bev/simple_bev_gpu.yaml (448x800, ResNet-101): the same without "
         "compile, plus the step at the recipe's per-GPU batch 5"),
    Part("loader_lidar_tokenizer", 20, 30, "training loader samples/s on synthetic range-map shards"),
    Part("loader_simple_bev", 35, 30, "training loader samples/s on synthetic 6 x 1600x900 JPEG shards"),
)
#: default whole-run budget (s): 8 min 20 s. The part budgets come from the first H200 run (docs/gpu.md):
#: the 12 suite tests take about 210 s (the two inductor tests about 80 s of it), the tokenizer's bench 85 s
#: (inductor compile 62 s); Simple-BEV's inductor compile did not finish in 100 s, so its bench leaves
#: compile out (``Recipe.compile``)
BUDGET_S = 500
#: seconds kept back from the whole budget for starting children and writing the report
RESERVE_S = 15

_NUM = {"type": ["number", "null"]}
_INT = {"type": ["integer", "null"]}
_STR = {"type": ["string", "null"]}
_MODE = {"type": "object", "required": ["status", "error"], "properties": {
    "status": {"enum": ["ok", "failed", "skipped"]}, "error": _STR, "batch": _INT, "step_s": _NUM, "samples_per_s": _NUM,
    "peak_mem_gib": _NUM, "mfu": _NUM, "compile_s": _NUM, "warmup_s": _NUM, "compile_backend": _STR}}
_BENCH = {"type": ["object", "null"], "required": ["config", "params", "search", "search_stop", "batch",
                                                   "flops_per_step", "modes", "bf16_vs_fp32", "compile_vs_bf16"],
          "properties": {"config": {"type": "string"}, "params": {"type": "integer"}, "device_name": _STR,
                         "bf16_peak_tflops": _NUM, "search": {"type": "array", "items": {
                             "type": "object", "required": ["batch", "status"],
                             "properties": {"batch": {"type": "integer"}, "status": {"enum": ["ok", "oom"]},
                                            "step_s": _NUM, "peak_mem_gib": _NUM}}},
                         "search_stop": _STR, "batch": _INT, "flops_per_step": _INT,
                         "modes": {"type": "object", "properties": {"fp32": _MODE, "bf16": _MODE, "bf16+compile": _MODE},
                                   "additionalProperties": False},
                         "bf16_vs_fp32": _NUM, "compile_vs_bf16": _NUM, "recipe_batch": _INT,
                         "recipe_batch_step_s": _NUM}}
_LOADER = {"type": ["object", "null"], "required": ["workers", "batch_size"],  # samples_per_s: absent if killed first
           "properties": {"workers": {"type": "integer"}, "batch_size": {"type": "integer"}, "samples_per_s": _NUM,
                          "step_demand_samples_per_s": _NUM, "loader_vs_demand": _NUM, "shard_bytes_per_sample": _INT}}
#: JSON Schema (draft 2020-12) of ``gpu_check.json``; tests/test_gpu_check.py validates a produced file
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema", "created", "mode", "device", "budget_s", "wall_s", "parts", "env", "suite", "bench",
                 "loader", "estimate"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": "toolkit.gpu_check/1"},
        "created": {"type": "string"},
        "mode": {"enum": ["full", "tiny"]},
        "device": {"enum": ["cuda", "cpu"]},
        "budget_s": {"type": "number"},
        "wall_s": {"type": "number"},
        "parts": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["status", "budget_s", "wall_s"],
            "properties": {"status": {"enum": ["ok", "failed", "timeout", "skipped"]}, "budget_s": {"type": "number"},
                           "wall_s": {"type": "number"}, "error": _STR}}},
        "env": {"type": ["object", "null"], "required": ["torch", "cuda_available", "device_name"],
                "properties": {"torch": {"type": "string"}, "cuda": _STR, "cuda_available": {"type": "boolean"},
                               "device_name": {"type": "string"}, "total_memory_gib": _NUM,
                               "bf16_peak_tflops": _NUM, "capability": _STR}},
        "suite": {"type": ["object", "null"], "required": ["passed", "failed", "skipped", "tests", "sync_debug"],
                  "properties": {"passed": {"type": "integer"}, "failed": {"type": "integer"},
                                 "skipped": {"type": "integer"}, "sync_debug": {"enum": ["passed", "failed", "skipped", None]},
                                 "tests": {"type": "array", "items": {
                                     "type": "object", "required": ["name", "outcome"],
                                     "properties": {"name": {"type": "string"},
                                                    "outcome": {"enum": ["passed", "failed", "skipped"]},
                                                    "message": _STR, "seconds": _NUM}}}}},
        "bench": {"type": "object", "properties": {n: _BENCH for n in RECIPE_NAMES}, "additionalProperties": False},
        "loader": {"type": "object", "properties": {n: _LOADER for n in RECIPE_NAMES}, "additionalProperties": False},
        "estimate": {"type": ["object", "null"], "required": ["hours", "bound", "gpus", "iterations", "global_batch"],
                     "properties": {"hours": {"type": "number"}, "hours_compiled": _NUM, "bound": {"enum": ["compute", "loader"]},
                                    "gpus": {"type": "integer"}, "iterations": {"type": "integer"},
                                    "global_batch": {"type": "integer"}}},
    },
}


# --- the children ---------------------------------------------------------------------------------------
def run_part(name: str, out_json: Path, device: str, tiny: bool, loader_workers: int) -> None:
    """Body of one child process: measure part ``name`` and write its JSON to ``out_json``."""
    from toolkit import gpu_bench
    from toolkit.files import write_text

    if name == "env":
        import platform

        import torch

        from toolkit.engine.flops import peak_tflops

        cuda = torch.cuda.is_available()
        dev_name = torch.cuda.get_device_name(0) if cuda and device == "cuda" else platform.processor() or "cpu"
        props = torch.cuda.get_device_properties(0) if cuda and device == "cuda" else None
        env = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda, "device_name": dev_name,
               "total_memory_gib": round(props.total_memory / 2**30, 2) if props else None,
               "capability": f"{props.major}.{props.minor}" if props else None,
               "bf16_peak_tflops": peak_tflops(dev_name, "bf16"), "python": platform.python_version(),
               "cpus": os.cpu_count(), "packages": _versions(["accelerate", "deepspeed", "webdataset", "numpy", "triton"]),
               # what "fp32" means in the bench: PyTorch's defaults, which the engine keeps (TF32 convolutions)
               "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
               "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
               "cudnn_benchmark": torch.backends.cudnn.benchmark}
        write_text(out_json, json.dumps(env, indent=1))
    elif name == "suite":
        _run_suite(out_json)
    elif name.startswith("bench_"):
        gpu_bench.bench_recipe(gpu_bench.RECIPES[name[len("bench_"):]], device, tiny, out_json)
    elif name.startswith("loader_"):
        gpu_bench.bench_loader(gpu_bench.RECIPES[name[len("loader_"):]], device, tiny, loader_workers, out_json)
    else:
        raise ValueError(f"unknown part {name!r}")


def _versions(names: list[str]) -> dict:
    from importlib import metadata

    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


#: the suite's files in the order run: sync debug and precision first, the torchrun ones next, compiling last
SUITE_FILES = ("tests/gpu/test_gpu_training.py", "tests/gpu/test_gpu_models.py", "tests/gpu/test_gpu_strategies.py",
               "tests/gpu/test_gpu_compile.py")


def _suite_summary(tests: list[dict]) -> dict:
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "skipped")}
    sync = [t["outcome"] for t in tests if "sync_debug" in t["name"]]
    sync_debug = "failed" if "failed" in sync else "passed" if "passed" in sync else "skipped" if sync else None
    return {**counts, "tests": tests, "sync_debug": sync_debug}


def _run_suite(out_json: Path) -> None:
    """``pytest -v`` of :data:`SUITE_FILES` in a grandchild; every outcome is written to ``out_json`` as its
    line streams by (so a suite killed at its budget keeps what had finished), then replaced by the junit
    XML's (with messages and durations) when pytest ends."""
    import importlib.util
    import re
    import xml.etree.ElementTree as ET

    from toolkit.files import write_text

    junit = out_json.with_suffix(".xml")
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "console_output_style=classic",
           "--strict-markers", "-m", "gpu", "-p", "toolkit.gpu_suite_report", *SUITE_FILES, f"--junitxml={junit}"]
    if importlib.util.find_spec("pytest_timeout"):
        cmd.append("--timeout=100")
    line_re = re.compile(r"^tests/gpu/(\S+?)\.py::(\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")
    outcome_of = {"PASSED": "passed", "XPASS": "passed", "FAILED": "failed", "ERROR": "failed", "SKIPPED": "skipped",
                  "XFAIL": "skipped"}
    # tests/gpu/conftest.py prints a failure's reason as it happens (before or after the -v outcome line)
    fail_re = re.compile(r"^GPU-SUITE-FAILURE tests/gpu/(\S+?)\.py::(\S+) :: (.*)$")
    tests: list[dict] = []
    reasons: dict[str, str] = {}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        m, f = line_re.match(line), fail_re.match(line)
        if f:
            name = f"{f.group(1)}::{f.group(2)}"
            reasons[name] = f.group(3)[:400]
            for t in tests:
                if t["name"] == name:
                    t["message"] = reasons[name]
        if m:
            name = f"{m.group(1)}::{m.group(2)}"
            tests.append({"name": name, "outcome": outcome_of[m.group(3)], "message": reasons.get(name)})
        if m or f:
            write_text(out_json, json.dumps(_suite_summary(tests), indent=1))
    proc.wait()
    if junit.exists():
        tests = []
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome, message = "passed", None
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome = "skipped" if tag == "skipped" else "failed"
                    message = (el.get("message") or el.text or "")[:400]
            tests.append({"name": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}", "outcome": outcome,
                          "message": message, "seconds": round(float(case.get("time", 0) or 0), 2)})
    write_text(out_json, json.dumps(_suite_summary(tests), indent=1))


# --- the orchestrator ------------------------------------------------------------------------------------
def plan(tiny: bool, skip: set[str], budget_s: float) -> list[tuple[Part, int]]:
    """The parts to run and each one's budget (s), in order."""
    return [(p, p.tiny_budget_s if tiny else p.budget_s) for p in PARTS if p.name not in skip]


def empty_result(mode: str, device: str, budget_s: float) -> dict:
    """The result skeleton: every key of :data:`SCHEMA`, nothing measured yet."""
    return {"schema": "toolkit.gpu_check/1", "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "mode": mode, "device": device, "budget_s": budget_s, "wall_s": 0.0, "parts": {}, "env": None,
            "suite": None, "bench": {}, "loader": {}, "estimate": None}


def derive(result: dict) -> None:
    """Loader rate against the step's demand; the Simple-BEV wall-time estimate (in place)."""
    from toolkit.gpu_bench import estimate_wall_time

    for name, loader in result["loader"].items():
        bench = result["bench"].get(name) or {}
        rates = [m["samples_per_s"] for m in (bench.get("modes") or {}).values() if m.get("status") == "ok"]
        if loader and loader.get("samples_per_s") and rates:
            loader["step_demand_samples_per_s"] = max(rates)
            loader["loader_vs_demand"] = round(loader["samples_per_s"] / max(rates), 3)
    bev = result["bench"].get("simple_bev") or {}
    if bev.get("recipe_batch_step_s"):
        loader = result["loader"].get("simple_bev") or {}
        per_gpu = bev.get("recipe_batch") or 5
        est = estimate_wall_time(bev["recipe_batch_step_s"], per_gpu_batch=per_gpu, batch=8 * per_gpu,
                                 loader_samples_per_s=loader.get("samples_per_s"))
        ratio = bev.get("compile_vs_bf16")
        est["hours_compiled"] = round(est["hours"] / ratio, 3) if ratio and est["bound"] == "compute" else None
        result["estimate"] = est


def markdown(result: dict) -> str:
    """The figures table (and each part's status) of a result."""
    env = result.get("env") or {}
    lines = [f"# GPU check ({result['mode']}, {result['device']}): {env.get('device_name', '?')}", "",
             f"{result['created']} · torch {env.get('torch', '?')} (CUDA {env.get('cuda')}) · "
             f"{env.get('total_memory_gib')} GiB · bf16 peak {env.get('bf16_peak_tflops')} TFLOP/s · "
             f"wall {result['wall_s']:.0f} s of {result['budget_s']:.0f} s · fp32 = PyTorch's defaults (TF32 "
             f"convolutions {env.get('cudnn_allow_tf32')}, TF32 matmuls {env.get('matmul_allow_tf32')})", ""]
    suite = result.get("suite")
    if suite:
        lines += [f"**Suite** (tests/gpu): {suite['passed']} passed, {suite['failed']} failed, {suite['skipped']} skipped; "
                  f"sync-debug (`set_sync_debug_mode(\"error\")`, 20 steps): **{suite['sync_debug']}**", ""]
        lines += [f"- {t['name']}: {t['outcome']}" + (f" ({t['message'][:160]})" if t.get("message") else "")
                  for t in suite["tests"] if t["outcome"] != "passed"]
        lines.append("")

    def fmt(x, spec=".3g"):
        return "–" if x is None else format(x, spec)

    names = [n for n in RECIPE_NAMES if result["bench"].get(n)]
    if names:
        lines += ["| figure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        row = lambda label, fn: lines.append(f"| {label} | " + " | ".join(fn(result["bench"][n]) for n in names) + " |")  # noqa: E731
        row("parameters", lambda b: f"{b['params'] / 1e6:.1f} M")
        row("batch (largest fp32 that fits; search stop)", lambda b: f"{b['batch']} ({b['search_stop']})")
        row("GFLOP per step (fwd+bwd)", lambda b: fmt(b["flops_per_step"] and b["flops_per_step"] / 1e9, ".1f"))
        for mode in ("fp32", "bf16", "bf16+compile"):
            def cell(b, mode=mode):
                m = (b.get("modes") or {}).get(mode)
                if not m:
                    return "not run"
                if m["status"] != "ok":
                    return f"{m['status']}: {m['error'][:60]}"
                return (f"{m['step_s'] * 1e3:.1f} ms, {m['samples_per_s']:.1f}/s, {fmt(m.get('peak_mem_gib'), '.1f')} GiB, "
                        f"MFU {fmt(m.get('mfu') and 100 * m['mfu'], '.1f')} %")
            row(f"{mode}: step, samples/s, peak memory, MFU", cell)
        row("bf16 / fp32 speed-up", lambda b: fmt(b["bf16_vs_fp32"]))
        row("compile / bf16 speed-up", lambda b: fmt(b["compile_vs_bf16"]))
        row("compile time (s)", lambda b: fmt(((b.get("modes") or {}).get("bf16+compile") or {}).get("compile_s"), ".1f"))
        lines.append("")
    for name, loader in result["loader"].items():
        if loader and loader.get("samples_per_s") is not None:
            lines.append(f"**Loader** {name}: {loader['samples_per_s']:.1f} samples/s with {loader['workers']} workers "
                         f"(batch {loader['batch_size']}) vs the step's demand "
                         f"{fmt(loader.get('step_demand_samples_per_s'), '.1f')}/s: ratio {fmt(loader.get('loader_vs_demand'))}")
    est = result.get("estimate")
    if est:
        lines += ["", f"**Estimate**: Simple-BEV recipe ({est['iterations']} iterations, batch {est['global_batch']}) on "
                  f"{est['gpus']} such GPUs: {est['hours']:.1f} h bf16 eager"
                  + (f", {est['hours_compiled']:.1f} h compiled" if est.get("hours_compiled") else "")
                  + f" ({est['bound']}-bound; {est['assumes']})"]
    lines += ["", "| part | status | budget s | wall s | error |", "|---|---|---|---|---|"]
    for name, p in result["parts"].items():
        lines.append(f"| {name} | {p['status']} | {p['budget_s']:.0f} | {p['wall_s']:.1f} | {(p.get('error') or '')[:120]} |")
    return "\n".join(lines) + "\n"


def _write(out: Path, result: dict) -> None:
    from toolkit.files import write_text

    write_text(out / "gpu_check.json", json.dumps(result, indent=1))
    write_text(out / "gpu_check.md", markdown(result))


def _child(part: str, out_json: Path, args, timeout: float, log) -> tuple[str, str | None]:
    """Run one part as a child in its own process group; (status, error)."""
    cmd = [sys.executable, "-m", "toolkit.gpu_check", "part", part, "--part-json", str(out_json),
           "--device", args.device, "--loader-workers", str(args.loader_workers)] + (["--tiny"] if args.tiny else [])
    log.write(f"\n===== {part} (budget {timeout:.0f} s): {' '.join(cmd)}\n")
    log.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "timeout", f"killed at its budget of {timeout:.0f} s"
    if rc != 0:
        return "failed", f"exit status {rc} (see gpu_check.log)"
    return "ok", None


def _in_process(part: str, out_json: Path, args, log) -> tuple[str, str | None]:
    """Run one part in this process (``--in-process``: no time budget enforced); (status, error)."""
    import traceback

    log.write(f"\n===== {part} (in process)\n")
    try:
        run_part(part, out_json, args.device, args.tiny, args.loader_workers)
    except Exception as exc:
        log.write(traceback.format_exc())
        return "failed", f"{type(exc).__name__}: {exc}"[:300]
    return "ok", None


def check(args) -> int:
    """Run the plan; write the JSON and Markdown after every part. Returns the exit status."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    # scripts/gpu-check sets GPU_CHECK_STARTED (epoch seconds) before choosing a Python and installing wheels:
    # that setup time counts against the same budget
    setup_s = time.time() - float(os.environ.get("GPU_CHECK_STARTED") or time.time())
    setup_s = setup_s if 0 < setup_s < 600 else 0.0
    deadline = t_start + args.budget_s - RESERVE_S - setup_s
    result = empty_result("tiny" if args.tiny else "full", args.device, args.budget_s)
    failed = False
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp, open(out / "gpu_check.log", "a") as log:
        for part, budget in plan(args.tiny, set(args.skip), args.budget_s):
            left = deadline - time.monotonic()
            t0 = time.monotonic()
            part_json = Path(tmp) / f"{part.name}.json"
            if left < 5:
                status, error = "skipped", "no time left in the whole budget"
            elif args.in_process:
                status, error = _in_process(part.name, part_json, args, log)
            else:
                status, error = _child(part.name, part_json, args, min(budget, left), log)
            failed |= status != "ok"
            data = json.loads(part_json.read_text()) if part_json.exists() else None
            if part.name in ("env", "suite"):
                result[part.name] = data
            else:
                kind, _, recipe = part.name.partition("_")
                result[kind][recipe] = data
            result["parts"][part.name] = {"status": status, "budget_s": budget, "wall_s": round(time.monotonic() - t0, 1),
                                          "error": error}
            result["wall_s"] = round(time.monotonic() - t_start, 1)
            try:
                derive(result)
            except Exception as exc:  # a figure that cannot be derived must not lose the others
                log.write(f"derive: {type(exc).__name__}: {exc}\n")
            _write(out, result)
    suite = result.get("suite") or {}
    failed |= bool(suite.get("failed"))
    print(markdown(result))
    print(f"wrote {out / 'gpu_check.json'}, {out / 'gpu_check.md'}, {out / 'gpu_check.log'}")
    return 1 if failed else 0


def dry_run(args) -> int:
    """Print the plan: each part's budget, command and what it measures; nothing runs."""
    rows = plan(args.tiny, set(args.skip), args.budget_s)
    total = sum(b for _, b in rows)
    print(f"gpu-check plan ({'tiny' if args.tiny else 'full'}, device {args.device}), whole budget {args.budget_s:.0f} s "
          f"({args.budget_s / 60:.1f} min; parts sum to {total} s, {RESERVE_S} s kept for the report); output in {args.out}:")
    for part, budget in rows:
        cmd = f"{Path(sys.executable).name} -m toolkit.gpu_check part {part.name} --device {args.device}" + (
            " --tiny" if args.tiny else "")
        print(f"  {part.name:24s} {budget:4d} s  {part.what}\n  {'':24s}         $ {cmd}")
    print("then: loader rate vs the step's demand; Simple-BEV recipe (25000 iterations, batch 40) wall time on 8 GPUs")
    print("writes: gpu_check.json (schema toolkit.gpu_check/1), gpu_check.md, gpu_check.log")
    return 0


def main(argv: list[str] | None = None) -> int:
    from toolkit.cli import Parser

    p = Parser(prog="python -m toolkit.gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["part"]:  # internal: one child process
        p.add_argument("part_cmd")
        p.add_argument("name", choices=[pt.name for pt in PARTS])
        p.add_argument("--part-json", required=True)
        p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
        p.add_argument("--tiny", action="store_true")
        p.add_argument("--loader-workers", type=int, default=16)
        a = p.parse_args(argv)
        stall = float(os.environ.get("TOOLKIT_GPU_CHECK_STALL_S", "0") or 0)
        if stall > 0:  # test hook: a part that overruns its budget (tests/test_gpu_check.py)
            time.sleep(stall)
        run_part(a.name, Path(a.part_json), a.device, a.tiny, a.loader_workers)
        return 0
    p.add_argument("--out", default="runs/gpu-check", help="output folder (default runs/gpu-check)")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"whole-run time budget in seconds (default {BUDGET_S})")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cuda (default) or cpu (with --tiny, for CI)")
    p.add_argument("--tiny", action="store_true", help="tiny models and batches: the code path in seconds")
    p.add_argument("--skip", nargs="*", default=[], choices=[pt.name for pt in PARTS], metavar="PART",
                   help="parts not to run: " + ", ".join(pt.name for pt in PARTS))
    p.add_argument("--loader-workers", type=int, default=16, help="loader worker processes (default 16)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and budgets; run nothing")
    p.add_argument("--in-process", action="store_true",
                   help="run the parts in this process, without their time budgets (tests; not for a GPU run)")
    args = p.parse_args(argv)
    if args.budget_s < 30:
        p.error("--budget-s must be at least 30")
    if args.loader_workers < 0:
        p.error("--loader-workers must be >= 0")
    if args.dry_run:
        return dry_run(args)
    if args.device == "cuda" and not args.tiny:
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA device (torch.cuda.is_available() is False); on CPU run --device cpu --tiny",
                  file=sys.stderr)
            return 2
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
