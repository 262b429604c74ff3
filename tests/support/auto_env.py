"""Child processes that run auto mode's start-up hook, also from an editable install.

An editable install has no ``portsafe-auto.pth`` in site-packages, so these helpers run
the hook's one line from a ``sitecustomize`` on ``PYTHONPATH`` instead: the same code at
the same moment of start-up (after site-packages, before the program).
"""

from __future__ import annotations

import os
from pathlib import Path

HOOK_FILE = Path(__file__).resolve().parents[2] / "src" / "portsafe-auto.pth"


def hook_env(directory: Path, **variables: str) -> dict[str, str]:
    """os.environ plus a sitecustomize that runs the hook, plus *variables*."""
    site = directory / "hook-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"exec({HOOK_FILE.read_text()!r})\n")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PORTSAFE_AUTO")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(variables)
    return env
