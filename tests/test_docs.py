"""The repository's documentation stands on its own: nothing a user or maintainer reads points at a
document outside the repository, and the relative links between our own documents resolve."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.unit

OUTSIDE = re.compile(r"design\s*§|design\.md|\.\./shared")
READ_BY_PEOPLE = ("*.md", "docs/*.md", "helm/**/*", "keysvc/**/*.py", "keysvc/**/*.js", "bench/*.py", "Makefile",
                  "Dockerfile", "pyproject.toml", "tests/**/*.py", "tests/**/*.yaml", ".ci/*")
THIS_GUARD = {Path(__file__).resolve(), (ROOT / "tests" / "test_helm_chart.py").resolve()}


def _files() -> list[Path]:
    found = {p.resolve() for pattern in READ_BY_PEOPLE for p in ROOT.glob(pattern) if p.is_file()}
    return sorted(p for p in found - THIS_GUARD if "node_modules" not in p.parts)


def test_nothing_points_outside_the_repository() -> None:
    """README, docs/, the chart, code comments and tests name no design document outside the repository: a
    clone must contain everything its readers need."""
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in _files()
                 for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert offenders == []


def test_relative_links_between_our_documents_resolve() -> None:
    """Every relative Markdown link in README.md, CHANGELOG.md and docs/ names a file that exists."""
    broken = []
    for doc in [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")),
                ROOT / "helm" / "keysvc" / "README.md"]:
        if not doc.exists():
            continue
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert broken == []


# --- every `keysvc ...` command line the documents show parses with keysvc's own parser --------------------

COMMAND_DOCS = ("README.md", "docs/*.md", "helm/keysvc/README.md")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SYNOPSIS = re.compile(r"[\[\]]|\s\|\s|\w\|\w|\.\.\.|…|\(--")
SHELL_OPERATOR = re.compile(r"^[|&;<>()]+$")
PLACEHOLDERS = {"ADDR": "127.0.0.1:8080", "SECONDS": "30", "N": "2", "JSON": "{}"}  # a synopsis' typed placeholders


def _command_texts(text: str) -> list[str]:
    """Each line of a fenced block (backslash continuations joined, comments kept for shlex to drop) and each
    inline code span outside them."""
    texts = []
    for block in FENCE.findall(text):
        texts += block.replace("\\\n", " ").splitlines()
    prose = FENCE.sub("", text)
    texts += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    return texts


def _keysvc_argv(text: str) -> str | None:
    """The text after the `keysvc` (or `.../bin/keysvc`) that starts a command line in `text`, or None."""
    match = re.search(r"(?:^|[\s($`])(?:\S*bin/)?keysvc\s+(?=-|[a-z])(.*)$", text)
    if match is None:
        return None
    rest = match.group(1)
    if text[match.start()] == "`":  # an inline span inside a fenced block's comment
        rest = rest.split("`")[0]
    first = rest.split()[0] if rest.split() else ""
    from keysvc.cli import build_parser

    parser = build_parser()
    options = {option for action in parser._actions for option in action.option_strings}
    # else not keysvc's command line: prose ("keysvc serves"), `helm test keysvc -n keysvc`
    return rest if first in options or first in _subcommands(parser) else None


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: p for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name, p in action.choices.items()}


Node = tuple[str, Any]  # ("word", text) | ("opt", alternatives) | ("group", alternatives)


def _synopsis(text: str) -> list[list[Node]]:
    """A synopsis (`[--a X | --b]`, `(x | y)`, `a|b`) as alternatives of node sequences."""
    tokens = re.findall(r"\[|\]|\(|\)|\||'[^']*'|\"[^\"]*\"|[^\s\[\]()|]+", text)

    def alternatives(pos: int, end: str | None) -> tuple[list[list[Node]], int]:
        alts: list[list[Node]] = [[]]
        while pos < len(tokens) and tokens[pos] != end:
            token = tokens[pos]
            if token in "[(":
                inner, pos = alternatives(pos + 1, "]" if token == "[" else ")")
                alts[-1].append(("opt" if token == "[" else "group", inner))
            elif token == "|":
                alts.append([])
            elif token not in ("...", "…"):
                alts[-1].append(("word", token))
            pos += 1
        return alts, pos

    return alternatives(0, None)[0]


def _minimal(seq: list[Node]) -> list[str]:
    words: list[str] = []
    for kind, value in seq:
        words += [value] if kind == "word" else [] if kind == "opt" else _minimal(value[0])
    return words


def _variants(alts: list[list[Node]]) -> list[list[str]]:
    """The shortest line of each alternative, and one line more per optional part or alternative in it."""
    found: list[list[str]] = []
    for seq in alts:
        found.append(_minimal(seq))
        for i, (kind, value) in enumerate(seq):
            if kind != "word":
                found += [_minimal(seq[:i]) + inner + _minimal(seq[i + 1:]) for inner in _variants(value)]
    return found


def _problem(words: list[str]) -> str | None:
    """None if `keysvc WORDS` parses (or names a command with no arguments, a reference); else the error."""
    from keysvc.cli import build_parser, kid_as_positional

    parser, path = build_parser(), list(words)
    while path and not path[0].startswith("-") and (children := _subcommands(parser)):
        if path[0] not in children:
            return f"no command {path[0]!r}"
        parser, path = children[path.pop(0)], path
    if not path and words and not words[0].startswith("-"):
        return None  # `keysvc client new`: names the command
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(kid_as_positional(words))
    except SystemExit as exc:
        return None if exc.code == 0 else err.getvalue().strip().splitlines()[-1]
    return None


def _lines_and_problems() -> list[tuple[str, str | None]]:
    seen = []
    for doc in sorted({p for pattern in COMMAND_DOCS for p in ROOT.glob(pattern)}):
        for text in _command_texts(doc.read_text()):
            rest = _keysvc_argv(text)
            if rest is None:
                continue
            where = f"{doc.relative_to(ROOT)}: keysvc {rest.strip()}"
            try:
                synopsis = re.sub(r"\s#.*$", "", rest)
                if SYNOPSIS.search(synopsis):
                    lines = [[shlex.split(w)[0] if w[:1] in "'\"" else PLACEHOLDERS.get(w, w) for w in line]
                             for line in _variants(_synopsis(synopsis))]
                    if any(w in ("COMMAND", "ACTION") for line in lines for w in line):
                        continue  # the generic `keysvc [options] COMMAND ...`
                    problems = [p for line in lines if (p := _problem(line))]
                    if re.search(r"\.\.\.|…", synopsis):  # "and more": required arguments may be left out
                        problems = [p for p in problems if "arguments are required" not in p]
                    seen.append((where, problems[0] if problems else None))
                    continue
                lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
                lexer.whitespace_split, lexer.commenters = True, "#"
                words = []
                for word in lexer:
                    if SHELL_OPERATOR.match(word):
                        if word.startswith(">") and words and words[-1].isdigit():
                            words.pop()  # 2>&1
                        break
                    words.append(PLACEHOLDERS.get(word, word))
            except ValueError as exc:
                seen.append((where, f"cannot split: {exc}"))
                continue
            if not {"COMMAND", "ACTION"} & set(words):  # `keysvc zapier COMMAND --help`: any command
                seen.append((where, _problem(words)))
    return seen


def test_every_keysvc_command_line_in_the_docs_parses() -> None:
    """Every `keysvc ...` line in README.md, docs/*.md and the chart README (fenced blocks and inline code)
    parses with keysvc's real argument parser: synopses are expanded (each optional part and alternative
    once), placeholders such as KEYSET stand as values, a bare `keysvc client new` is a reference to a
    command that must exist. A renamed flag or command breaks this test, not a reader."""
    seen = _lines_and_problems()
    broken = [f"{where}  ->  {problem}" for where, problem in seen if problem]
    assert broken == []
    assert len(seen) >= 40, f"only {len(seen)} command lines found: is the extraction still right?"


def test_readme_exit_statuses_are_the_ones_keysvc_help_names() -> None:
    """The README's exit-status table lists exactly the statuses `keysvc --help` lists (0, 1, 2, 3, 78), and
    `keysvc zapier --help` names only statuses of that table."""
    from keysvc.cli import build_parser

    readme = (ROOT / "README.md").read_text().split("| exit status | meaning |", 1)[1].split("\n\n", 1)[0]
    table = {int(code) for code in re.findall(r"^\| (\d+) \|", readme, re.M)}
    parser = build_parser()
    epilog = (parser.epilog or "").split("exit status:", 1)[1]
    assert {int(code) for code in re.findall(r"(?:^\s*|; |\n\s+)(\d+) ", epilog)} == table == {0, 1, 2, 3, 78}
    zapier = _subcommands(parser)["zapier"].epilog or ""
    assert {int(code) for code in re.findall(r"(?:: |; )(\d+) ", zapier)} <= table
