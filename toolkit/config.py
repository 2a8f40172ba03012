"""Run configuration: YAML files over typed dataclasses, with ``key=value`` dotted overrides.

A config has the engine sections below plus a ``task`` section whose schema is the chosen task's
``Config`` dataclass (picked by ``task.name``). Loading merges, in order: the dataclass defaults, the
YAML file, the command-line overrides (``train.lr=3e-4 task.latent_channels=16``). Unknown keys, wrong
types and invalid choices raise :class:`ConfigError` naming the file and the full key.

Example::

    cfg = load_config("configs/lidar_tokenizer.yaml", ["train.max_steps=50", "data.batch_size=4"])
    cfg.train.max_steps   # 50
    to_dict(cfg)          # plain dict: saved as RUN/config.yaml and inside every checkpoint
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """Invalid configuration: the message names the file and key and says what was expected."""


@dataclass
class RunConfig:
    """Where the run lives and how it is seeded.

    The run folder is ``dir`` if set, else ``root/name``, with ``name`` defaulting to the config file's
    stem. It never contains a timestamp, so re-running (or a requeued job) finds its checkpoints.
    """

    #: run name; the run folder is root/name (default: the config file's stem, or the task name without a file)
    name: str = ""
    #: folder that holds the runs
    root: str = "runs"
    #: explicit run folder; overrides root/name when set
    dir: str = ""
    #: global seed: model init, data order and augmentation (each rank and worker derives its own from it)
    seed: int = 0


@dataclass
class DataConfig:
    """WebDataset input. ``train``/``val``: shard specs (brace patterns, globs, ``::``-joined).

    ``batch_size`` is per rank and per micro-step. ``resume``: ``exact`` fast-forwards the stream to
    where the checkpoint left it (reads but does not decode the consumed samples); ``reseed`` starts a
    fresh stream seeded by the resume step (no reading; statistically equivalent; for very long runs).
    """

    #: training shard spec: a brace pattern, glob or several joined with `::`
    #: (data/shards/x/train-{000000..000009}.tar)
    train: str = ""
    #: validation shard spec, same forms as data.train ("" = no validation)
    val: str = ""
    #: samples per rank per micro-step (the global batch is batch_size x ranks x train.grad_accum)
    batch_size: int = 8
    #: validation batch size per rank (0 = data.batch_size)
    val_batch_size: int = 0
    #: DataLoader worker processes per rank (0 = decode in the training process)
    num_workers: int = 2
    #: WebDataset shuffle buffer, samples (0 = shard order only)
    shuffle_buffer: int = 1000
    #: on resume: `exact` fast-forwards the stream to where the checkpoint left it (reads but does not decode the
    #: consumed samples); `reseed` starts a fresh stream seeded by the resume step (no reading; for very long runs)
    resume: str = "exact"


@dataclass
class TrainConfig:
    """The loop. ``precision``: fp32 | bf16 | fp16 (fp16 uses loss scaling; needs CUDA or MPS).
    ``device``: auto | cpu | cuda | mps. ``strategy``: ddp | deepspeed (ZeRO stage etc. in the
    ``deepspeed`` section; :mod:`toolkit.engine.zero`) | fsdp (FSDP2; :mod:`toolkit.engine.fsdp`).

    An optimizer step whose loss or gradient norm is not finite is skipped on every rank (counted as
    ``train/skipped_steps``); ``max_bad_steps`` skips in a row stop the run with an error."""

    #: optimizer steps of the whole run (a resumed run continues up to it)
    max_steps: int = 1000
    #: micro-batches accumulated per optimizer step
    grad_accum: int = 1
    #: clip the global gradient norm to this value (0 = no clipping)
    grad_clip: float = 1.0
    #: `fp32`, `bf16` (autocast) or `fp16` (autocast with loss scaling; needs CUDA or MPS)
    precision: str = "fp32"
    #: `auto` picks cuda, then mps, then cpu
    device: str = "auto"
    #: `ddp` (torch DistributedDataParallel), `deepspeed` (ZeRO; settings in the deepspeed section) or
    #: `fsdp` (FSDP2 fully_shard per task block; sharded checkpoints with torch.distributed.checkpoint)
    strategy: str = "ddp"
    #: DDP's find_unused_parameters, for models whose forward skips parameters (ddp only)
    find_unused_parameters: bool = False
    #: optimizer steps in a row skipped for a non-finite loss or gradient norm before the run stops with an error
    max_bad_steps: int = 20
    #: torch.compile: false | model (the whole model) | blocks (each block the task declares, regional
    #: compilation); compiled in place, checkpoints and exports keep plain keys (toolkit.engine.parallelize)
    compile: str = "false"
    #: torch.compile backend: inductor (generated kernels) | aot_eager (same graphs, no code generation) | ...
    compile_backend: str = "inductor"
    #: false | blocks: recompute each declared block's activations in backward
    #: (torch.utils.checkpoint, use_reentrant=False) instead of keeping them: less memory, more compute
    activation_checkpointing: str = "false"


@dataclass
class DeepSpeedConfig:
    """DeepSpeed ZeRO settings, used when ``train.strategy=deepspeed`` (:mod:`toolkit.engine.zero`).

    ``stage``: ZeRO stage 1 (optimizer states partitioned), 2 (+ gradients) or 3 (+ parameters).
    ``offload_optimizer`` / ``offload_param`` (stage 3 only): keep those partitions in CPU memory.
    ``reduce_bucket_size`` / ``allgather_bucket_size``: communication bucket sizes in elements.
    ``param_persistence_threshold``: (stage 3) parameters with fewer elements stay unpartitioned.
    ``config``: path of a DeepSpeed JSON file whose keys are used (its ``zero_optimization`` replaces the
    one built from the keys above); batch sizes, accumulation, clipping and precision stay the engine's."""

    #: ZeRO stage: 1 (optimizer states partitioned), 2 (+ gradients) or 3 (+ parameters)
    stage: int = 2
    #: keep the optimizer-state partitions in CPU memory
    offload_optimizer: bool = False
    #: keep the parameter partitions in CPU memory (stage 3 only)
    offload_param: bool = False
    #: reduce-scatter bucket size, elements (>= 1)
    reduce_bucket_size: int = 500_000_000
    #: all-gather bucket size, elements (>= 1)
    allgather_bucket_size: int = 500_000_000
    #: (stage 3) parameters with fewer elements stay unpartitioned (>= 0)
    param_persistence_threshold: int = 100_000
    #: path of a DeepSpeed JSON file whose keys are used (its zero_optimization replaces the one built from the keys
    #: above; batch sizes, accumulation, clipping and precision stay the engine's); "" = none
    config: str = ""


