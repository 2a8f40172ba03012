"""The measurements of the one-shot device check (:mod:`toolkit.gpu_check`): training-step speed per precision,
the largest batch that fits, MFU, and the training loader's rate, on synthetic inputs built here.

Nothing here reads a dataset: the inputs are synthetic shard samples in the real shard formats, decoded
by the task's own ``decode_train`` (so image decode, resizing and BEV targets cost what they cost in
training), and written to real WebDataset tar shards for the loader.

* :func:`bench_recipe`: for one recipe (a config file), a doubling search for the largest batch at which
  an fp32 step fits in memory (the most memory-hungry of the three modes), then seconds per optimizer step
  (forward, backward, clip, fused AdamW, on a batch already on the device: the loader is not in it),
  samples/s, peak memory and MFU for ``fp32``, ``bf16`` (autocast) and ``bf16+compile`` (``torch.compile``
  of the model) at that batch. MFU = model FLOPs per step (:func:`toolkit.engine.flops.flops_per_step`)
  / step time / the GPU's dense bf16 peak (:func:`toolkit.engine.flops.peak_tflops`), for every mode.
* :func:`bench_loader`: samples/s of the engine's training loader (:func:`toolkit.data.pipeline.train_loader`,
  ``workers`` processes) over synthetic shards of the recipe's format.

Every figure is written to the part's JSON file as soon as it is measured (:func:`_save`), so a part
killed at its time budget leaves what it had.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from toolkit.files import write_text

REPO = Path(__file__).resolve().parents[1]
GIB = 2 ** 30
MODES = ("fp32", "bf16", "bf16+compile")


@dataclass
class Recipe:
    """One benchmarked training recipe.

    Attributes:
        name: key in the check's JSON; config: the config file (relative to the repository root).
        tiny_config, tiny_overrides: the seconds-long CPU variant (``--tiny``).
        batch_start, batch_max: the doubling search's first and largest batch (per GPU).
        recipe_batch: the per-GPU batch of the published recipe (timed too, for the wall-time estimate);
            0 = none.
        compile: whether the full check times ``bf16+compile`` (the tiny CPU variant always does); False
            records the mode as skipped with ``compile_skip``, the reason.
    """

    name: str
    config: str
    tiny_config: str
    tiny_overrides: list[str] = field(default_factory=list)
    batch_start: int = 1
    batch_max: int = 256
    recipe_batch: int = 0
    compile: bool = True
    compile_skip: str = ""


#: the benchmarked recipes: the LiDAR tokenizer at Cosmos width and Simple-BEV (448 x 800, ResNet-101)
RECIPES = {
    "lidar_tokenizer": Recipe("lidar_tokenizer", "configs/lidar_tokenizer_gpu.yaml", "configs/lidar_tokenizer.yaml",
                              ["task.crop_width=64", "task.channels=8"], batch_start=8, batch_max=512),
    "simple_bev": Recipe("simple_bev", "configs/bev/simple_bev_gpu.yaml", "configs/bev/tiny.yaml",
                         ["task.encoder_base=8", "task.feat_channels=8", "task.merge_channels=16",
                          "task.decoder_width=8", "task.sample.image_height=32", "task.sample.image_width=64",
                          "task.sample.x_bounds=[-8.0,8.0]", "task.sample.y_bounds=[-8.0,8.0]",
                          "task.sample.z_cells=4"],
                         batch_start=1, batch_max=64, recipe_batch=5, compile=False,
                         compile_skip="inductor's compile of this step took over 100 s on an H200 (docs/gpu.md), "
                                      "more than the check's budget"),
}


def load_recipe_config(recipe: Recipe, tiny: bool, device: str):
    """The recipe's :class:`~toolkit.config.Config` (the tiny variant with ``tiny``) on ``device``."""
    from toolkit.config import load_config

    path = REPO / (recipe.tiny_config if tiny else recipe.config)
    return load_config(path, [*(recipe.tiny_overrides if tiny else []), f"train.device={device}"])


