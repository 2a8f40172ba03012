"""Benchmarks that print figures (ratios within one run; never timed tests).

``python -m toolkit.bench [loader|engine|all] --config CONFIG.yaml [key=value ...] [--json]``
``python -m toolkit.bench cameras --shards 'data/shards/x/train-*.tar' [--image-size 400x224] [--json]``

* ``loader``: samples/s of the engine's WebDataset training loader (resampled shards, shuffle
  buffer, the task's decode, batching, ``data.num_workers`` workers) against a bare single-process
  loop that reads the same tar files with ``tarfile`` and decodes the same arrays the same way.
  Ratio > 1 means the pipeline is faster than the bare loop.
* ``engine``: seconds per optimizer step of the real :class:`~toolkit.engine.trainer.Trainer` loop
  (data from shards, EMA, logging, stop-trigger checks; checkpoints and evaluation off) against a bare
  PyTorch loop (next batch, forward, backward, clip, AdamW step) with the same model, batch size, precision
  and training loader, run before and after the engine; medians of 5-step means. Ratio = engine / bare
  (1.0 = no overhead). Then, in the same run: the engine again with ``train.compile=--compile`` (default
  ``model``; ``false`` skips it) and ``compiled_vs_eager_ratio``; FLOPs per step (``FlopCounterMode``),
  achieved TFLOP/s and MFU against ``--peak-tflops`` or the known-GPU table (:mod:`toolkit.engine.flops`;
  none on a CPU without ``--peak-tflops``); peak step memory without and with activation checkpointing of
  the task's blocks (``--checkpointing blocks``; CUDA allocator, or torch's CPU allocations from
  ``torch.profiler`` memory events) and their ratio.
* ``cameras``: samples/s of the training loader on multi-sensor shards (:mod:`toolkit.data.multisensor`:
  six JPEGs decoded in the workers and resized with Simple-BEV's train-time jitter to ``--image-size``,
  40000 points, BEV targets on the 200 x 200 grid) against two bare single-process loops over the same tar
  members read with ``tarfile``: one decoding and resizing the same JPEGs with plain Pillow
  (``Image.open().convert("RGB").resize()``, nothing else), one running the same decode as the loader.

* ``index``: recall@10 of Faiss HNSW, IVF-PQ and IVF-PQ + IndexRefineFlat re-ranking against exact Flat
  search on ``--n`` (100k) synthetic clustered, L2-normalised ``--dim`` (256) vectors, with build time,
  queries/s and bytes per vector of each (:func:`bench_index`;
  ``python -m toolkit.bench index [--n N --dim D --threads T]``).

* ``strategies``: seconds per optimizer step and peak memory (rank 0: CUDA allocator peak, or max RSS on
  CPU) of the real training CLI under ``torchrun --nproc_per_node=--nproc`` for ``train.strategy=ddp`` and
  DeepSpeed ZeRO stages 1, 2 and 3 (:func:`bench_strategies`; same config, model, batch and steps; the
  first ``--warmup`` steps not measured; evaluation, pictures and exports off). Ratio = ZeRO / DDP.

* ``gpu``: the one-shot device check (:mod:`toolkit.gpu_check`; ``python -m toolkit.bench gpu --out DIR``,
  or scripts/gpu-check): the GPU suite and step/loader figures on one GPU in 8 minutes (docs/gpu.md).

``--json`` prints the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tarfile
import tempfile
import time

import numpy as np
import torch


def bench_loader(cfg, samples: int = 512) -> dict:
    """Samples/s of the training loader vs a bare tar loop over the same shards."""
    from toolkit.data.pipeline import expand_shards, train_loader
    from toolkit.tasks import build_task

    task = build_task(cfg.task)
    urls = expand_shards(cfg.data.train)
    bs = cfg.data.batch_size
    n_batches = max(2, samples // bs)

    loader = train_loader(cfg.data.train, task.decode_train, bs, seed=cfg.run.seed,
                          num_workers=cfg.data.num_workers, shuffle_buffer=cfg.data.shuffle_buffer,
                          keys=task.shard_keys)
    it = iter(loader)
    next(it)  # start the workers and fill the pipeline once
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    pipeline_s = time.perf_counter() - t0
    del it, loader

    rng = np.random.default_rng(0)
    done = 0
    t0 = time.perf_counter()
    for sample in _tar_samples(urls, n_batches * bs):
        task.decode_train(sample, rng)
        done += 1
    bare_s = time.perf_counter() - t0
    pipeline_rate = n_batches * bs / pipeline_s
    bare_rate = done / bare_s
    return {"loader_samples_per_s": round(pipeline_rate, 1), "bare_tar_loop_samples_per_s": round(bare_rate, 1),
            "loader_vs_bare_ratio": round(pipeline_rate / bare_rate, 3), "loader_workers": cfg.data.num_workers,
            "loader_samples": n_batches * bs, "shards": len(urls)}


def _tar_samples(urls: list[str], limit: int):
    """Up to ``limit`` raw samples (dicts of member bytes) read from ``urls`` in order with ``tarfile``, cycling."""
    done = 0
    while True:
        for url in urls:
            with tarfile.open(url) as tar:
                members: dict[str, dict] = {}
                for member in tar:
                    key, _, ext = member.name.partition(".")
                    members.setdefault(key, {"__key__": key})[ext] = tar.extractfile(member).read()
            for sample in members.values():
                yield sample
                done += 1
                if done >= limit:
                    return


def bench_cameras(shards: str, samples: int = 48, workers: int = 2, batch_size: int = 4,
                  image_size: tuple[int, int] = (400, 224), shuffle_buffer: int = 8) -> dict:
    """Samples/s of the multi-camera training loader vs bare tar loops (see the module docstring).

    Args:
        shards: multi-sensor shard spec; image_size: decoded ``(width, height)``.
    """
    from PIL import Image

    from toolkit.data.multisensor import SHARD_KEYS, MultiSensorConfig, MultiSensorDecoder, camera_key
    from toolkit.data.pipeline import expand_shards, train_loader

    urls = expand_shards(shards)
    width, height = image_size
    decode = MultiSensorDecoder(MultiSensorConfig(image_height=height, image_width=width, augment=True))
    n_batches = max(2, samples // batch_size)
    loader = train_loader(urls, decode, batch_size, seed=0, num_workers=workers, shuffle_buffer=shuffle_buffer,
                          keys=SHARD_KEYS)
    it = iter(loader)
    for _ in range(2 * max(1, workers) + 1):  # start the workers and drain their prefetched batches
        next(it)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        batch = next(it)
    pipeline_s = time.perf_counter() - t0
    shape = tuple(batch["images"].shape)
    del it, loader
    n = n_batches * batch_size
    cams = [camera_key(c) for c in json.loads(next(_tar_samples(urls, 1))["json"])["cameras"]]

    t0 = time.perf_counter()
    for sample in _tar_samples(urls, n):
        for cam in cams:
            np.asarray(Image.open(io.BytesIO(sample[cam])).convert("RGB").resize((width, height), Image.BILINEAR))
    pil_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for sample in _tar_samples(urls, n):
        decode(sample, rng)
    same_s = time.perf_counter() - t0
    rate = n / pipeline_s
    return {"cameras_loader_samples_per_s": round(rate, 2),
            "cameras_bare_pil_samples_per_s": round(n / pil_s, 2),
            "cameras_loader_vs_bare_pil_ratio": round(rate * pil_s / n, 3),
            "cameras_bare_same_decode_samples_per_s": round(n / same_s, 2),
            "cameras_loader_vs_bare_same_decode_ratio": round(rate * same_s / n, 3),
            "cameras_batch_images_shape": list(shape), "cameras_loader_workers": workers,
            "cameras_samples": n, "cameras_shards": len(urls)}


def bench_engine(cfg, steps: int = 60, warmup: int = 5, window: int = 5, compile: str = "model",
                 checkpointing: str = "blocks", peak_tflops: float | None = None) -> dict:
    """Seconds per step of the Trainer loop vs a bare PyTorch loop (same model, batch, precision, loader).

    Both loops take their batches from the same training loader (``data.num_workers`` workers), so the ratio
    is the engine's own overhead (Accelerate, loss bookkeeping, EMA, stop/non-finite agreement, logging); the
    loader is measured against a bare tar loop by :func:`bench_loader`. Each figure is the median over
    ``window``-step means after ``warmup`` steps; the bare loop runs once before and once after the engine
    and their medians are averaged, so a drift of the machine's speed during the run cancels out.

    With ``compile`` ("model" | "blocks"; "false" = skip) the engine runs a second time with
    ``train.compile=compile`` (its compilation falls in the warm-up steps) and
    ``compiled_vs_eager_ratio`` = compiled / eager step time. :func:`engine_figures` adds the FLOPs per
    step, achieved FLOP/s, MFU and the activation-checkpointing memory figures.
    """
    from toolkit.config import from_dict, to_dict
    from toolkit.engine.trainer import Trainer

    result = _engine_run(cfg, steps, warmup, window, from_dict, to_dict, Trainer)
    if compile not in ("false", None, False):
        raw = to_dict(cfg)
        raw["train"]["compile"] = compile
        compiled = _engine_run(from_dict(raw, source="bench"), steps, warmup, window, from_dict, to_dict, Trainer,
                               bare=False)
        result.update({f"compiled_{compile}_step_s": compiled["engine_step_s"],
                       "compiled_vs_eager_ratio": round(compiled["engine_step_s"] / result["engine_step_s"], 3),
                       "compile_warmup_steps": warmup})
        result.update(interleaved_compile_ratio(cfg, compile))
    result.update(engine_figures(cfg, result["engine_step_s"], checkpointing, peak_tflops))
    return result


def interleaved_compile_ratio(cfg, mode: str = "model", rounds: int = 7, steps: int = 2) -> dict:
    """Compiled / eager time of one training step (forward, backward, AdamW) of the same model on the same
    batch, measured in alternation: ``rounds`` rounds of ``steps`` eager then ``steps`` compiled steps, and
    the median of the rounds' ratios. A machine whose speed drifts (other jobs) moves both halves of a round
    alike, which two engine runs minutes apart do not share (``compiled_vs_eager_ratio``).

    ``mode``: ``model`` (``torch.compile`` of the whole model) or ``blocks`` (each declared block), with
    ``train.compile_backend``. Returns ``compiled_vs_eager_interleaved`` (median), ``..._min`` and
    ``..._max`` over the rounds, and ``interleaved_compile_s`` (the first compiled step, compilation included).
    """
    from toolkit.engine.optim import build_optimizer
    from toolkit.engine.parallelize import parallelize
    from toolkit.tasks import build_task

    model, batch, loss_of, device = _one_step_parts(cfg)
    task = build_task(cfg.task)
    eager = task.build_model().to(device).train()
    eager.load_state_dict(model.state_dict())
    parallelize(model, task.blocks(model), mode, "false", cfg.task.name, cfg.train.compile_backend)
    runs = {"eager": (eager, build_optimizer(eager, cfg.optim)), "compiled": (model, build_optimizer(model, cfg.optim))}

    def timed(name: str, n: int) -> float:
        m, opt = runs[name]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(n):
            loss_of(m, batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) / n

    compile_s = timed("compiled", 1)
    timed("eager", 1)
    ratios = sorted(timed("compiled", steps) / timed("eager", steps) for _ in range(rounds))
    return {"compiled_vs_eager_interleaved": round(ratios[len(ratios) // 2], 3),
            "compiled_vs_eager_interleaved_min": round(ratios[0], 3),
            "compiled_vs_eager_interleaved_max": round(ratios[-1], 3), "interleaved_rounds": rounds,
            "interleaved_compile_s": round(compile_s, 1)}


def _engine_run(cfg, steps, warmup, window, from_dict, to_dict, Trainer, bare: bool = True) -> dict:
    """One Trainer run of ``warmup + steps`` steps (and the bare loop before and after it if ``bare``)."""

    window = max(1, min(window, steps))  # a short run (--steps < 5) is one window per step
    with tempfile.TemporaryDirectory() as tmp:
        raw = to_dict(cfg)
        raw["run"]["dir"] = tmp
        raw["train"]["max_steps"] = warmup + steps
        raw["checkpoint"]["every"] = 10 ** 9
        raw["checkpoint"]["export_jit"] = False
        raw["eval"]["every"] = 0
        raw["data"]["val"] = ""
        raw["log"]["image_every"] = 0
        raw["log"]["progress"] = False
        raw["log"]["every"] = window
        ecfg = from_dict(raw, source="bench")
        before = _bare_steps(cfg, steps, warmup, window) if bare else 0.0
        trainer = Trainer(ecfg)
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            trainer.fit()
        del trainer
        after = _bare_steps(cfg, steps, warmup, window) if bare else 0.0
        rows = [json.loads(line) for line in open(f"{tmp}/metrics.jsonl") if '"perf/step_time_s"' in line]
        rows = [r for r in rows if r["step"] > warmup] or rows
        engine_step = float(np.median([r["perf/step_time_s"] for r in rows]))
    if not bare:
        return {"engine_step_s": round(engine_step, 4)}
    bare_step = 0.5 * (before + after)
    return {"engine_step_s": round(engine_step, 4), "bare_step_s": round(bare_step, 4),
            "bare_step_s_before_after": [round(before, 4), round(after, 4)],
            "engine_vs_bare_ratio": round(engine_step / bare_step, 3), "steps": steps, "device": str(_device(cfg)),
            "precision": cfg.train.precision, "batch_size": cfg.data.batch_size,
            "loader_workers": cfg.data.num_workers}


def engine_figures(cfg, step_time_s: float, checkpointing: str = "blocks", peak: float | None = None) -> dict:
    """FLOPs of one training step, achieved FLOP/s and MFU, and peak step memory without and with
    activation checkpointing.

    FLOPs: :func:`toolkit.engine.flops.flops_per_step` over one forward + backward of the task's loss on a
    training batch (matmuls and convolutions, as PaLM's MFU; the optimizer's elementwise work is not
    counted). Achieved TFLOP/s = FLOPs / ``step_time_s`` (the engine's measured step). MFU against
    ``peak`` TFLOP/s, else the :data:`~toolkit.engine.flops.PEAK_TFLOPS` entry of the CUDA device for
    ``train.precision`` (bf16/fp16 -> "bf16", fp32 -> "fp32"); none on a CPU without ``peak``.

    Memory: :func:`step_peak_memory` of one forward + backward, plain and with ``checkpointing="blocks"``
    (skipped when "false" or the task declares no blocks).
    """
    from toolkit.engine.flops import flops_per_step, mfu, peak_tflops

    model, batch, loss_of, device = _one_step_parts(cfg)
    flops = flops_per_step(lambda: loss_of(model, batch).backward())
    out: dict = {"flops_per_step": flops, "achieved_tflops": round(flops / step_time_s / 1e12, 6)}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    dtype = "fp32" if cfg.train.precision == "fp32" else "bf16"
    peak = peak if peak else peak_tflops(name, dtype)
    out["device_name"] = name
    if peak:
        out.update({"peak_tflops": peak, "mfu": round(mfu(flops, step_time_s, peak), 6)})
    if checkpointing not in ("false", None, False):
        from toolkit.engine.parallelize import parallelize
        from toolkit.tasks import build_task

        task = build_task(cfg.task)
        blocks = task.blocks(model)
        if blocks:
            plain = step_peak_memory(lambda: loss_of(model, batch).backward(), device)
            parallelize(model, blocks, "false", "blocks", task.name)
            ckpt = step_peak_memory(lambda: loss_of(model, batch).backward(), device)
            out.update({"step_peak_mib": round(plain / 2**20, 2), "checkpointed_step_peak_mib": round(ckpt / 2**20, 2),
                        "checkpointed_vs_plain_memory": round(ckpt / plain, 3), "checkpointed_blocks": len(blocks),
                        "memory_measured": "CUDA allocator peak above the step's start" if device.type == "cuda"
                        else "torch CPU allocations (torch.profiler memory events): peak above the step's start"})
    return out


def step_peak_memory(fn, device: torch.device) -> int:
    """Peak bytes allocated by torch while ``fn()`` runs, above what was allocated when it started.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset. CPU: the running sum of
    ``torch.profiler`` memory events (``profile_memory=True``: every allocation and free of torch's
    CPU allocator, in time order); tensors that existed before the call are not counted.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - start)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU),
                    key=lambda e: e.start_ns())
    total = peak = 0
    for e in events:
        total += e.nbytes()
        peak = max(peak, total)
    return int(peak)


