"""Every ``medkd3d`` command shown in README.md and docs/*.md exists as written.

For each command in a fenced ``bash``/``sh``/``shell``/``console`` block, and each inline code span that starts
with ``medkd3d `` or ``python -m medkd3d ``, the test runs ``medkd3d <subcommand> --help`` (in process) and checks
that every ``--flag`` of the command appears in that help. A fenced command is a complete command line, so it is
also parsed with the real parser (required arguments, choices and value types); an inline span may be a mention
(`` `medkd3d datalist` ``) and is not. Nothing is executed beyond the parsing: the test takes a few seconds.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from medkd3d.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```[ \t]*(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_SHELL_BLOCKS = {"bash", "sh", "shell", "console", "zsh"}
_INLINE = re.compile(r"(?<!`)`((?:python3? -m )?medkd3d [^`\n]+)`(?!`)")
#: how a medkd3d command starts (the program, after any ``VAR=value`` assignments)
_PROGRAMS = (["medkd3d"], ["python", "-m", "medkd3d"], ["python3", "-m", "medkd3d"])


@dataclass(frozen=True)
class Command:
    """One documented ``medkd3d`` command: its arguments after the program, and where it is written."""

    argv: tuple[str, ...]
    where: str
    complete: bool = True

    def __str__(self) -> str:
        return f"{self.where}: medkd3d {shlex.join(self.argv)}"


def _shell_commands(block: str) -> list[list[str]]:
    """The simple commands of a shell block: lines joined at ``\\``, split at ``&&``, ``||``, ``;`` and ``|``."""
    text = re.sub(r"\\\n", " ", block)
    commands = []
    for line in text.splitlines():
        line = re.sub(r"^\s*[$>]\s+", "", line)  # a console prompt
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in lexer:
            if set(token) <= set(";&|"):
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


def _medkd3d_argv(tokens: list[str]) -> list[str] | None:
    """The arguments after ``medkd3d`` / ``python -m medkd3d``, or ``None`` for another program."""
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", tokens[0]):  # OMP_NUM_THREADS=1 medkd3d ...
        tokens = tokens[1:]
    for program in _PROGRAMS:
        if tokens[: len(program)] == program:
            return tokens[len(program) :]
    return None


def documented_commands() -> list[Command]:
    """Every ``medkd3d`` command of :data:`DOCUMENTS` (fenced shell blocks and inline code spans)."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        name = document.relative_to(ROOT).as_posix()
        for fence in _FENCE.finditer(text):
            if fence.group(1).lower() not in _SHELL_BLOCKS:
                continue
            line = text.count("\n", 0, fence.start()) + 1
            for tokens in _shell_commands(fence.group(2)):
                argv = _medkd3d_argv(tokens)
                if argv is not None:
                    found.append(Command(tuple(argv), f"{name}:{line}"))
        prose = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for span in _INLINE.finditer(prose):
            line = prose.count("\n", 0, span.start()) + 1
            argv = _medkd3d_argv(shlex.split(span.group(1)))
            if argv is not None:
                found.append(Command(tuple(argv), f"{name}:{line}", complete=False))
    return found


COMMANDS = documented_commands()


@cache
def _help(subcommand: str) -> str:
    """The output of ``medkd3d <subcommand> --help`` (``medkd3d --help`` for ``""``)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        main([subcommand, "--help"] if subcommand else ["--help"])
    assert exited.value.code == 0, f"`medkd3d {subcommand} --help` exited with {exited.value.code}"
    return out.getvalue()


def _subcommand(argv: tuple[str, ...]) -> str:
    """The sub-command of a command line (the first argument that is not a top-level flag)."""
    return next((a for a in argv if not a.startswith("-")), "")


def test_the_documents_show_commands() -> None:
    # the test must not pass by finding nothing: the README shows the pipeline, docs/real_data.md the datalist
    subcommands = {_subcommand(c.argv) for c in COMMANDS}
    assert {"pipeline", "datalist", "check-data"} <= subcommands, subcommands


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_command_exists_as_written(command: Command) -> None:
    subcommand = _subcommand(command.argv)
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert subcommand == "" or subcommand in commands, f"{command}: no sub-command {subcommand!r}"
    help_text = _help(subcommand) + (_help("") if subcommand else "")
    for flag in (a.split("=", 1)[0] for a in command.argv if a.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), (
            f"{command}: `medkd3d {subcommand} --help` shows no {flag}"
        )
    if not command.complete or {"--help", "-h", "--version"} & set(command.argv):
        return
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            build_parser().parse_args(list(command.argv))
        except SystemExit as exited:
            pytest.fail(f"{command}: the parser refuses it (exit {exited.code}): {errors.getvalue().strip()}")


def test_the_extractor_reads_shell_syntax() -> None:
    block = (
        "python3 -m venv .venv && . .venv/bin/activate && medkd3d pipeline --quick --out runs/q  # a comment\n"
        "$ OMP_NUM_THREADS=1 python -m medkd3d models --tiny \\\n    --filter 'vgg*'; echo done\n"
        'cd /data && for f in *.nii.gz; do mv "$f" x/; done\n'
    )
    argv = [a for a in (_medkd3d_argv(c) for c in _shell_commands(block)) if a is not None]
    assert argv == [["pipeline", "--quick", "--out", "runs/q"], ["models", "--tiny", "--filter", "vgg*"]]


@pytest.mark.parametrize(
    "argv",
    [
        ("datalist", "ROOT", "--out", "x.json", "--no-such-flag"),  # a flag the sub-command does not have
        ("no-such-command", "--out", "x"),
        ("datalist", "--out", "x.json"),  # the required ROOT is missing
        ("synth", "--out", "x", "--layout", "brats1999"),  # not one of the choices
    ],
)
def test_a_wrong_command_fails(argv: tuple[str, ...]) -> None:
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        test_documented_command_exists_as_written(Command(argv, "made-up.md:1"))
