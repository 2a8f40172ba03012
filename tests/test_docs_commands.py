"""The documentation's shell commands and links stay true (issue 27).

Every fenced shell block (```bash, ```sh, ```shell, ```console) in README.md and docs/**/*.md must carry a
marker on the line directly above its opening fence:

    <!-- test: run -->    run by this test, from the repository root, with the venv's python first on PATH
                          (so keep it small: --help, --print-config, --dry-run, make -n, a tiny override)
    <!-- test: long -->   a real run (training, data generation, a cluster); not run here

A ``bash``/``sh``/``shell`` block runs as one ``bash -e -o pipefail`` script and must exit 0. A ``console`` block
is a transcript: each ``$ command`` line runs on its own and every non-empty line printed below it in the
block must appear in the command's stdout + stderr (its exit code is not checked: transcripts may show errors).

Long blocks are not run, but every ``python -m toolkit.*|shards|launch`` command in any block is checked: each
``--flag`` must appear in that CLI's --help (with its subcommand / ``--task``), and each ``toolkit.train``
command's config file and ``key=value`` overrides must resolve (``--print-config``). Every relative link and
image in README.md and docs/ must point at an existing file (and heading anchor, for Markdown targets).

Run ``python tests/test_docs_commands.py`` to list the blocks and their markers without running them.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
MARK_RE = re.compile(r"^\s*<!--\s*test:\s*(run|long)\s*-->\s*$")
FENCE_RE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
LINK_RE = re.compile(r"\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
BLOCK_TIMEOUT_S = 120


@dataclass
class Block:
    """One fenced code block of a Markdown file.

    Attributes:
        path: the Markdown file; line: 1-based line number of the opening fence.
        lang: the fence's info string (``bash``, ``console``, ...; "" when none).
        mark: ``run``, ``long`` or None (no marker on the line above the fence).
        text: the block's content, without the fences.
    """

    path: Path
    line: int
    lang: str
    mark: str | None
    text: str

    @property
    def where(self) -> str:
        try:
            return f"{self.path.relative_to(ROOT)}:{self.line}"
        except ValueError:
            return f"{self.path}:{self.line}"


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown file under docs/, sorted."""
    files = [root / "README.md"] if (root / "README.md").exists() else []
    return files + sorted((root / "docs").rglob("*.md"))


def parse_blocks(path: Path, text: str | None = None) -> list[Block]:
    """The fenced code blocks of ``path`` (or of ``text``), each with the marker of the line above it.

    A fence closes on a line of the same character, at least as long as the opening one (CommonMark).
    """
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(2), m.group(3).lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        mark = MARK_RE.match(lines[start - 1]) if start > 0 else None
        blocks.append(Block(path, start + 1, lang, mark.group(1) if mark else None, "\n".join(body)))
        i += 1
    return blocks


def shell_blocks(files: list[Path] | None = None) -> list[Block]:
    return [b for f in (doc_files() if files is None else files) for b in parse_blocks(f) if b.lang in SHELL_LANGS]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def console_steps(text: str) -> list[tuple[str, list[str]]]:
    """A console transcript as (command, expected output lines); continuation lines end with a backslash."""
    steps: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps and steps[-1][0].endswith("\\") and not steps[-1][1]:
            steps[-1] = (steps[-1][0] + "\n" + line, [])
        elif steps and line.strip():
            steps[-1][1].append(line.strip())
    return steps


def run_block(block: Block) -> str | None:
    """Run one marked block; None when it passed, else a one-paragraph reason."""
    env = _env()
    try:
        if block.lang == "console":
            steps = console_steps(block.text)
            if not steps:
                return f"{block.where}: console block without a '$ ' command"
            for cmd, expected in steps:
                p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=ROOT, env=env, capture_output=True,
                                   text=True, timeout=BLOCK_TIMEOUT_S)
                out = p.stdout + p.stderr
                missing = [e for e in expected if e not in out]
                if missing:
                    return f"{block.where}: `{cmd}` did not print {missing[0]!r}; it printed:\n{out[-2000:]}"
            return None
        p = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.text], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"{block.where}: still running after {BLOCK_TIMEOUT_S} s (mark it `test: long` or make it smaller)"
    if p.returncode != 0:
        return f"{block.where}: exit {p.returncode}:\n{block.text}\n--- output ---\n{(p.stdout + p.stderr)[-2000:]}"
    return None


# --- the parser itself ---------------------------------------------------------------------------------------

