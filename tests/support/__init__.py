"""What the tests share: helpers (this package) and child-process scripts (CHILDREN)."""

from pathlib import Path

#: The scripts tests run as child processes.
CHILDREN = Path(__file__).resolve().parents[1] / "children"