def _one_step_parts(cfg):
    """(model in train mode on the device, one training batch, ``loss_of(model, batch)`` under the run's
    autocast, device) for the FLOP and memory figures."""
    from toolkit.data.pipeline import train_loader
    from toolkit.engine.device import check_precision
    from toolkit.tasks import build_task

    device = _device(cfg)
    mixed = check_precision(device.type, cfg.train.precision)
    task = build_task(cfg.task)
    torch.manual_seed(cfg.run.seed)
    model = task.build_model().to(device).train()
    loader = iter(train_loader(cfg.data.train, task.decode_train, cfg.data.batch_size, seed=cfg.run.seed,
                               num_workers=0, shuffle_buffer=cfg.data.shuffle_buffer, keys=task.shard_keys))
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in next(loader).items()}
    del loader
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed)

    def loss_of(m, b):
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            return task.losses(m, b).total()

    return model, batch, loss_of, device


def _device(cfg) -> torch.device:
    from toolkit.engine.device import select_device

    return torch.device(select_device(cfg.train.device))


def _bare_steps(cfg, steps: int, warmup: int, window: int) -> float:
    """Median over ``window``-step means of a bare loop: next batch from the training loader, forward,
    backward, clip, AdamW step (the engine's optimizer), zero_grad; s/step."""
    from toolkit.data.pipeline import train_loader
    from toolkit.engine.device import check_precision
    from toolkit.engine.optim import build_optimizer
    from toolkit.tasks import build_task

    device = _device(cfg)
    mixed = check_precision(device.type, cfg.train.precision)
    task = build_task(cfg.task)
    torch.manual_seed(cfg.run.seed)
    model = task.build_model().to(device)
    opt = build_optimizer(model, cfg.optim)
    loader = iter(train_loader(cfg.data.train, task.decode_train, cfg.data.batch_size, seed=cfg.run.seed,
                               num_workers=cfg.data.num_workers, shuffle_buffer=cfg.data.shuffle_buffer,
                               keys=task.shard_keys))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type) if mixed == "fp16" else None
    times = []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in next(loader).items()}
        with autocast():
            loss = task.losses(model, batch).total()
        if scaler:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or float("inf"))
        (scaler.step(opt), scaler.update()) if scaler else opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    measured = times[warmup:]
    windows = [float(np.mean(measured[i:i + window])) for i in range(0, len(measured) - window + 1, window)]
    del loader
    return float(np.median(windows))