def test_parser_reads_markers_languages_and_transcripts(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text\n<!-- test: run -->\n```bash\necho hi\n```\n\n```sh\nls\n```\n<!-- test: long -->\n"
                  "````console\n$ echo a \\\n  b\na b\n```\nstill inside\n````\n```python\nx = 1\n```\n")
    blocks = parse_blocks(md)
    assert [(b.line, b.lang, b.mark) for b in blocks] == [(3, "bash", "run"), (7, "sh", None),
                                                          (11, "console", "long"), (18, "python", None)]
    assert blocks[0].text == "echo hi"
    assert console_steps(blocks[2].text) == [("echo a \\\n  b", ["a b", "```", "still inside"])]


def test_a_failing_block_is_reported_with_its_place(tmp_path):
    md = tmp_path / "y.md"
    md.write_text("<!-- test: run -->\n```bash\nfalse\necho after\n```\n<!-- test: run -->\n```console\n"
                  "$ echo hello\nworld\n```\n")
    bash_block, console_block = parse_blocks(md)
    assert "y.md:2: exit 1" in run_block(bash_block)
    assert "did not print 'world'" in run_block(console_block)


# --- the documentation -------------------------------------------------------------------------------------

def test_every_shell_block_is_marked_run_or_long():
    unmarked = [f"{b.where}: ```{b.lang} {b.text.splitlines()[0] if b.text else ''}"
                for b in shell_blocks() if b.mark is None]
    assert not unmarked, ("shell blocks without `<!-- test: run -->` or `<!-- test: long -->` on the line above "
                          "the fence:\n" + "\n".join(unmarked))


def test_marked_doc_commands_run():
    blocks = shell_blocks()
    to_run = [b for b in blocks if b.mark == "run"]
    long = [b for b in blocks if b.mark == "long"]
    distinct = list({(b.lang, b.text): b for b in to_run}.values())  # a block repeated on two pages runs once
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:  # the blocks only read the tree: two at a time
        failures = [r for r in pool.map(run_block, distinct) if r]
    print(f"\ndocs commands: ran {len(to_run)} blocks ({len(distinct)} distinct, {len(distinct) - len(failures)} "
          f"passed), skipped {len(long)} marked long, in {time.monotonic() - t0:.1f} s")
    assert len(to_run) > 0, "no block is marked `<!-- test: run -->`"
    assert not failures, "\n\n".join(failures)


# --- long commands: their flags and config keys exist -------------------------------------------------------

CLI_MODULES = ("toolkit.", "shards", "launch")
HELP_PROBE = r"""
import contextlib, io, json, runpy, sys
out = {}
for argv in json.loads(sys.argv[1]):
    buf = io.StringIO()
    sys.argv = list(argv)
    code = 0
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            if argv[0] == "toolkit.train":  # its __main__ leaves with os._exit on errors: call main() instead
                from toolkit.train import main
                code = main(argv[1:])
            else:
                runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception as e:  # a crash is a result too
            code, _ = 1, buf.write(repr(e))
    out[json.dumps(argv)] = [code, buf.getvalue()]
print(json.dumps(out))
"""


def python_commands(block: Block) -> list[list[str]]:
    """The ``python -m MODULE args`` commands of a block (continuation lines joined, comments, ``$VAR`` and
    ``[optional]`` tokens dropped), as argv lists starting with the module."""
    import shlex

    cmds = []
    for line in re.sub(r"\\\n\s*", " ", block.text).splitlines():
        line = line[2:] if block.lang == "console" and line.startswith("$ ") else line
        try:
            toks = shlex.split(line, comments=True)
        except ValueError:
            continue
        for i, tok in enumerate(toks[:-1]):
            if (tok == "-m" and i > 0 and toks[i - 1].endswith(("python", "python3"))
                    and toks[i + 1].startswith(CLI_MODULES) and "$" not in toks[i + 1]):
                args = [a for a in toks[i + 2:] if "$" not in a and not a.startswith("[")]
                cut = next((j for j, a in enumerate(args) if a in ("|", ">", "&&", ";", "||")), len(args))
                cmds.append([toks[i + 1], *args[:cut]])
    return cmds


def help_argv(cmd: list[str]) -> list[str]:
    """The --help call that documents ``cmd``'s flags: the module, its subcommand and ``--task`` if any."""
    mod, args = cmd[0], cmd[1:]
    out = [mod]
    if mod in ("shards", "toolkit.bench") and args and not args[0].startswith("-"):
        out.append(args[0])
    if "--task" in args and args.index("--task") + 1 < len(args):
        out += ["--task", args[args.index("--task") + 1]]
    return out + ["--help"]