@dataclass
class OptimConfig:
    """AdamW with linear warmup then ``schedule`` (cosine | linear | constant) down to ``min_lr_ratio * lr``."""

    #: peak learning rate of AdamW
    lr: float = 1e-3
    #: AdamW betas, 2 values in [0, 1)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    #: AdamW epsilon
    eps: float = 1e-8
    #: AdamW decoupled weight decay
    weight_decay: float = 0.01
    #: linear warmup from 0 to optim.lr, optimizer steps
    warmup_steps: int = 100
    #: learning-rate decay after warmup down to min_lr_ratio x lr at train.max_steps
    schedule: str = "cosine"
    #: final learning rate as a fraction of optim.lr
    min_lr_ratio: float = 0.1


@dataclass
class EMAConfig:
    """Exponential moving average of the weights: ``ema = decay * ema + (1 - decay) * w`` after every
    optimizer step; with ``warmup`` the decay ramps as min(decay, (1 + step) / (10 + step))."""

    #: keep an exponential moving average of the weights (evaluated and exported beside the raw weights)
    enabled: bool = True
    #: EMA decay per optimizer step
    decay: float = 0.999
    #: ramp the decay as min(decay, (1 + step) / (10 + step)) so early averages are not dominated by the initial
    #: weights
    warmup: bool = True