def clustered_embeddings(n: int, dim: int, clusters: int = 100, subspace: int = 16, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 L2-normalised synthetic "embeddings": a Gaussian mixture of ``clusters`` centres
    (N(0, I)), each cluster spread over its own random ``subspace``-dimensional plane (std 0.5 per axis) plus
    isotropic noise (std 0.05): a low intrinsic dimension, as learned embeddings have, unlike i.i.d. noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    planes = (rng.standard_normal((clusters, subspace, dim)) / np.sqrt(dim)).astype(np.float32)
    label = rng.integers(0, clusters, n)
    x = centres[label]
    for c in range(clusters):  # per cluster: one (m, subspace) @ (subspace, dim) product
        rows = np.flatnonzero(label == c)
        x[rows] += (0.5 * np.sqrt(dim)) * rng.standard_normal((len(rows), subspace)).astype(np.float32) @ planes[c]
    x += 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_index(n: int = 100_000, dim: int = 256, queries: int = 1000, k: int = 10, threads: int = 0,
                target: float = 0.95) -> dict:
    """Recall@k of HNSW, IVF-PQ and IVF-PQ + IndexRefineFlat against exact (Flat) search, with build time,
    queries/s and bytes per vector.

    Database: :func:`clustered_embeddings` (``n`` x ``dim``), queries: ``queries`` more points of the same
    mixture (not in the database). Recall@k = |approximate top k  intersect  exact top k| / k, averaged over the
    queries (Faiss' "k-NN intersection", stricter than its "1-NN recall@k"). Query-time knobs are swept (HNSW
    ``efSearch``, IVF-PQ ``nprobe``) and the first setting reaching ``target`` is reported (else the best).
    Queries/s: one batched search of all queries. Bytes per vector: the serialized index / n (codes, ids,
    codebooks, coarse centroids, graph or refine vectors included).

    IVF-PQ settings (the Faiss wiki's guidelines, tuned on this data): ``nlist`` = the power of 2 <= 4 sqrt(n)
    (1024 at 100k), residual encoding (``by_residual``, IVF-PQ's default), ``m`` = dim / 2 sub-quantizers of
    8 bits (2 dimensions each; 136 code + id bytes at d = 256). Recall here is limited by the encoding, not by
    ``nprobe``: at 100k x 256, m = 64 (4 dimensions per sub-quantizer) stays at 0.85 for any nprobe and an OPQ
    pre-rotation does not change it; m = 128 reaches 0.95. The refine row wraps the same trained IVF-PQ in
    ``IndexRefineFlat`` (``k_factor`` 8: PQ candidates re-ranked with the exact vectors, which it keeps, so
    + 4 dim bytes per vector); its build time includes the IVF-PQ's.

    Raises:
        ValueError: ``dim`` is odd (no dim / 2 sub-quantizers) or ``n`` too small for the coarse quantizer.
    """
    import faiss

    from toolkit.embedding.faiss_index import IndexParams, build_index, bytes_per_vector, set_search_params

    if dim % 2:
        raise ValueError(f"--dim must be even for dim / 2 PQ sub-quantizers, got {dim}")
    # OpenMP's thread count is process-wide (torch's intra-op pool shares it): restore it afterwards, so a
    # caller's later torch work runs with the threads it had (bit-identical results depend on it)
    previous = faiss.omp_get_max_threads()
    if threads:
        faiss.omp_set_num_threads(threads)
    try:
        return _bench_index(faiss, n, dim, queries, k, target, build_index, IndexParams, bytes_per_vector,
                            set_search_params)
    finally:
        faiss.omp_set_num_threads(previous)


def _bench_index(faiss, n, dim, queries, k, target, build_index, IndexParams, bytes_per_vector,
                 set_search_params) -> dict:
    """The body of :func:`bench_index`, with Faiss' thread count already set."""
    x = clustered_embeddings(n + queries, dim)
    base, q = np.ascontiguousarray(x[:n]), np.ascontiguousarray(x[n:])
    out: dict = {"index_n": n, "index_dim": dim, "index_queries": queries, "index_k": k,
                 "index_threads": faiss.omp_get_max_threads(), "index_data": "100-centre Gaussian mixture, 16-d "
                 "subspace per centre, L2-normalised; inner product"}

    def timed(fn):
        t0 = time.perf_counter()
        value = fn()
        return value, time.perf_counter() - t0

    flat, build_s = timed(lambda: build_index(base, IndexParams("flat")))
    (_, truth), search_s = timed(lambda: flat.search(q, k))
    out.update(flat_build_s=round(build_s, 2), flat_qps=round(queries / search_s), flat_bytes_per_vector=4 * dim)

    def recall(index) -> tuple[float, float]:
        (_, found), s = timed(lambda: index.search(q, k))
        hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist()))
        return hits / (k * queries), queries / s

    m = dim // 2
    nlist = 2 ** int(math.floor(math.log2(4 * math.sqrt(n))))
    if n < 39 * nlist:
        raise ValueError(f"--n {n} is too small for {nlist} IVF lists (needs >= {39 * nlist})")
    pq = IndexParams("ivfpq", nlist=nlist, m=m, nbits=8)
    refine = IndexParams("ivfpq", nlist=nlist, m=m, nbits=8, refine=8)
    nprobes = (4, 8, 16, 32, 64)
    candidates = {"hnsw": (IndexParams("hnsw", M=32, ef_construction=40), "ef_search", (16, 32, 64, 128, 256)),
                  "ivfpq": (pq, "nprobe", nprobes), "ivfpq_refine": (refine, "nprobe", nprobes)}
    built: dict = {}
    for name, (params, knob, values) in candidates.items():
        if name == "ivfpq_refine":  # the trained IVF-PQ above, its candidates re-ranked with exact vectors
            index, wrap_s = timed(lambda: faiss.IndexRefineFlat(built["ivfpq"][0], faiss.swig_ptr(base)))
            build_s = built["ivfpq"][1] + wrap_s
        else:
            index, build_s = timed(lambda: build_index(base, params))
        built[name] = (index, build_s)
        sweep = []
        for v in values:
            setattr(params, knob, v)
            set_search_params(index, params)
            r, qps = recall(index)
            sweep.append((v, r, qps))
            if r >= target:
                break
        v, r, qps = next((s for s in sweep if s[1] >= target), max(sweep, key=lambda s: s[1]))
        out.update({f"{name}_params": (f"M=32 efConstruction=40 efSearch={v}" if name == "hnsw" else
                                       f"IVF{nlist},PQ{m}x8 (by_residual) nprobe={v}"
                                       + (" + IndexRefineFlat k_factor=8" if params.refine else "")),
                    f"{name}_recall@{k}": round(r, 4), f"{name}_build_s": round(build_s, 2), f"{name}_qps": round(qps),
                    f"{name}_bytes_per_vector": round(bytes_per_vector(index, n), 1),
                    f"{name}_sweep": [[s[0], round(s[1], 4), round(s[2])] for s in sweep]})
    return out


