"""Cluster profiles: ``slurm/<name>.yaml`` files with a site's partition, GPUs, CPUs, memory, QoS,
account, constraint and setup lines. Command-line flags of ``python -m launch`` override them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

PROFILE_DIR = Path(__file__).resolve().parents[1] / "slurm"


class ProfileError(ValueError):
    """A profile that does not exist or has unknown keys / wrong types (the message names the file)."""


@dataclass
class Profile:
    """Resources of a job. ``setup``: shell lines run before the job (module loads, env activation);
    ``additional``: extra ``#SBATCH`` parameters (e.g. ``{exclusive: true}``)."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 0
    cpus_per_task: int = 4
    mem_gb: float = 0.0
    time_min: int = 60
    signal_delay_s: int = 120
    max_requeues: int = 3
    setup: list[str] = field(default_factory=list)
    additional: dict = field(default_factory=dict)


def load_profile(name_or_path: str | None) -> Profile:
    """``slurm/<name>.yaml`` (or a path); None gives the defaults.

    Raises:
        ProfileError: missing file, unknown key or wrong type, naming the file.
    """
    if not name_or_path:
        return Profile()
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise ProfileError(f"profile '{name_or_path}' not found ({path}); profiles in {PROFILE_DIR}: {known}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping of profile keys")
    valid = {f.name: f for f in fields(Profile)}
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ProfileError(f"{path}: unknown key(s) {unknown}; valid keys: {sorted(valid)}")
    profile = Profile()
    for key, value in data.items():
        default = getattr(profile, key)
        if value is None:
            continue
        if isinstance(default, bool) or not isinstance(value, type(default)) and not (
                isinstance(default, float) and isinstance(value, int)):
            raise ProfileError(f"{path}: '{key}' must be {type(default).__name__}, got {value!r}")
        setattr(profile, key, value)
    return profile