@dataclass
class LogConfig:
    """TensorBoard scalars and a console line every ``every`` steps; images every ``image_every``."""

    #: optimizer steps between TensorBoard scalars and console lines
    every: int = 20
    #: optimizer steps between TensorBoard images (0 = never)
    image_every: int = 200
    #: show a tqdm progress bar with ETA on rank 0 (when stderr is a terminal)
    progress: bool = True


@dataclass
class CheckpointConfig:
    """``iter_{N:09d}.pt`` every ``every`` steps (0 = never on a schedule) and at the end, the newest
    ``keep`` of this run kept, plus JIT exports.

    Checkpoints that do not load, fail their content hash or belong to another run are moved to
    ``checkpoints/quarantine/``, never counted or deleted. If the folder holds such files and no usable
    checkpoint, the run refuses to start again from step 0 unless ``allow_fresh_start`` is true."""

    #: optimizer steps between checkpoints iter_{N:09d}.pt (0 = only at the end)
    every: int = 500
    #: newest checkpoints of this run kept (older ones are deleted)
    keep: int = 3
    #: write the task's TorchScript exports (iter_N_*.jit) beside each checkpoint
    export_jit: bool = True
    #: start again from step 0 even though checkpoints/ holds only quarantined (unloadable, corrupt or foreign) files
    allow_fresh_start: bool = False


@dataclass
class EvalConfig:
    """Validation on ``data.val`` every ``every`` steps (0 = only at the end); ``max_batches`` 0 = all."""

    #: optimizer steps between validations on data.val (0 = only at the end)
    every: int = 500
    #: validation batches per evaluation (0 = the whole validation set)
    max_batches: int = 0
    #: validate the EMA weights too (when ema.enabled)
    ema: bool = True


@dataclass
class DistConfig:
    """Multi-process faults (:mod:`toolkit.engine.watchdog`): a rank that stops making progress (a frozen
    or killed process, a lost node, a rank stuck in a collective) makes every rank exit naming it."""

    #: seconds without a finished optimizer step on a rank before every rank exits (code 3) with an error
    #: naming that rank and its last step; the process group's init and collective timeout is 1.25 x this
    #: + 5 s, so the watchdog speaks first; must exceed the slowest step, validation or checkpoint
    #: (0 = no watchdog, torch's default timeouts)
    timeout_s: float = 1800.0
    #: seconds between two heartbeats of a rank's watchdog (0 = timeout_s / 10, between 0.2 and 5 s)
    heartbeat_s: float = 0.0


@dataclass
class ProfileConfig:
    """``torch.profiler`` over training steps, traces under ``RUN/profile/`` (:mod:`toolkit.engine.profiler`)."""

    #: profile training steps with torch.profiler (Chrome/Perfetto/TensorBoard traces under RUN/profile/)
    enabled: bool = False
    #: steps (of this process, counted from its first step) before the schedule starts
    skip_first: int = 0
    #: steps of each cycle that are not traced
    wait: int = 1
    #: steps of each cycle traced but discarded (the profiler's own start-up cost)
    warmup: int = 1
    #: steps of each cycle recorded into one trace file
    active: int = 3
    #: cycles (one trace file each)
    repeat: int = 1
    #: record each operator's input shapes
    record_shapes: bool = False
    #: record tensor allocations and frees (memory columns and timeline)
    profile_memory: bool = False
    #: record Python stacks of operators (larger traces)
    with_stack: bool = False
    #: on CUDA, also record the allocator's history and write RUN/profile/memory_snapshot_rank{R}.pickle
    memory_snapshot: bool = False
    #: profile every rank (default: rank 0 only)
    all_ranks: bool = False


