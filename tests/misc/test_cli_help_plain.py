"""``--help`` of every ``medkd3d`` sub-command is plain text: no reST / Sphinx markup leaks from docstrings."""

from __future__ import annotations

import argparse
import re

import pytest

from medkd3d.cli import build_parser
from medkd3d.networks.cli import plain_text

#: inline literals, Sphinx roles (:class:`X`, :func:`~a.b`) and reST links (`text`_)
_MARKUP = re.compile(r"``|:[a-z]+:`|`[^`\n]+`_")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_help_has_no_rest_markup(name: str) -> None:
    text = _subcommands()[name].format_help()
    assert _MARKUP.search(text) is None, f"`medkd3d {name} --help` shows markup: {_MARKUP.findall(text)}"


def test_top_level_help_has_no_rest_markup() -> None:
    assert _MARKUP.search(build_parser().format_help()) is None


def test_plain_text_removes_literals_and_roles() -> None:
    doc = "Use ``--tiny`` with :func:`~medkd3d.networks.profile.spatial_rank` and :class:`medkd3d.X`."
    assert plain_text(doc) == "Use --tiny with spatial_rank and medkd3d.X."
    assert plain_text("no markup - keep `single` quotes") == "no markup - keep `single` quotes"
