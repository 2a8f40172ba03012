"""The configuration reference (``docs/configuration.md``), generated from the config dataclasses.

Every key of the engine sections (:class:`toolkit.config.Config`) and of every registered task's ``task:``
section is listed with its type, default, valid values and documentation. The documentation of a field is
the ``#:`` comment on the line(s) directly above it (Sphinx autodoc's convention), read from the source
with :mod:`ast`; a section's intro is its class docstring. Valid values come from the engine's validation
tables (:data:`toolkit.config.CHOICES`, ``POSITIVE``, ``NON_NEGATIVE``, ``INTERVALS``) or, for task keys,
from the comment itself. New sections and keys appear without changes here.

Usage::

    python -m toolkit.config --reference > docs/configuration.md
"""

from __future__ import annotations

import ast
import copy
import re
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass
from functools import lru_cache

REGENERATE = ".venv/bin/python -m toolkit.config --reference > docs/configuration.md"


@dataclass
class KeyDoc:
    """One documented key: ``key`` is dotted from the section root (``train.max_steps``, ``task.pillars.patch``)."""

    key: str
    type: str
    default: object
    valid: str
    doc: str
    #: ``module.Class`` whose source holds the field
    owner: str
    #: a nested section (its keys follow it), not a value
    nested: bool = False


@lru_cache(maxsize=None)
def _own_field_comments(cls: type) -> dict[str, str]:
    """``{field: doc}`` from the ``#:`` comment lines directly above each annotated field in ``cls``'s own body.

    Raises:
        OSError, TypeError: if the class's source cannot be read (built-in or dynamically made classes).
    """
    lines, _ = inspect.getsourcelines(cls)
    source = textwrap.dedent("".join(lines))
    src_lines = source.splitlines()
    tree = ast.parse(source)
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node in body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        comment = []
        row = node.lineno - 2  # 0-based index of the line above
        while row >= 0 and src_lines[row].strip().startswith("#:"):
            comment.insert(0, src_lines[row].strip()[2:].strip())
            row -= 1
        if comment:
            docs[node.target.id] = " ".join(comment)
    return docs


def field_comments(cls: type) -> dict[str, tuple[str, str]]:
    """``{field: (doc, owner)}`` over the class and its dataclass bases (a subclass's comment wins)."""
    out: dict[str, tuple[str, str]] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            comments = _own_field_comments(klass)
        except (OSError, TypeError):
            continue
        for name, doc in comments.items():
            out[name] = (doc, f"{klass.__module__}.{klass.__qualname__}")
    return out


def _engine_valid(key: str) -> str:
    """Valid values of an engine key from :mod:`toolkit.config`'s validation tables ("" if none there)."""
    from toolkit import config as C

    if key in C.CHOICES:
        return ", ".join(f"`{v}`" for v in C.CHOICES[key])
    if key in C.POSITIVE:
        return "> 0"
    if key in C.NON_NEGATIVE:
        return ">= 0"
    if key in C.INTERVALS:
        low, high, closed = C.INTERVALS[key]
        return f"[{low:g}, {high:g}{']' if closed else ')'}"
    return ""


_BOGUS = "\x00not-a-choice"


def _rejects(root, validate, path: list[str], value) -> str | None:
    """The validation error that setting ``path`` of a copy of ``root`` to ``value`` raises when it names the
    key's last part, else None (accepted, or rejected for another key's sake)."""
    trial = copy.deepcopy(root)
    obj = trial
    for part in path[:-1]:
        obj = getattr(obj, part)
    setattr(obj, path[-1], value)
    try:
        validate(trial)
    except (ValueError, TypeError, OSError) as exc:
        msg = str(exc)
        return msg if re.search(rf"\b{re.escape(path[-1])}\b", msg) else None
    return None


def probe_valid(root, validate, path: list[str], default) -> str:
    """Valid values of a key found by asking the validation code: a string key whose bogus value is rejected
    with "one of [...]" lists those choices; a number rejected at -1 is ">= 0", also at 0 "> 0" (">= 1" for an
    integer). "" when validation says nothing about the key."""
    if isinstance(default, bool) or default is None or isinstance(default, (list, dict)):
        return ""
    if isinstance(default, str):
        msg = _rejects(root, validate, path, _BOGUS)
        found = re.search(r"one of \[([^\]]*)\]", msg or "") or re.search(r"must be ('[^']*'(?: or '[^']*')+)", msg or "")
        if not found:
            return ""
        return ", ".join(f"`{c.strip().strip(chr(39))}`" for c in re.split(r",| or ", found.group(1)) if c.strip())
    if isinstance(default, (int, float)):
        if _rejects(root, validate, path, type(default)(-1)) is None:
            return ""
        if _rejects(root, validate, path, type(default)(0)) is None:
            return ">= 0"
        return ">= 1" if isinstance(default, int) else "> 0"
    return ""