def check_commands(blocks: list[Block]) -> tuple[list[str], str]:
    """Check the ``python -m`` commands of ``blocks``: every flag appears in its --help and every ``toolkit.train``
    command's config and overrides resolve (``--print-config``), all in one process (one torch import).

    Returns (one line per mismatch, a summary line).
    """
    cmds = [c for b in blocks for c in python_commands(b)]
    probes = {json.dumps(help_argv(c)): help_argv(c) for c in cmds}
    trains = {}
    for c in cmds:
        if c[0] == "toolkit.train" and "--help" not in c:
            argv = [a for a in c if a != "--print-config"] + ["--print-config"]
            trains[json.dumps(argv)] = argv
    p = subprocess.run([sys.executable, "-c", HELP_PROBE, json.dumps(list(probes.values()) + list(trains.values()))],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr[-3000:]
    results = json.loads(p.stdout.strip().splitlines()[-1])
    bad = []
    for c in cmds:
        code, text = results[json.dumps(help_argv(c))]
        flags = {a.split("=")[0] for a in c[1:] if re.match(r"^--[a-z]", a)}
        missing = sorted(f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text))
        if code != 0 or missing:
            bad.append(f"python -m {' '.join(c)}: " + (f"{' '.join(help_argv(c))} exited {code}" if code else
                                                      f"not in its --help: {missing}"))
    for argv in trains.values():
        code, text = results[json.dumps(argv)]
        last = (text.strip().splitlines() or [""])[-1]
        # a file the reader supplies (deepspeed.config=ds.json) may be absent here; the docs' two deliberate
        # config errors (transcripts of what a typo prints) are expected to fail
        deliberate = any(a in ("train.lrr=1", "optim.lr=0") for a in argv)
        if code != 0 and "does not exist" not in last and not deliberate:
            bad.append(f"python -m {' '.join(argv)}: exit {code}: {last}")
    summary = (f"docs commands: {len(cmds)} python -m commands checked against {len(probes)} --help texts and "
               f"{len(trains)} resolved configs")
    return bad, summary


def test_long_commands_use_existing_flags_and_config_keys():
    bad, summary = check_commands(shell_blocks())
    print("\n" + summary)
    assert " 0 python" not in summary
    assert not bad, "documented commands that do not match the CLIs:\n" + "\n".join(bad)


def test_a_wrong_flag_or_config_key_is_caught(tmp_path):
    md = tmp_path / "z.md"
    md.write_text("<!-- test: long -->\n```bash\npython -m shards nuscenes --dataroot D --out O --no-such-flag\n"
                  "python -m toolkit.train -c configs/lidar_tokenizer.yaml train.no_such_key=1 \\\n"
                  "    train.max_steps=5   # a comment\n"
                  "python -m toolkit.train -c configs/lidar_tokenizer.yaml train.max_steps=5 | tail -1\n```\n")
    bad, _ = check_commands(parse_blocks(md))
    assert len(bad) == 2, bad
    assert "not in its --help: ['--no-such-flag']" in bad[0]
    assert "train.no_such_key" in bad[1]


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"`|\*\*|\*", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (duplicates numbered -1, -2 as GitHub does)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE_RE.match(line):
            in_fence = not in_fence
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not in_fence:
            slug = github_slug(m.group(1))
            n = seen.get(slug, 0)
            out.add(slug if n == 0 else f"{slug}-{n}")
            seen[slug] = n + 1
    return out


def local_links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link or image outside code fences and inline code."""
    found = []
    in_fence = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE_RE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for target in LINK_RE.findall(re.sub(r"`[^`]*`", "", line)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
                found.append((n, target))
    return found


def test_github_slugs():
    assert github_slug("2. Multi-sensor keyframes (six cameras + LiDAR + boxes)") == \
        "2-multi-sensor-keyframes-six-cameras--lidar--boxes"
    assert github_slug("Results: what `make demo` prints") == "results-what-make-demo-prints"


def test_relative_links_resolve():
    broken = []
    for md in doc_files():
        for line, target in local_links(md):
            file_part, _, anchor = target.partition("#")
            dest = (md.parent / file_part).resolve() if file_part else md
            where = f"{md.relative_to(ROOT)}:{line}: ]({target})"
            if not dest.exists():
                broken.append(f"{where}: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest} missing")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where}: no heading with anchor #{anchor}")
    assert not broken, "broken links:\n" + "\n".join(broken)


if __name__ == "__main__":
    for b in shell_blocks():
        print(f"{b.mark or 'UNMARKED':8} {b.where}: {b.text.splitlines()[0] if b.text else ''}")
