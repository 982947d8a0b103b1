"""A pytest plugin, and the helper that runs pytest with it, for the tests that run pytest in a subprocess
(test_assignments.py, test_docs.py).

    r, markers = run_pytest(folder, "--collect-only")   # markers: {node id: [marker names]}

The plugin writes {node id: [marker names]} of every collected test (before -m deselects any) to the file
named by $MARKERS_OUT, so that one pytest run can say which assignment each graded test belongs to (one
run, not one per assignment: each run starts torch and collects every test module).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items):
    with open(os.environ["MARKERS_OUT"], "w") as f:
        json.dump({item.nodeid: sorted({m.name for m in item.iter_markers()}) for item in items}, f)


def run_pytest(folder: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, list[str]]]:
    """`python -m pytest -p collected_markers *args` in `folder` (this plugin taken from folder/tests):
    the finished process and {node id: [marker names]} of every test it collected ({} if it collected none)."""
    with tempfile.TemporaryDirectory() as tmp:
        markers_out = Path(tmp) / "markers.json"
        r = subprocess.run([sys.executable, "-m", "pytest", "-p", "collected_markers", *args], cwd=folder,
                           capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(Path(folder) / "tests"),
                                "MARKERS_OUT": str(markers_out)})
        return r, json.loads(markers_out.read_text()) if markers_out.exists() else {}
