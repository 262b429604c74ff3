"""Build hooks: ship auto mode's start-up hook, ``portsafe-auto.pth``, at the top of
site-packages (where the interpreter reads ``.pth`` files), as coverage tools ship theirs;
and, on Linux, compile ``portsafe._locking._speedups``
(``src/portsafe/_locking/_speedups.c``), optional:
where it does not compile (no C compiler or Python headers), the build says so and goes
on, and portsafe runs its pure-Python version of the same calls (``_claim.py``).

Everything else about the package is in pyproject.toml. An editable install leaves the
hook out (``portsafe._auto.switch.enable()`` says so when auto mode starts).
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HOOK = Path(__file__).parent / "src" / "portsafe-auto.pth"


class BuildPyWithHook(build_py):
    """build_py that also copies the start-up hook into the root of the build."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            self.copy_file(str(HOOK), str(Path(self.build_lib) / HOOK.name))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs: list[str] = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs.append(str(Path(self.build_lib) / HOOK.name))
        return outputs


SPEEDUPS = [Extension("portsafe._locking._speedups", ["src/portsafe/_locking/_speedups.c"],
                      optional=True)] \
    if sys.platform.startswith("linux") else []

setup(cmdclass={"build_py": BuildPyWithHook}, ext_modules=SPEEDUPS)