# --- synthetic samples ------------------------------------------------------------------------------------
def range_sample(rng: np.random.Generator, key: str, rows: int = 32, cols: int = 1084) -> dict:
    """A raw ``range.npy`` shard sample: a ``(rows, cols)`` float32 range map in metres, smooth along rows
    (a street-like profile 2-60 m) with 25 % no-return pixels (0)."""
    profile = np.abs(np.cumsum(rng.normal(0, 0.8, cols))) % 58 + 2.0
    r = (profile[None, :] * np.linspace(0.6, 1.2, rows)[:, None] + rng.normal(0, 0.05, (rows, cols))).astype(np.float32)
    r[rng.random(r.shape) < 0.25] = 0.0
    buf = io.BytesIO()
    np.save(buf, r)
    return {"__key__": key, "range.npy": buf.getvalue()}


def camera_sample(workdir: Path, rng: np.random.Generator, index: int, size: tuple[int, int] = (1600, 900)) -> dict:
    """A raw multi-sensor shard sample (:func:`toolkit.data.multisensor.encode_keyframe`): six ``size``
    (width, height) JPEGs (smooth random colour fields, quality 90: a few hundred kB each, like camera
    photos), the camera rig of :mod:`toolkit.tasks.bev.example`, one car box and 2000 LiDAR points."""
    from PIL import Image

    from toolkit.bev.boxes import make_boxes
    from toolkit.data.multisensor import encode_keyframe
    from toolkit.datasets.nuscenes import CAMERAS, CameraView, Keyframe
    from toolkit.tasks.bev.example import _YAW_DEG, camera_to_ego

    workdir.mkdir(parents=True, exist_ok=True)
    w, h = size
    f = w / 2 / np.tan(np.radians(35))
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    views = []
    for ch in CAMERAS:
        low = Image.fromarray(rng.integers(0, 255, (h // 32, w // 32, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(low, np.int16) + rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
        path = workdir / f"cam_{index}_{ch}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
        T = camera_to_ego(np.radians(_YAW_DEG[ch]))
        views.append(CameraView(ch, str(path), f"tok{index}{ch}", 1000 * index, w, h, K, T, T))
    centre = np.array([rng.uniform(-20, 20), rng.uniform(-20, 20), 0.8])
    boxes = make_boxes([centre], [[1.8, 4.2, 1.6]], [rng.uniform(-np.pi, np.pi)], visibility=[4], category=["vehicle.car"],
                       instance_token=[f"inst{index}"], token=[f"ann{index}"])
    xyz = np.c_[rng.uniform(-50, 50, (2000, 2)), np.zeros(2000)]
    points = np.c_[xyz, rng.uniform(0, 100, 2000), rng.integers(0, 32, 2000)].astype(np.float32)
    kf = Keyframe(f"sample{index:05d}", "scene-gpucheck", 1000 * index, f"lidar{index}", views, points, 0, np.eye(4),
                  np.eye(4), boxes)
    return encode_keyframe(kf)


def synthetic_samples(recipe: Recipe, task_name: str, n: int, workdir: Path, tiny: bool, seed: int = 0) -> list[dict]:
    """``n`` distinct raw samples in the format of ``task_name`` (``lidar_tokenizer`` or ``bev``)."""
    rng = np.random.default_rng(seed)
    if task_name == "lidar_tokenizer":
        return [range_sample(rng, f"range{i:05d}") for i in range(n)]
    if task_name == "bev":
        return [camera_sample(workdir, rng, i, (320, 180) if tiny else (1600, 900)) for i in range(n)]
    raise ValueError(f"no synthetic samples for task {task_name!r}")


def write_shards(samples: list[dict], out_dir: Path, shards: int = 4, copies: int = 1) -> str:
    """Write ``samples`` (each ``copies`` times, keys made unique) round-robin into ``shards`` tar files
    ``out_dir/train-{i:06d}.tar``; returns the brace pattern of the files."""
    import webdataset as wds

    out_dir.mkdir(parents=True, exist_ok=True)
    writers = [wds.TarWriter(str(out_dir / f"train-{i:06d}.tar")) for i in range(shards)]
    try:
        k = 0
        for c in range(copies):
            for s in samples:
                writers[k % shards].write({**s, "__key__": f"{s['__key__']}c{c}"})
                k += 1
    finally:
        for wr in writers:
            wr.close()
    return str(out_dir / f"train-{{000000..{shards - 1:06d}}}.tar")


def collate(examples: list[dict], batch_size: int, device: torch.device) -> dict:
    """A batch of ``batch_size`` from decoded ``examples`` (cycled), collated as the training loader does
    (``default_collate``) and its tensors moved to ``device``."""
    from torch.utils.data import default_collate

    batch = default_collate([examples[i % len(examples)] for i in range(batch_size)])
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# --- step timing ------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / GIB, 3) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class StepRunner:
    """Optimizer steps of one model on one fixed batch: autocast dtype, optional ``torch.compile``.

    ``run(steps)`` returns seconds per step (host clock after a device synchronisation at both ends).
    """

    def __init__(self, task, model: torch.nn.Module, batch: dict, dtype: torch.dtype | None, grad_clip: float,
                 compiled: torch.nn.Module | None = None):
        self.task, self.model, self.batch, self.dtype = task, model, batch, dtype
        self.forward_model = compiled if compiled is not None else model
        self.device = next(model.parameters()).device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.clip = grad_clip or float("inf")

    def step(self, optimizer) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            loss = self.task.losses(self.forward_model, self.batch).total()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def run(self, optimizer, steps: int) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step(optimizer)
        _sync(self.device)
        return (time.perf_counter() - t0) / steps


def _save(path: Path | None, result: dict) -> None:
    if path is not None:
        write_text(path, json.dumps(result, indent=1))


def bench_recipe(recipe: Recipe, device: str, tiny: bool, out: Path | None = None, search_s: float = 40.0,
                 step_cap_s: float = 0.75, steps: int = 6, warmup: int = 2, mem_fraction: float = 0.8) -> dict:
    """Batch search and per-mode step speed of one recipe (see the module docstring).

    Args:
        recipe: the recipe; device: ``cuda`` or ``cpu``; tiny: the CPU variant (tiny model, batch at most 2,
            ``torch.compile`` with the ``eager`` backend so that no C++ toolchain is needed).
        out: JSON file rewritten after every figure (partial results survive a kill).
        search_s: time cap of the doubling search; step_cap_s: no doubling past an fp32 step this slow (s).
        steps, warmup: timed and untimed steps per mode (compile: ``warmup + 1`` untimed).
        mem_fraction: no doubling once the next batch's predicted peak exceeds this share of device memory.

    Returns:
        dict: ``config``, ``params``, ``device_name``, ``search`` (one row per tried batch), ``search_stop``,
        ``batch``, ``flops_per_step``, ``modes`` (per mode: ``batch``, ``step_s``, ``samples_per_s``,
        ``peak_mem_gib``, ``mfu``, ``status``, ``error``; compile also ``compile_s``), the ratios
        ``bf16_vs_fp32`` and ``compile_vs_bf16`` (step-time speed-ups, > 1 = faster) and, with a recipe
        batch, ``recipe_batch`` and ``recipe_batch_step_s`` (bf16, eager).
    """
    from toolkit.engine.flops import flops_per_step, mfu, peak_tflops
    from toolkit.engine.optim import build_optimizer
    from toolkit.tasks import build_task

    cfg = load_recipe_config(recipe, tiny, device)
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peak = peak_tflops(name, "bf16")
    total_gib = torch.cuda.get_device_properties(dev).total_memory / GIB if dev.type == "cuda" else None
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model().to(dev)
    result: dict = {"config": recipe.tiny_config if tiny else recipe.config, "device_name": name,
                    "params": sum(p.numel() for p in model.parameters()), "bf16_peak_tflops": peak,
                    "search": [], "search_stop": None, "batch": None, "flops_per_step": None,
                    "modes": {}, "bf16_vs_fp32": None, "compile_vs_bf16": None}
    _save(out, result)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_check_{recipe.name}_{os.getpid()}"
    raw = synthetic_samples(recipe, cfg.task.name, 4, work, tiny)
    rng = np.random.default_rng(0)
    examples = [task.decode_train(s, rng) for s in raw]
    optimizer = build_optimizer(model, cfg.optim)
    batch_max = 2 if tiny else recipe.batch_max
    if tiny:  # the CPU check of the code path: both batches, whatever the machine's load
        steps, warmup, step_cap_s, search_s = 2, 1, float("inf"), float("inf")

    def attempt(batch_size: int, dtype, compiled=None, n_steps: int = 1, n_warmup: int = 1) -> dict:
        _reset_peak(dev)
        runner = StepRunner(task, model, collate(examples, batch_size, dev), dtype, cfg.train.grad_clip, compiled)
        t0 = time.perf_counter()
        runner.run(optimizer, n_warmup)
        first_s = time.perf_counter() - t0
        step_s = runner.run(optimizer, n_steps)
        row = {"batch": batch_size, "step_s": round(step_s, 5), "samples_per_s": round(batch_size / step_s, 2),
               "peak_mem_gib": _peak_gib(dev), "warmup_s": round(first_s, 3)}
        del runner
        return row

    # 1. doubling search, fp32 eager
    b, t_start = recipe.batch_start if not tiny else 1, time.perf_counter()
    _reset_peak(dev)
    static_gib = _peak_gib(dev)
    while True:
        try:
            row = attempt(b, None)
            row["status"] = "ok"
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            result["search"].append({"batch": b, "status": "oom"})
            result["search_stop"] = "out of memory"
            optimizer.zero_grad(set_to_none=True)
            _reset_peak(dev)
            break
        result["search"].append(row)
        result["batch"] = b
        _save(out, result)
        if 2 * b > batch_max:
            result["search_stop"] = f"batch cap {batch_max}"
            break
        if row["step_s"] > step_cap_s:
            result["search_stop"] = f"fp32 step over {step_cap_s} s"
            break
        if time.perf_counter() - t_start > search_s:
            result["search_stop"] = f"search time cap {search_s} s"
            break
        if total_gib and row["peak_mem_gib"] is not None:
            predicted = (static_gib or 0) + 2 * (row["peak_mem_gib"] - (static_gib or 0))
            if predicted > mem_fraction * total_gib:
                result["search_stop"] = f"predicted peak {predicted:.1f} GiB over {mem_fraction:.0%} of {total_gib:.1f}"
                break
        b *= 2
    batch_size = result["batch"]
    if batch_size is None:
        raise RuntimeError(f"{recipe.name}: an fp32 step at batch {b} does not fit")
    _save(out, result)

    # 2. model FLOPs of one step (forward + backward)
    def one_step():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            task.losses(model, collate(examples, batch_size, dev)).total().backward()
    result["flops_per_step"] = flops_per_step(one_step)
    optimizer.zero_grad(set_to_none=True)
    _save(out, result)

    # 3. the three modes at that batch; the recipe's per-GPU batch (bf16, eager; for the wall-time estimate)
    #    before compiling, which is the slowest part and the likeliest to meet the time budget
    def measure(mode: str) -> None:
        dtype = None if mode == "fp32" else torch.bfloat16
        entry: dict = {"status": "failed", "error": None}
        try:
            compiled = None
            if mode.endswith("+compile"):
                compiled = torch.compile(model, backend="eager" if tiny else "inductor")
                entry["compile_backend"] = "eager" if tiny else "inductor"
            row = attempt(batch_size, dtype, compiled, steps, warmup + (1 if compiled is not None else 0))
            if compiled is not None:
                entry["compile_s"] = row["warmup_s"]
            entry.update(row, status="ok")
            entry["mfu"] = round(mfu(result["flops_per_step"], row["step_s"], peak), 4) if peak else None
        except Exception as exc:  # a failing mode is reported, the others still run
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            optimizer.zero_grad(set_to_none=True)
            _reset_peak(dev)
        if mode.endswith("+compile"):
            torch._dynamo.reset()  # drop the compiled graphs (and their memory)
        result["modes"][mode] = entry
        ok = {m: e["step_s"] for m, e in result["modes"].items() if e.get("status") == "ok"}
        if "fp32" in ok and "bf16" in ok:
            result["bf16_vs_fp32"] = round(ok["fp32"] / ok["bf16"], 3)
        if "bf16" in ok and "bf16+compile" in ok:
            result["compile_vs_bf16"] = round(ok["bf16"] / ok["bf16+compile"], 3)
        _save(out, result)

    measure("fp32")
    measure("bf16")
    if recipe.recipe_batch:
        rb = 1 if tiny else recipe.recipe_batch
        try:
            row = attempt(rb, torch.bfloat16, None, steps, warmup)
            result["recipe_batch"], result["recipe_batch_step_s"] = rb, row["step_s"]
        except Exception as exc:
            result["recipe_batch_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        _save(out, result)
    if recipe.compile or tiny:
        measure("bf16+compile")
    else:
        result["modes"]["bf16+compile"] = {"status": "skipped", "error": recipe.compile_skip}
        _save(out, result)
    return result


def bench_loader(recipe: Recipe, device: str, tiny: bool, workers: int, out: Path | None = None,
                 measure_s: float = 10.0, distinct: int = 64) -> dict:
    """Samples/s of the engine's training loader over synthetic shards of the recipe's format.

    ``distinct`` samples (24 at most for BEV: six 1600 x 900 JPEGs each take a while to make), each written
    4 times, in 8 shards; batches of the recipe's ``data.batch_size``
    (at most 4 with ``tiny``); ``workers`` loader processes; the rate over ``measure_s`` seconds (at
    least 4 batches) after the first batch.

    Returns:
        dict: ``workers``, ``batch_size``, ``samples``, ``seconds``, ``samples_per_s``, ``shard_bytes_per_sample``.
    """
    from toolkit.data.pipeline import train_loader
    from toolkit.tasks import build_task

    cfg = load_recipe_config(recipe, tiny, device)
    task = build_task(cfg.task)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_check_loader_{recipe.name}_{os.getpid()}"
    distinct = min(distinct, 4) if tiny else min(distinct, 24) if cfg.task.name == "bev" else distinct
    t0 = time.perf_counter()
    raw = synthetic_samples(recipe, cfg.task.name, distinct, work / "src", tiny)
    pattern = write_shards(raw, work / "shards", shards=8 if not tiny else 2, copies=4)
    bytes_per = sum(len(v) for s in raw for v in s.values() if isinstance(v, bytes)) / len(raw)
    result = {"workers": workers, "batch_size": min(cfg.data.batch_size, 4) if tiny else cfg.data.batch_size,
              "shards_build_s": round(time.perf_counter() - t0, 2), "shard_bytes_per_sample": int(bytes_per)}
    _save(out, result)
    loader = train_loader(pattern, task.decode_train, result["batch_size"], seed=0, num_workers=workers,
                          shuffle_buffer=16, keys=task.shard_keys)
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    while n < 4 or time.perf_counter() - t0 < (0.5 if tiny else measure_s):
        next(it)
        n += 1
    elapsed = time.perf_counter() - t0
    with contextlib.suppress(Exception):
        del it, loader
    result.update(samples=n * result["batch_size"], seconds=round(elapsed, 3),
                  samples_per_s=round(n * result["batch_size"] / elapsed, 2))
    _save(out, result)
    return result


def estimate_wall_time(step_s: float, iterations: int = 25_000, batch: int = 40, gpus: int = 8,
                       per_gpu_batch: int = 5, loader_samples_per_s: float | None = None) -> dict:
    """Wall time of ``iterations`` optimizer steps at global ``batch`` on ``gpus`` GPUs (DDP, one process
    per GPU, ``per_gpu_batch = batch / gpus``), from the one-GPU step time at ``per_gpu_batch``.

    Assumes the gradient all-reduce overlaps the backward pass (DDP buckets over NVLink) and no evaluation
    or checkpoint time; when the loader (one per GPU, as measured) is slower than a GPU's demand, the
    loader's rate bounds the step. Returns hours and the bound (``compute`` or ``loader``).
    """
    if batch % gpus or batch // gpus != per_gpu_batch:
        raise ValueError(f"batch {batch} on {gpus} GPUs is not {per_gpu_batch} per GPU")
    loader_step = per_gpu_batch / loader_samples_per_s if loader_samples_per_s else 0.0
    bound = "loader" if loader_step > step_s else "compute"
    seconds = iterations * max(step_s, loader_step)
    return {"iterations": iterations, "global_batch": batch, "gpus": gpus, "per_gpu_batch": per_gpu_batch,
            "step_s": round(step_s, 5), "loader_step_s": round(loader_step, 5), "bound": bound,
            "hours": round(seconds / 3600, 3), "assumes": "all-reduce overlapped with backward; no eval/checkpoints"}
