"""A pytest plugin for the tests that run pytest in a subprocess (test_assignments.py, test_docs.py).

    python -m pytest --collect-only -p collected_markers     # with tests/ on PYTHONPATH, MARKERS_OUT=file

writes {node id: [marker names]} of every collected test (before -m deselects any) to the file named by
$MARKERS_OUT, so that one pytest run can say which assignment each graded test belongs to (one run, not
one per assignment: each run starts torch and collects every test module).
"""
import json
import os

import pytest


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items):
    with open(os.environ["MARKERS_OUT"], "w") as f:
        json.dump({item.nodeid: sorted({m.name for m in item.iter_markers()}) for item in items}, f)
