"""The docs stay true to the code: every `vaerepro SUBCOMMAND --option` they show exists, the
README stays short, and every relative link, test name and source path they give exists.

Checked files: README.md and docs/*.md. A command counts where it is code: a line of a fenced
block or an inline code span that runs `vaerepro SUB ...` (also `.nox/reproduce/bin/vaerepro`,
`python -m vaerepro`) or `nox -s reproduce -- ...` (options of `vaerepro reproduce`); `nox -s
bench -- ...` is checked against the benchmarks' own options (bench/conftest.py). An option
named alone in code (`--jobs 1`) must be an option of some subcommand or of the benchmarks.
"""

from __future__ import annotations

import argparse
import re
import shlex
from functools import cache
from pathlib import Path

import pytest

from vaerepro.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# --- Markdown: code, links, headings ---------------------------------------------------------

FENCE = re.compile(r"^\s*(```|~~~)")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)


def split_fences(text: str) -> tuple[list[str], str]:
    """(the lines of fenced code blocks, the text outside them)."""
    code, prose, fenced = [], [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            prose.append("")
        elif fenced:
            code.append(line)
            prose.append("")
        else:
            prose.append(line)
    return code, "\n".join(prose)


def code_snippets(text: str) -> list[str]:
    """Every line of a fenced block (backslash continuations joined) and every inline code
    span (line breaks inside it read as spaces)."""
    code, prose = split_fences(HTML_COMMENT.sub("", text))
    joined = re.sub(r"\\\n\s*", " ", "\n".join(code)).splitlines()
    spans = [m[2].replace("\n", " ") for m in CODE_SPAN.finditer(prose)]
    return joined + spans


def without_code(text: str) -> str:
    """The text outside fenced blocks and inline code (links in code are not links)."""
    _, prose = split_fences(HTML_COMMENT.sub("", text))
    return CODE_SPAN.sub("", prose)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors a Markdown file has: its headings' slugs (repeats get -1, -2, ...) and
    explicit `id="..."`/`name="..."` attributes."""
    _, prose = split_fences(path.read_text())
    seen: dict[str, int] = {}
    found = set(re.findall(r"""\b(?:id|name)=["']([^"']+)["']""", prose))
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", prose, re.M):
        base = slug(m[1])
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def broken_links(path: Path, text: str | None = None) -> list[str]:
    """Relative links of a Markdown file whose file (or heading anchor) does not exist."""
    text = path.read_text() if text is None else text
    prose = without_code(text)
    targets = INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)
    broken = []
    for target in targets:
        if SCHEME.match(target):
            continue  # https:, mailto:, ...
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading or id {fragment!r} in {dest.name}")
    return broken


# --- Commands: `vaerepro SUB --option` against the parser --------------------------------------


BENCH = "nox -s bench"  # the key of the benchmarks' options


@cache
def parser_options() -> dict[str | None, frozenset[str]]:
    """The long options of every subcommand's parser, of the top level (key None) and of the
    benchmarks (key BENCH: bench/conftest.py's, and --help, which the nox session answers)."""
    parser = build_parser()
    options: dict[str | None, frozenset[str]] = {None: _long_options(parser)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                options[name] = _long_options(sub)
    conftest = (ROOT / "bench" / "conftest.py").read_text()
    options[BENCH] = frozenset(re.findall(r"addoption\(\s*[\"'](--[\w-]+)", conftest)) | {"--help"}
    return options


def _long_options(parser: argparse.ArgumentParser) -> frozenset[str]:
    return frozenset(s for a in parser._actions for s in a.option_strings if s.startswith("--"))


SHELL_SEPARATOR = re.compile(r"&&|\|\||[;|]")
OPTION = re.compile(r"--[A-Za-z][\w-]*")
SUBCOMMAND_WORD = re.compile(r"[a-z][a-z0-9-]*")


def commands(snippet: str) -> list[tuple[str | None, list[str]]]:
    """(subcommand, its --options) for every vaerepro command in one line of code; subcommand
    None for `vaerepro --help` and the like."""
    found = []
    for part in SHELL_SEPARATOR.split(snippet):
        part = re.split(r"\s#", part)[0]  # a shell comment
        try:
            tokens = shlex.split(part)
        except ValueError:
            tokens = part.split()
        for i, token in enumerate(tokens):
            rest = tokens[i + 1 :]
            if token == "vaerepro" or token.endswith("/vaerepro"):
                if not rest:
                    continue  # the command's name in prose
                if rest[0].startswith("-"):
                    found.append((None, _options(rest)))
                elif SUBCOMMAND_WORD.fullmatch(rest[0]):
                    found.append((rest[0], _options(rest[1:])))
                # else a placeholder such as SUBCOMMAND or <sub>
            elif token == "nox" and rest[:2] == ["-s", "reproduce"] and "--" in rest:
                found.append(("reproduce", _options(rest[rest.index("--") + 1 :])))
            elif token == "nox" and rest[:2] == ["-s", "bench"] and "--" in rest:
                found.append((BENCH, _options(rest[rest.index("--") + 1 :])))
    return found


def _options(tokens: list[str]) -> list[str]:
    return [o for t in tokens for o in OPTION.findall(t)]


def unknown_options(text: str) -> list[str]:
    """`vaerepro SUB --option` uses in a Markdown text that SUB's parser does not have, unknown
    subcommands, and options named alone that no parser has."""
    known = parser_options()
    anywhere = frozenset().union(*known.values())
    problems = []
    for snippet in code_snippets(text):
        where = f"(in `{snippet.strip()}`)"
        if snippet.lstrip().startswith("--"):  # an option named alone: `--jobs 1`
            problems += [
                f"no subcommand has {option} {where}"
                for option in OPTION.findall(snippet)
                if option not in anywhere
            ]
        for sub, options in commands(snippet):
            if sub not in known:
                problems.append(f"unknown subcommand {sub!r} {where}")
                continue
            name = sub if sub == BENCH else " ".join(filter(None, ["vaerepro", sub]))
            problems += [f"{name} has no {o} {where}" for o in options if o not in known[sub]]
    return problems


def checked_options(text: str) -> int:
    return sum(len(opts) for s in code_snippets(text) for _, opts in commands(s))


# --- The tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_every_option_shown_exists(path):
    assert unknown_options(path.read_text()) == []


def test_the_docs_show_options_at_all():
    """The check above is not vacuous: the README alone shows options of several commands."""
    text = (ROOT / "README.md").read_text()
    assert checked_options(text) >= 10
    subs = {sub for s in code_snippets(text) for sub, _ in commands(s)}
    assert {"reproduce", "compare", "check"} <= subs


def test_a_made_up_option_or_subcommand_is_found():
    text = """
Train with `vaerepro reproduce --nz 3 --frobnicate 2`, or:

```bash
vaerepro compare RUN --at 1e6   # fine
OMP_NUM_THREADS=2 vaerepro check RUN --reference REF && vaerepro plot RUN --colour red
nox -s reproduce -- --samples 3e5 --turbo
.nox/reproduce/bin/vaerepro fig2 A B --out F --dpi 300
```

`vaerepro teleport --now` and `python -m vaerepro reproduce --help` and `vaerepro --version`.
Named alone: `--jobs 1`, `--quick`, `--warp 9`; `nox -s bench -- --device cpu --fast`.
"""
    problems = unknown_options(text)
    wrongs = ("--frobnicate", "--colour", "--turbo", "--dpi", "'teleport'", "--version", "--warp")
    for wrong in (*wrongs, "bench has no --fast"):
        assert sum(wrong in p for p in problems) == 1, (wrong, problems)
    assert len(problems) == 8, problems
    assert checked_options(text) == 14


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_ci_runs_the_readmes_test_command():
    """The README's first code block: the reproduction, then the test command CI runs."""
    block = (ROOT / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    assert len(commands) == 2 and "nox -s reproduce" in commands[0], commands
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands[1] in ci, f"{commands[1]!r} is not a line of .ci/run"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_relative_links_point_to_existing_files(path):
    assert broken_links(path) == []


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "there.md").write_text('# A heading, with `code`\n\n<a id="x"></a>\n')
    doc = tmp_path / "doc.md"
    text = """[ok](there.md) [ok](there.md#a-heading-with-code) [ok](there.md#x) [web](https://e.org)
[missing](nowhere.md) [bad anchor](there.md#nope) ![img](fig.png) `[in code](nowhere.md)`
[self](#top) [self ok](#title)

# Title
"""
    doc.write_text(text)
    assert broken_links(doc) == [
        "nowhere.md: no such file",
        "there.md#nope: no heading or id 'nope' in there.md",
        "fig.png: no such file",
        "#top: no heading or id 'top' in doc.md",
    ]


TEST_REFERENCE = re.compile(r"\b(tests/[\w/]+\.py)::(test_\w+)")
SOURCE_PATH = re.compile(r"(?:vaerepro|tests|bench|docs|\.ci)/[\w./-]*[\w/]")


def missing_references(text: str) -> list[str]:
    """`tests/test_x.py::test_name` that names no test of that file, and source paths in code
    (`vaerepro/core/model.py`, `bench/step_ratio.py`) that do not exist."""
    missing = []
    for file, name in TEST_REFERENCE.findall(text):
        source = ROOT / file
        if not source.exists() or not re.search(rf"^\s*def {name}\b", source.read_text(), re.M):
            missing.append(f"{file}::{name}")
    for snippet in code_snippets(text):
        for token in snippet.split():
            if SOURCE_PATH.fullmatch(token) and not (ROOT / token).exists():
                missing.append(token)
    return missing


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_named_tests_and_source_paths_exist(path):
    """When code or tests move, the docs that name them must move too."""
    assert missing_references(path.read_text()) == []


def test_a_stale_test_name_or_path_is_found():
    text = """`tests/test_docs.py::test_readme_is_short` exists, `tests/test_docs.py::test_gone` and
`tests/test_nowhere.py::test_x` do not; `vaerepro/cli/parser.py` and `bench/` exist, and in a block:

```bash
python bench/not_there.py && pytest tests/test_docs.py
```
"""
    assert missing_references(text) == [
        "tests/test_docs.py::test_gone",
        "tests/test_nowhere.py::test_x",
        "bench/not_there.py",
    ]
