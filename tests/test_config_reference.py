"""The generated configuration reference (docs/configuration.md) and the YAML presets under configs/."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, run_cli
from toolkit.config import config_diff, load_config
from toolkit.config_reference import REGENERATE, field_comments, render, sections, undocumented
from toolkit.tasks import get_task_class, task_names

PRESETS = sorted((REPO / "configs").rglob("*.yaml"))
#: "The preset ``configs/x.yaml`` differs from these defaults in ``a``, ``b``" / "... equals these defaults"
CLAIM = re.compile(r"preset ``(configs/[^`]+\.ya?ml)``\s+(equals these defaults|differs from these defaults in"
                   r"((?:\s*``[\w.]+``,?)+))")


@dataclass
class _Base:
    #: inherited key
    a: int = 1


@dataclass
class _Child(_Base):
    #: first line of a long comment
    #: and its second line
    b: str = "x"
    c: float = 0.5  # a trailing comment is not a field doc
    #: nested section
    d: list[int] = field(default_factory=list)


def test_field_comments_are_the_hash_colon_lines_directly_above_each_field():
    docs = {name: doc for name, (doc, _) in field_comments(_Child).items()}
    assert docs == {"a": "inherited key", "b": "first line of a long comment and its second line", "d": "nested section"}


def test_committed_reference_is_what_the_generator_prints():
    proc = run_cli(["-m", "toolkit.config", "--reference"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert proc.stdout == committed, f"docs/configuration.md is stale; regenerate it: {REGENERATE}"


def test_every_key_of_every_section_has_a_doc_comment():
    assert undocumented() == [], "add a '#: ...' comment on the line above each of these fields"


def test_reference_lists_every_engine_section_and_task_key():
    text = render()
    for title, _, _, keys in sections():
        assert f"## {title}" in text
        for k in keys:
            assert f"| `{k.key}` |" in text
    assert {t for t, _, _, _ in sections() if t.startswith("task (")} == {f"task ({n})" for n in task_names()}


def test_valid_values_are_read_from_the_validation_code():
    from toolkit.tasks.token_fusion.model import TokenFusionNet

    rows = {(title, k.key): k.valid for title, _, _, keys in sections() for k in keys}
    assert rows[("train", "train.precision")] == "`fp32`, `bf16`, `fp16`"
    assert rows[("task (token_fusion)", "task.loss")] == ", ".join(f"`{x}`" for x in TokenFusionNet.LOSSES)
    assert rows[("task (token_fusion)", "task.match_temperature")] == "> 0"
    assert rows[("task (token_fusion)", "task.rerank_k")] == ">= 0"
    assert rows[("task (bev)", "task.sample.image_dtype")] == "`uint8`, `float32`"
    assert rows[("deepspeed", "deepspeed.reduce_bucket_size")] == ">= 1"
    assert rows[("task (lidar_tokenizer)", "task.masked_loss")] == ""  # a bool: nothing to say


@pytest.mark.parametrize("path", PRESETS, ids=[str(p.relative_to(REPO / "configs")) for p in PRESETS])
def test_every_preset_loads_and_validates(path: Path):
    cfg = load_config(path)
    assert cfg.run.name


def _task_diff(preset: Path, name: str) -> set[str]:
    cls = get_task_class(name).Config
    loaded = OmegaConf.to_container(OmegaConf.structured(load_config(preset).task))
    defaults = OmegaConf.to_container(OmegaConf.structured(cls()))
    return {line.split(":")[0] for line in config_diff(defaults, loaded)}


def test_documented_preset_claims_hold():
    """Each task Config docstring's claim "the preset X equals / differs from these defaults in ..." is true."""
    claims = []
    for name in task_names():
        doc = " ".join((get_task_class(name).Config.__doc__ or "").split())
        for path, kind, keys in CLAIM.findall(doc):
            claimed = set(re.findall(r"``([\w.]+)``", keys)) if kind.startswith("differs") else set()
            assert (REPO / path).is_file(), f"{name}: the preset {path} named in the docstring does not exist"
            assert load_config(REPO / path).task.name == name, f"{path} is not a {name} preset"
            actual = _task_diff(REPO / path, name)
            assert actual == claimed, (f"{name}'s docstring says {path} differs from the defaults in {sorted(claimed)}; "
                                       f"it differs in {sorted(actual)}")
            claims.append(path)
    assert "configs/fusion_tokens/tiny.yaml" in claims


def test_preset_claim_check_detects_a_disagreement(tmp_path):
    preset = tmp_path / "tiny.yaml"
    raw = OmegaConf.load(REPO / "configs" / "fusion_tokens" / "tiny.yaml")
    raw.task.heads = 8
    OmegaConf.save(raw, preset)
    assert _task_diff(preset, "token_fusion") == {"cross_gate", "fusion_depth", "image_depth", "lidar_depth",
                                                  "rerank_k", "heads"}
    assert dataclasses.is_dataclass(get_task_class("token_fusion").Config)