def bench_strategies(config: str, overrides: list[str], nproc: int = 2, steps: int = 30, warmup: int = 5,
                     strategies: tuple[str, ...] = ("ddp", "zero1", "zero2", "zero3")) -> dict:
    """Step time and peak memory of ``python -m toolkit.train`` under torchrun for each strategy.

    Args:
        config, overrides: the run config and its ``key=value`` overrides (the same for every strategy).
        nproc: ranks (``torchrun --nproc_per_node``); steps: optimizer steps per run (> warmup);
        warmup: leading steps left out of the step time (the windows of ``log.every = warmup`` steps
        after the first are averaged); strategies: ``ddp`` and/or ``zero1``/``zero2``/``zero3``.

    Returns:
        ``{NAME}_step_s``, ``{NAME}_peak_mib`` (rank 0) and, for ZeRO, ``{NAME}_vs_ddp_step`` and
        ``{NAME}_vs_ddp_mem`` per strategy, plus the settings.

    Raises:
        RuntimeError: a run that fails (its last output lines in the message).
    """
    import subprocess

    every = max(1, warmup)
    result: dict = {"strategies_nproc": nproc, "strategies_steps": steps, "strategies_warmup": every}
    with tempfile.TemporaryDirectory(prefix="bench-strategies-") as tmp:
        for name in strategies:
            extra = [] if name == "ddp" else ["train.strategy=deepspeed", f"deepspeed.stage={name[-1]}"]
            run = os.path.join(tmp, name)
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
                   "-m", "toolkit.train", "--config", config, *overrides, f"run.dir={run}", f"train.max_steps={steps}",
                   f"log.every={every}", "eval.every=0", "data.val=", "checkpoint.every=0", "checkpoint.export_jit=false",
                   "log.image_every=0", "log.progress=false", *extra]
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"{name} run failed (exit {res.returncode}): {res.stderr[-2000:]}")
            with open(os.path.join(run, "metrics.jsonl")) as f:
                rows = [json.loads(line) for line in f if "perf/step_time_s" in line]
            times = [r["perf/step_time_s"] for r in rows[1:]] or [r["perf/step_time_s"] for r in rows]
            with open(os.path.join(run, "summary.json")) as f:
                peak = json.load(f)["peak_mem_mb"]
            result[f"{name}_step_s"] = round(sum(times) / len(times), 4)
            result[f"{name}_peak_mib"] = round(peak, 1)
    if "ddp_step_s" in result:
        for name in strategies:
            if name != "ddp":
                result[f"{name}_vs_ddp_step"] = round(result[f"{name}_step_s"] / result["ddp_step_s"], 3)
                result[f"{name}_vs_ddp_mem"] = round(result[f"{name}_peak_mib"] / result["ddp_peak_mib"], 3)
    return result


