"""Check the built sdist and wheel before a release: ``python tools/check_dist.py dist``.

`nox -s build` runs it after ``python -m build`` and ``twine check``. It fails (exit 1,
one line per problem) unless:

* there is exactly one wheel and one sdist, both of the version in pyproject.toml, which
  is the only place the version is written (``__version__`` and ``portsafe --version``
  read the installed metadata), so no ``__version__ = "..."`` literal may appear in the
  sources;
* the wheel holds the ``portsafe`` package with its ``py.typed`` marker and auto mode's
  start-up hook ``portsafe-auto.pth``, and nothing else at the top level: no tests,
  benchmarks, tools or docs; a Linux wheel (or any wheel built here on Linux) holds the
  compiled ``_speedups`` module and its ``.pyi``; no wheel ships the C source;
* the wheel's metadata names that version and the ``pytest11`` entry point and the
  ``portsafe`` console script are declared;
* the sdist carries the sources (``_speedups.c`` too), ``py.typed``, the licence and
  the README.
"""

from __future__ import annotations

import re
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def project_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise SystemExit("pyproject.toml has no static `version = \"...\"` line")
    return match.group(1)


def check_sources() -> list[str]:
    literal = re.compile(r"^\s*__version__\s*=\s*['\"]", re.MULTILINE)
    return [f"{path.relative_to(ROOT)}: a __version__ literal; the version lives in "
            "pyproject.toml only" for path in (ROOT / "src").rglob("*.py")
            if literal.search(path.read_text(encoding="utf-8"))]


#: Auto mode's interpreter start-up hook: the one file at the top of site-packages.
HOOK = "portsafe-auto.pth"


def check_wheel(wheel: Path, version: str) -> list[str]:
    problems = []
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = f"portsafe-{version}.dist-info"
        tops = {name.split("/", 1)[0] for name in names}
        extra = sorted(tops - {"portsafe", dist_info, HOOK})
        if extra:
            problems.append(f"{wheel.name}: unexpected top-level entries {extra} "
                            f"(only the portsafe package and {HOOK} belong in the wheel)")
        if HOOK not in names:
            problems.append(f"{wheel.name}: no {HOOK} (auto mode would not reach child "
                            "processes)")
        if "portsafe/py.typed" not in names:
            problems.append(f"{wheel.name}: no portsafe/py.typed (type checkers would "
                            "ignore the annotations)")
        if "-linux_" in wheel.name or ("-none-any" in wheel.name and
                                       sys.platform.startswith("linux")):
            if not any(re.fullmatch(r"portsafe/_locking/_speedups\..*\.so", n) for n in names):
                problems.append(f"{wheel.name}: no compiled portsafe/_locking/_speedups (did the C "
                                "compiler fail? the build log says why)")
            if "portsafe/_locking/_speedups.pyi" not in names:
                problems.append(f"{wheel.name}: no portsafe/_locking/_speedups.pyi")
        if "portsafe/_locking/_speedups.c" in names:
            problems.append(f"{wheel.name}: ships the C source portsafe/_locking/_speedups.c")
        tests = [n for n in names if re.search(r"(^|/)(tests?|conftest\.py)(/|$)", n)]
        if tests:
            problems.append(f"{wheel.name}: contains tests: {tests[:5]}")
        try:
            metadata = archive.read(f"{dist_info}/METADATA").decode()
            entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        except KeyError as exc:
            return [*problems, f"{wheel.name}: missing {exc.args[0]}"]
    if f"\nVersion: {version}\n" not in metadata:
        problems.append(f"{wheel.name}: METADATA does not say Version: {version}")
    if "portsafe = portsafe.pytest_plugin" not in entry_points:
        problems.append(f"{wheel.name}: no pytest11 entry point for portsafe.pytest_plugin")
    if "portsafe = portsafe._cli.main:main" not in entry_points:
        problems.append(f"{wheel.name}: no `portsafe` console script")
    return problems


def check_sdist(sdist: Path, version: str) -> list[str]:
    prefix = f"portsafe-{version}/"
    with tarfile.open(sdist) as archive:
        names = set(archive.getnames())
    needed = ["pyproject.toml", "README.md", "LICENSE", "src/portsafe/__init__.py",
              "src/portsafe/py.typed", "src/portsafe/_locking/_speedups.c",
              "src/portsafe/_locking/_speedups.pyi",
              "setup.py"]
    return [f"{sdist.name}: missing {name}" for name in needed if prefix + name not in names]


def main(argv: list[str]) -> int:
    dist = Path(argv[0] if argv else "dist")
    version = project_version()
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    problems = check_sources()
    if len(wheels) != 1 or len(sdists) != 1:
        problems.append(f"{dist}: expected one wheel and one sdist, found "
                        f"{[p.name for p in wheels + sdists]}")
    for wheel in wheels:
        if not wheel.name.startswith(f"portsafe-{version}-"):
            problems.append(f"{wheel.name}: not version {version} (pyproject.toml)")
        problems += check_wheel(wheel, version)
    for sdist in sdists:
        if sdist.name != f"portsafe-{version}.tar.gz":
            problems.append(f"{sdist.name}: not version {version} (pyproject.toml)")
        problems += check_sdist(sdist, version)
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print(f"OK: portsafe {version}: {', '.join(p.name for p in wheels + sdists)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
