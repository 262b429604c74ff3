"""A private installed copy of portsafe, bytecode compiled, per interpreter.

This machine sets PYTHONDONTWRITEBYTECODE=1, so a checkout never has its .pyc files and
every import would compile from source: no user's installed copy works that way. The
bench therefore makes a venv from the interpreter under test (a pyenv build: the
system interpreters load a site .pth that imports certifi), copies ``src/portsafe``
(and portpicker, where the bench's own interpreter has it) into its site-packages,
writes the ``portsafe`` console script, and compiles everything with compileall. It
builds ``portsafe._locking._speedups`` for that interpreter as an install would (``setup.py``:
Linux, optional); ``PORTSAFE_PURE_PYTHON=1`` in the bench's environment measures the
pure-Python version instead, and every run says which it measured.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYENV = os.path.expanduser("~/.pyenv/versions")
VERSIONS = ("3.10.13", "3.11.7", "3.12.1", "3.13.0")

SCRIPT = """#!{python}
import sys
from portsafe._cli.main import main
sys.exit(main())
"""


def interpreters(choice: list[str]) -> list[str]:
    """The interpreters to run: paths, pyenv version names, or "all" present."""
    if not choice:
        default = os.path.join(PYENV, "3.11.7", "bin", "python")
        return [default if os.path.exists(default) else shutil.which("python3") or "python3"]
    found: list[str] = []
    for item in choice:
        if item == "all":
            found += [path for version in VERSIONS
                      if os.path.exists(path := os.path.join(PYENV, version, "bin", "python"))]
        elif os.path.exists(os.path.join(PYENV, item, "bin", "python")):
            found.append(os.path.join(PYENV, item, "bin", "python"))
        else:
            found.append(item)
    return found


def _build_speedups(exe: str, package: str) -> None:
    """Compile ``_speedups.c`` for *exe* into *package*, with its own compiler settings;
    where that fails, say so (portsafe then runs its pure-Python version)."""
    code = ("import sysconfig as s; print(s.get_config_var('CC') or 'cc'); "
            "print(s.get_paths()['include']); print(s.get_config_var('EXT_SUFFIX'))")
    cc, include, suffix = subprocess.run([exe, "-c", code], capture_output=True, text=True,
                                         check=True).stdout.splitlines()
    source = os.path.join(ROOT, "src", "portsafe", "_locking", "_speedups.c")
    out = os.path.join(package, "_speedups" + suffix)
    built = subprocess.run([*cc.split(), "-O2", "-shared", "-fPIC", "-I", include, source,
                            "-o", out], capture_output=True, text=True, check=False)
    if built.returncode:
        print(f"portsafe._locking._speedups did not build for {exe}; measuring the pure-Python "
              f"version:\n{built.stderr}", file=sys.stderr)


def make(python: str, parent: str) -> str:
    """A venv under *parent* with portsafe installed and compiled; its python's path."""
    venv = tempfile.mkdtemp(prefix="venv-", dir=parent)
    subprocess.run([python, "-m", "venv", "--without-pip", venv], check=True)
    exe = os.path.join(venv, "bin", "python")
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run([exe, "-c", code], capture_output=True, text=True,
                             check=True).stdout.strip()
    shutil.copytree(os.path.join(ROOT, "src", "portsafe"), os.path.join(purelib, "portsafe"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    targets = [os.path.join(purelib, "portsafe")]
    if sys.platform.startswith("linux"):
        _build_speedups(exe, os.path.join(purelib, "portsafe", "_locking"))
    spec = importlib.util.find_spec("portpicker")
    if spec is not None and spec.origin and spec.origin.endswith(".py"):
        shutil.copy(spec.origin, purelib)
        targets.append(os.path.join(purelib, "portpicker.py"))
    script = os.path.join(venv, "bin", "portsafe")
    with open(script, "w") as file:
        file.write(SCRIPT.format(python=exe))
    os.chmod(script, 0o755)
    subprocess.run([exe, "-m", "compileall", "-q", *targets], check=True)
    return exe
