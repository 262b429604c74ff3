"""Collect the code blocks of README.md and docs/*.md as tests (see docs/_support/docrunner.py)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "docs" / "_support"))

import docrunner  # noqa: E402 - found through the line above

pytest_collect_file = docrunner.pytest_collect_file(
    docrunner.make_sybil(ROOT, ["README.md", "docs/*.md"]))

def pytest_collection_modifyitems(items):  # noqa: ANN001, ANN201 - pytest hook
    import pytest

    for item in items:
        path = getattr(item, "path", None)
        if path is None or not isinstance(item, docrunner.InOrderItem):
            continue
        if sys.platform == "win32":
            item.add_marker(pytest.mark.skip(
                reason="the docs' examples are POSIX (spawn(), bash); Linux and macOS run them"))
            continue