@dataclass
class Config:
    """A whole run. ``task`` is the chosen task's own ``Config`` dataclass."""

    #: the task's own section; its schema is the Config dataclass of the task named by task.name
    task: Any = None
    #: run folder and seed
    run: RunConfig = field(default_factory=RunConfig)
    #: shards and loading
    data: DataConfig = field(default_factory=DataConfig)
    #: the training loop
    train: TrainConfig = field(default_factory=TrainConfig)
    #: ZeRO settings
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    #: optimizer and schedule
    optim: OptimConfig = field(default_factory=OptimConfig)
    #: weight averaging
    ema: EMAConfig = field(default_factory=EMAConfig)
    #: logging
    log: LogConfig = field(default_factory=LogConfig)
    #: checkpoints and exports
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    #: validation
    eval: EvalConfig = field(default_factory=EvalConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    #: distributed faults: the per-step watchdog and the process group's timeout (toolkit.engine.watchdog)
    dist: DistConfig = field(default_factory=DistConfig)


CHOICES = {
    "data.resume": ("exact", "reseed"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda", "mps"),
    "train.strategy": ("ddp", "deepspeed", "fsdp"),
    "deepspeed.stage": (1, 2, 3),
    "optim.schedule": ("cosine", "linear", "constant"),
}
POSITIVE = ("train.max_steps", "train.grad_accum", "data.batch_size", "checkpoint.keep", "log.every",
            "train.max_bad_steps", "optim.lr", "optim.eps", "profile.active", "profile.repeat")
NON_NEGATIVE = ("data.num_workers", "data.shuffle_buffer", "optim.warmup_steps", "checkpoint.every",
                "eval.every", "eval.max_batches", "log.image_every", "train.grad_clip", "data.val_batch_size",
                "optim.weight_decay", "dist.timeout_s", "dist.heartbeat_s", "profile.skip_first", "profile.wait",
                "profile.warmup")
#: key -> (low, high, high included): closed or half-open intervals
INTERVALS = {"optim.min_lr_ratio": (0.0, 1.0, True), "ema.decay": (0.0, 1.0, False)}


def _get(cfg: Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: Config, source: str = "config") -> None:
    """Check choices and ranges of the engine sections, then the task's own ``validate()`` if it has one.

    Raises:
        ConfigError: naming ``source`` and the offending key.
    """
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{source}: {key}={_get(cfg, key)!r} is not one of {list(allowed)}")
    for key in POSITIVE:  # integers >= 1, floats > 0
        value = _get(cfg, key)
        if isinstance(value, float) and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{source}: {key} must be a finite number > 0, got {value}")
        if not isinstance(value, float) and value < 1:
            raise ConfigError(f"{source}: {key} must be >= 1, got {value}")
    for key in NON_NEGATIVE:
        value = _get(cfg, key)
        if not (math.isfinite(value) and value >= 0):
            kind = "a finite number " if isinstance(value, float) else ""
            raise ConfigError(f"{source}: {key} must be {kind}>= 0, got {value}")
    for key, (low, high, closed) in INTERVALS.items():
        value = _get(cfg, key)
        if not (low <= value <= high and (closed or value < high)):
            raise ConfigError(f"{source}: {key} must be in [{low:g}, {high:g}{']' if closed else ')'}, got {value}")
    _validate_strategy(cfg, source)
    betas = list(cfg.optim.betas)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"{source}: optim.betas must be 2 values in [0, 1), got {betas}")
    if hasattr(cfg.task, "validate"):
        try:
            cfg.task.validate()
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc


def _validate_strategy(cfg: Config, source: str) -> None:
    """``deepspeed.*`` keys and their combinations with ``train.*`` (checked whatever the strategy, so a
    bad section fails before a run is switched to it)."""
    ds = cfg.deepspeed
    for key in ("reduce_bucket_size", "allgather_bucket_size"):
        if getattr(ds, key) < 1:
            raise ConfigError(f"{source}: deepspeed.{key} must be >= 1 (elements), got {getattr(ds, key)}")
    if ds.param_persistence_threshold < 0:
        raise ConfigError(f"{source}: deepspeed.param_persistence_threshold must be >= 0, got "
                          f"{ds.param_persistence_threshold}")
    if ds.offload_param and ds.stage != 3:
        raise ConfigError(f"{source}: deepspeed.offload_param=true needs deepspeed.stage=3, got stage {ds.stage}")
    if ds.config and not Path(ds.config).is_file():
        raise ConfigError(f"{source}: deepspeed.config: file '{ds.config}' does not exist (expected a DeepSpeed JSON)")
    for key, allowed in (("compile", ("false", "model", "blocks")), ("activation_checkpointing", ("false", "blocks"))):
        value = getattr(cfg.train, key)
        value = "false" if str(value).lower() in ("false", "off", "no", "0", "") else str(value).lower()
        if value not in allowed:
            raise ConfigError(f"{source}: train.{key}={getattr(cfg.train, key)!r} is not one of {list(allowed)}")
        setattr(cfg.train, key, value)
    if cfg.train.strategy in ("deepspeed", "fsdp"):
        name = cfg.train.strategy
        if cfg.train.compile != "false":
            raise ConfigError(f"{source}: train.compile={cfg.train.compile} is not supported with "
                              f"train.strategy={name}; use train.compile=false or train.strategy=ddp")
        if cfg.train.precision == "fp16":
            raise ConfigError(f"{source}: train.precision=fp16 is not supported with train.strategy={name}; "
                              "use bf16 or fp32")
        if cfg.train.find_unused_parameters:
            raise ConfigError(f"{source}: train.find_unused_parameters is a DDP setting; it cannot be used with "
                              f"train.strategy={name}")


def _format_omegaconf_error(exc: OmegaConfBaseException, source: str) -> str:
    key = getattr(exc, "full_key", None)
    msg = str(exc).split("\n")[0]
    if "not in" in msg and key:
        return f"{source}: unknown key '{key}' ({msg})"
    return f"{source}: invalid value for '{key}': {msg}" if key else f"{source}: {msg}"


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Config:
    """Load a run config.

    Args:
        path: YAML file (None: defaults + overrides only; ``task.name`` must then be overridden).
        overrides: ``key=value`` strings with dotted keys; values are parsed as YAML
            (``train.lr=3e-4``, ``optim.betas=[0.9,0.95]``, ``run.name=foo``).

    Returns:
        A :class:`Config` whose ``task`` is an instance of the task's ``Config`` dataclass.

    Raises:
        ConfigError: missing file, YAML error, unknown task, unknown key, wrong type or invalid value.
    """
    source = str(path) if path else "command line"
    overrides = list(overrides or [])
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=3e-4)")
    try:
        file_cfg = OmegaConf.create({})
        if path:
            if not Path(path).is_file():
                raise ConfigError(f"config file '{path}' does not exist")
            file_cfg = OmegaConf.load(path)
            if not isinstance(file_cfg, type(OmegaConf.create({}))):
                raise ConfigError(f"{source}: expected a mapping at the top level")
        # "key=" means an empty string (OmegaConf would read None)
        cli_cfg = OmegaConf.from_dotlist([f"{o}''" if o.endswith("=") else o for o in overrides])
        raw = OmegaConf.merge(file_cfg, cli_cfg)
    except ConfigError:
        raise
    except Exception as exc:  # YAML syntax errors and the like
        raise ConfigError(f"{source}: cannot parse: {_one_line(exc)}") from exc

    try:
        cfg = _build(raw, source)
    except ConfigError as exc:
        # name the override rather than the file when the bad key came from the command line
        for item in overrides:
            key = item.split("=", 1)[0]
            if f"'{key}'" in str(exc) or f" {key}=" in str(exc) or f": {key} " in str(exc):
                raise ConfigError(str(exc).replace(f"{source}:", f"override '{item}':", 1)) from exc
        raise
    if not cfg.run.name:
        cfg.run.name = Path(path).stem if path else cfg.task.name
    return cfg


