"""``medkd3d synth`` says how far it is: progress lines with the elapsed time and an ETA."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from medkd3d.data.synthetic import generate_synthetic_brats

_LINE = re.compile(r"synth: (\d+)/(\d+) subjects, ([\d.]+) s elapsed, ETA ([\d.]+) s")


def test_progress_is_logged_about_every_tenth(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="medkd3d.data.synthetic"):
        generate_synthetic_brats(tmp_path, n_hgg=2, n_lgg=1, shape=(16, 16, 16), anatomy="procedural")
    progress = [_LINE.fullmatch(r.getMessage()) for r in caplog.records]
    progress = [m for m in progress if m is not None]
    # 3 subjects: a tenth rounds up to one subject, so one line each; the last says nothing is left
    assert [(int(m[1]), int(m[2])) for m in progress] == [(1, 3), (2, 3), (3, 3)]
    assert float(progress[-1][4]) == 0.0
    elapsed = [float(m[3]) for m in progress]
    assert elapsed == sorted(elapsed)


def test_no_log_lines_under_the_progress_bar(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="medkd3d.data.synthetic"):
        generate_synthetic_brats(tmp_path, n_hgg=1, n_lgg=1, shape=(16, 16, 16), anatomy="procedural", progress=True)
    assert not any(_LINE.fullmatch(r.getMessage()) for r in caplog.records)
