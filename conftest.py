"""Collect the code blocks of README.md and docs/*.md as tests (see docs/_support/docrunner.py)."""

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "docs" / "_support"))

import docrunner  # noqa: E402 - found through the line above

pytest_collect_file = docrunner.pytest_collect_file(
    docrunner.make_sybil(ROOT, ["README.md", "docs/*.md"]))

# Blocks that do not run yet, in documents other branches own, pinned to the SHA-256 of
# the document's text: while a file is exactly that text, the blocks listed (by the line
# of their opening fence; None: all of them) are listed as xfail, not run. Once the file
# changes the entry no longer matches and every block runs. The owner fixes a block, or
# marks it <!-- skip: next "why" -->, and deletes the entry.
PENDING = {
    "docs/cli.md": ("aafe39b26dce4295", {
        76: "runs servers that never exit (python -m http.server, openssl s_server): "
            "the block times out",
        98: "a Makefile: no runner for ```make (tests/test_cli.py runs these recipes)",
    }),
    "docs/pytest.md": ("725ba3c270589a42", None),  # the pytest-plugin branch rewrites it
}


def _pending_reason(path: Path, line: int) -> str | None:
    try:
        name = path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return None
    if name not in PENDING:
        return None
    digest, blocks = PENDING[name]
    if hashlib.sha256(path.read_bytes()).hexdigest()[:16] != digest:
        return None
    if blocks is None:
        return "not runnable yet: its owner's branch makes it so"
    return blocks.get(line)


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
        reason = _pending_reason(Path(path), item.example.line)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, run=False, strict=False))
            docrunner.never_replay(item.example)