def _build(raw, source: str) -> Config:
    """Merge a raw OmegaConf mapping into the typed schema of its task, then validate."""
    from toolkit.tasks import get_task_class, task_names

    task_name = OmegaConf.select(raw, "task.name")
    if not task_name:
        raise ConfigError(f"{source}: 'task.name' is required; available tasks: {task_names()}")
    try:
        task_cls = get_task_class(str(task_name))
    except KeyError as exc:
        raise ConfigError(f"{source}: task.name={task_name!r} is unknown; available tasks: {task_names()}") from exc
    schema = OmegaConf.structured(Config)
    schema.task = OmegaConf.structured(task_cls.Config)
    try:
        cfg: Config = OmegaConf.to_object(OmegaConf.merge(schema, raw))  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(_format_omegaconf_error(exc, source)) from exc
    validate(cfg, source)
    return cfg


def to_dict(cfg: Config) -> dict:
    """Plain nested dict of builtins (safe for YAML, JSON and ``torch.load(weights_only=True)``)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def from_dict(d: dict, source: str = "checkpoint") -> Config:
    """Rebuild a :class:`Config` from :func:`to_dict` output (e.g. the one stored in a checkpoint).

    Raises:
        ConfigError: if the dict does not fit the current schema (naming ``source`` and the key).
    """
    return _build(OmegaConf.create(d), source)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` lines for every dotted key whose value differs between two config dicts."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes.extend(config_diff(a, b, f"{prefix}{key}."))
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changes


def _one_line(exc: BaseException) -> str:
    """A parser's error on one line: a YAML error's problem and position (``line L, column C``)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if problem:
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        context = getattr(exc, "context", None)
        return f"{problem}{where}" + (f" ({context})" if context else "")
    return " ".join(str(exc).split())