def main(argv: list[str] | None = None) -> int:
    from toolkit.cli import Parser, int_at_least

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gpu"]:  # the one-shot device check: its own options (python -m toolkit.bench gpu --help)
        from toolkit.gpu_check import main as gpu_main

        return gpu_main(argv[1:])

    p = Parser(prog="python -m toolkit.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="?", choices=["loader", "engine", "all", "cameras", "index", "strategies"], default="all",
                   help="all = loader + engine")
    p.add_argument("--n", type=int_at_least(10_000), default=100_000, help="database vectors (index; default 100000)")
    p.add_argument("--dim", type=int_at_least(8), default=256, help="vector dimension (index; default 256)")
    p.add_argument("--threads", type=int_at_least(0), default=0, help="Faiss threads (index; default 0 = Faiss' default)")
    p.add_argument("--config", "-c", help="run config whose data/model/precision to benchmark (loader, engine)")
    p.add_argument("--shards", help="multi-sensor shard spec (cameras)")
    p.add_argument("--image-size", default="400x224", metavar="WxH", help="decoded image size (cameras; default 400x224)")
    p.add_argument("--workers", type=int_at_least(0), default=2, help="loader workers (cameras; default 2)")
    p.add_argument("--batch-size", type=int_at_least(1), default=4, help="batch size (cameras; default 4)")
    p.add_argument("--steps", type=int_at_least(1), default=60, help="measured optimizer steps (engine; default 60)")
    p.add_argument("--warmup", type=int_at_least(0), default=5, help="warm-up steps not measured (engine)")
    p.add_argument("--samples", type=int_at_least(1), default=None, help="samples to read (loader: default 512, cameras: 48)")
    p.add_argument("--nproc", type=int_at_least(1), default=2, help="ranks per strategy run (strategies; default 2)")
    p.add_argument("--compile", choices=["model", "blocks", "false"], default="model",
                   help="engine: also run with train.compile=MODE and print the compiled/eager ratio (default model)")
    p.add_argument("--checkpointing", choices=["blocks", "false"], default="blocks",
                   help="engine: peak step memory without and with activation checkpointing (default blocks)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="engine: peak TFLOP/s for MFU (default: the known-GPU table; none on CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_intermixed_args(argv)
    from toolkit.config import ConfigError, load_config

    if args.which == "cameras":
        from toolkit.data.pipeline import ShardListError

        try:
            from toolkit.camera.augment import parse_image_size

            width, height = parse_image_size(args.image_size)
            if not args.shards:
                raise ValueError("cameras needs --shards")
            result = {"shards": args.shards, "torch": torch.__version__, "threads": torch.get_num_threads()}
            result.update(bench_cameras(args.shards, args.samples or 48, args.workers, args.batch_size,
                                        (width, height)))
        except (ValueError, ShardListError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return _print(result, args.json)
    if args.which == "index":
        if args.n < 10_000 or args.dim < 8 or args.dim % 2 or args.threads < 0:
            print("error: index needs --n >= 10000, an even --dim >= 8 and --threads >= 0", file=sys.stderr)
            return 2
        try:
            result = bench_index(args.n, args.dim, threads=args.threads)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return _print(result, args.json)
    if not args.config:
        print(f"error: {args.which} needs --config", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    result: dict = {"config": args.config, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.which == "strategies":
        if args.steps <= args.warmup:
            print("error: strategies needs --steps > --warmup", file=sys.stderr)
            return 2
        try:
            result.update(bench_strategies(args.config, args.overrides, args.nproc, args.steps, args.warmup))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return _print(result, args.json)
    if args.which in ("loader", "all"):
        result.update(bench_loader(cfg, args.samples or 512))
    if args.which in ("engine", "all"):
        if args.peak_tflops is not None and not args.peak_tflops > 0:
            print(f"error: --peak-tflops must be > 0, got {args.peak_tflops}", file=sys.stderr)
            return 2
        result.update(bench_engine(cfg, args.steps, args.warmup, compile=args.compile,
                                   checkpointing=args.checkpointing, peak_tflops=args.peak_tflops))
    return _print(result, args.json)


def _print(result: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:{max(32, max(map(len, result)) + 1)}s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
