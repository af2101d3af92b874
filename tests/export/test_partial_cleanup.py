"""Exports remove the partial artefacts that killed exports of the same target left, never a running one's."""

from __future__ import annotations

import os
from pathlib import Path

from medkd3d.export.exporter import _partial_path

#: Above Linux's largest pid (pid_max <= 2**22), so never a running process.
DEAD_PID = 2**22 + 54321


def test_a_new_export_removes_partials_of_killed_exports_of_the_same_artefact(tmp_path: Path) -> None:
    final = tmp_path / "model.ts"
    killed = tmp_path / f".model.partial-{DEAD_PID}.ts"
    running = tmp_path / f".model.partial-{os.getppid()}.ts"  # our parent runs: its export may be in progress
    other_format = tmp_path / f".model.partial-{DEAD_PID}.onnx"  # another artefact, cleaned up by its own export
    for path in (killed, running, other_format):
        path.write_bytes(b"")
    partial = _partial_path(final)
    assert partial == tmp_path / f".model.partial-{os.getpid()}.ts"
    assert not killed.exists() and running.exists() and other_format.exists()