def run_dir(cfg: Config) -> Path:
    """The run folder: ``run.dir`` or ``run.root/run.name``."""
    return Path(cfg.run.dir) if cfg.run.dir else Path(cfg.run.root) / cfg.run.name


def peek_run_dir(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Path | None:
    """The run folder that :func:`load_config` of the same arguments would give, read from the YAML and
    the overrides alone (no schema, no task import: a fraction of a second), so a command can lock the
    folder before building anything. None if it cannot be read this way; :func:`load_config` then
    reports what is wrong."""
    try:
        raw = OmegaConf.merge(OmegaConf.load(path) if path else OmegaConf.create({}),
                              OmegaConf.from_dotlist([f"{o}''" if o.endswith("=") else o for o in overrides or []]))
        run = RunConfig(**{k: OmegaConf.select(raw, f"run.{k}", default=getattr(RunConfig, k))
                           for k in ("name", "root", "dir")})
        run.name = run.name or (Path(path).stem if path else OmegaConf.select(raw, "task.name", default=""))
        return run_dir(Config(run=run)) if run.dir or run.name else None
    except Exception:  # noqa: BLE001 - anything odd is left to load_config's errors
        return None


def describe(cls=Config, prefix: str = "") -> list[str]:
    """``key = default`` lines for every engine key (for ``--help``)."""
    lines = []
    for f in dataclasses.fields(cls):
        if f.name == "task":
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            lines.extend(describe(type(default), f"{prefix}{f.name}."))
        else:
            lines.append(f"  {prefix}{f.name} = {default!r}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m toolkit.config --reference``: print the Markdown configuration reference
    (:mod:`toolkit.config_reference`); the committed copy is ``docs/configuration.md``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m toolkit.config", description=main.__doc__)
    parser.add_argument("--reference", action="store_true", help="print the configuration reference (Markdown)")
    args = parser.parse_args(argv)
    if not args.reference:
        parser.error("nothing to do: pass --reference")
    from toolkit.config_reference import render

    print(render(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