def _type_name(f: dataclasses.Field) -> str:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return t.replace("typing.", "")


def _default(f: dataclasses.Field, instance) -> object:
    return getattr(instance, f.name)


def walk(instance, prefix: str, root=None, validate=None, path: tuple[str, ...] = ()) -> list[KeyDoc]:
    """Every leaf key of a config dataclass instance (nested dataclasses are recursed into; their defaults are
    the instance's, e.g. a task's own ``sample`` defaults). ``root``/``validate``: the object whose validation
    is probed for valid values (:func:`probe_valid`) and the function that validates it."""
    comments = field_comments(type(instance))
    out = []
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        key = f"{prefix}{f.name}"
        doc, owner = comments.get(f.name, ("", f"{type(instance).__module__}.{type(instance).__qualname__}"))
        if dataclasses.is_dataclass(value):
            out.append(KeyDoc(key, type(value).__name__, None, "", doc, owner, nested=True))
            out.extend(walk(value, f"{key}.", root, validate, (*path, f.name)))
            continue
        valid = _engine_valid(key) if prefix != "task." and not key.startswith("task.") else ""
        if not valid and validate is not None:
            valid = probe_valid(root, validate, [*path, f.name], value)
        out.append(KeyDoc(key, _type_name(f), value, valid, doc, owner))
    return out


def sections() -> list[tuple[str, str, object, list[KeyDoc]]]:
    """``(title, intro, config class, keys)`` for every engine section, then every task (by name)."""
    from toolkit.config import Config, validate
    from toolkit.tasks import get_task_class, task_names

    out = []
    root = Config(task=get_task_class("lidar_tokenizer").Config())
    for f in dataclasses.fields(root):
        if f.name == "task":
            continue
        value = getattr(root, f.name)
        out.append((f.name, inspect.getdoc(type(value)) or "", type(value),
                    walk(value, f"{f.name}.", root, validate, (f.name,))))
    for name in task_names():
        cls = get_task_class(name).Config
        task = cls()
        check = getattr(cls, "validate", None)
        out.append((f"task ({name})", inspect.getdoc(cls) or "", cls,
                    walk(task, "task.", task, check, ())))
    return out


def undocumented() -> list[str]:
    """``key (module.Class)`` for every key without a ``#:`` comment."""
    return [f"{k.key} ({k.owner})" for _, _, _, keys in sections() for k in keys if not k.doc]


def markdown(text: str) -> str:
    """reStructuredText inline markup of the docstrings as Markdown: ``:class:`~a.B``` -> `B`, ````x```` -> `x`."""
    text = re.sub(r":\w+:`~?\.?([^`]+)`", lambda m: f"`{m.group(1).split('.')[-1] if '~' in m.group(0) else m.group(1)}`",
                  text)
    return text.replace("``", "`")


def _cell(text: str) -> str:
    return markdown(text).replace("|", "\\|").replace("\n", " ")


def _fmt_default(value) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    if isinstance(value, float):
        return f"`{value:.6g}`"
    return f"`{value}`"


def render() -> str:
    """The whole reference as Markdown."""
    secs = sections()
    lines = ["# Configuration reference", "",
             "<!-- Generated by `python -m toolkit.config --reference` from the config dataclasses' `#:` comments;",
             f"     do not edit by hand. Regenerate: {REGENERATE} -->", "",
             "A run config is a YAML file of the sections below, merged over these defaults, then the command-line",
             "overrides (`train.max_steps=50 task.dim=32`). The `task:` section's keys depend on `task.name`.",
             "Unknown keys, wrong types and invalid values stop the run with one line naming the file and the key.",
             "", "Sections: " + ", ".join(f"[{t}](#{_anchor(t)})" for t, _, _, _ in secs), ""]
    for title, intro, cls, keys in secs:
        lines += [f"## {title}", "", f"`{cls.__module__}.{cls.__qualname__}`", ""]
        if intro:
            lines += [markdown(intro), ""]
        lines += ["| key | type | default | valid | description |", "|---|---|---|---|---|"]
        for k in keys:
            default = "(section)" if k.nested else _fmt_default(k.default)
            lines.append(f"| `{k.key}` | `{_cell(k.type)}` | {_cell(default)} | {_cell(k.valid)} | {_cell(k.doc)} |")
        lines.append("")
    return "\n".join(lines)


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces -> '-'."""
    return "".join(c for c in title.lower() if c.isalnum() or c in " -_").replace(" ", "-")
