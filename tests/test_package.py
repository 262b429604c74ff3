"""The package itself: lazy names that a fork cannot hang, a public-only dir(), one table
of names, and auto mode's start-up hook reporting a bad PORTSAFE_AUTO once."""

from __future__ import annotations

import ast
import doctest
import importlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from tests.support.auto_env import hook_env

import portsafe
from portsafe._auto import switch as _auto

INIT = Path(portsafe.__file__)
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here")

# One round, in a fresh interpreter (nothing of portsafe loaded but the package): a thread
# makes its first portsafe call, and the main thread forks at once, while that call's
# lazy import is likely under way. The child makes portsafe calls of its own (one whose
# module the thread was loading, one that takes the lazy-import lock itself); a child
# still stuck after HANG seconds dumps its stack and exits 70. Prints the child's status.
ROUND = textwrap.dedent("""
    import faulthandler, json, os, signal, sys, threading, time
    import portsafe

    HANG = float(sys.argv[1])

    def first_call():
        with portsafe.reserve_port():
            pass

    thread = threading.Thread(target=first_call)
    thread.start()
    pid = os.fork()
    if pid == 0:
        faulthandler.dump_traceback_later(HANG, exit=True)  # exits 1: the stack says where
        try:
            with portsafe.reserve_port() as r:
                low, high = portsafe.ephemeral_port_range()
                ok = 1 <= r.port <= 65535 and low <= high
        except BaseException:
            os._exit(2)
        os._exit(0 if ok else 3)
    thread.join()
    deadline = time.monotonic() + 2 * HANG
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print(json.dumps(os.waitstatus_to_exitcode(status)))
            break
        time.sleep(0.05)
    else:  # faulthandler could not even run: the child is stuck for good
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print(json.dumps("killed"))
""")


def _env_without_auto() -> dict[str, str]:
    return {key: value for key, value in os.environ.items()
            if not key.startswith("PORTSAFE_AUTO")}


@needs_fork
def test_fork_during_a_first_call_does_not_hang_the_child() -> None:
    """A fork taken while another thread makes its first portsafe call: the child's own
    calls return. Were the lazy imports not serialised against fork, most such children
    would hang on the import lock the other thread held at the fork."""
    rounds, hang = 30, 20.0
    statuses: list[object] = []
    stacks: list[str] = []
    for _ in range(rounds):
        done = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c",
                               ROUND, str(hang)], env=_env_without_auto(),
                              capture_output=True, text=True, timeout=4 * hang + 60,
                              check=False)
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout.splitlines()[-1])
        statuses.append(status)
        if status != 0:
            stacks.append(done.stderr)
        if len(stacks) >= 3:  # a broken build: enough to show it, without 30 timeouts
            break
    hung = sum(status in (1, "killed") for status in statuses)
    assert (hung, statuses.count(0)) == (0, rounds), (statuses, stacks[:1])


@needs_fork
def test_fork_leaves_the_lazy_import_lock_free() -> None:
    """The before-fork hook takes the lock; both sides of the fork get it back free (a
    thread other than the forking one can take it)."""

    def free_for_another_thread() -> bool:
        took: list[bool] = []

        def take() -> None:
            took.append(portsafe._imports.acquire(timeout=30))
            if took[0]:
                portsafe._imports.release()

        thread = threading.Thread(target=take)
        thread.start()
        thread.join()
        return took == [True]

    pid = os.fork()
    if pid == 0:  # the child must never return into pytest
        code = 1
        try:
            code = 0 if free_for_another_thread() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert free_for_another_thread()


# -- dir() --------------------------------------------------------------------------------

def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


DIR_REPORT = textwrap.dedent("""
    import json, sys
    import portsafe
    for module in sys.argv[1:]:
        __import__(module)
    print(json.dumps({"dir": dir(portsafe), "all": portsafe.__all__,
                      "vars": sorted(vars(portsafe))}))
""")


@pytest.mark.parametrize("imported", [[], ["portsafe.testing", "portsafe.socket_helper",
                                           "portsafe.script_helper", "portsafe._core.reserve"]])
def test_dir_lists_the_public_names_only(imported: list[str]) -> None:
    """dir(portsafe) is __all__ plus the public submodules imported, plus dunders; the
    namespace binds nothing else public (no TYPE_CHECKING, no annotations)."""
    done = subprocess.run([sys.executable, "-c", DIR_REPORT, *imported],
                          env=_env_without_auto(), capture_output=True, text=True,
                          check=True, timeout=60)
    report = json.loads(done.stdout)
    public_modules = {name.split(".")[1] for name in imported
                      if not name.split(".")[1].startswith("_")}
    listed = report["dir"]
    assert listed == sorted(listed)
    assert [name for name in listed if name.startswith("_") and not _is_dunder(name)] == []
    assert {name for name in listed if not _is_dunder(name)} == \
        {name for name in report["all"] if not _is_dunder(name)} | public_modules
    assert set(report["all"]) <= set(listed)
    assert {"__name__", "__doc__", "__path__", "__file__", "__spec__"} <= set(listed)
    bound_public = {name for name in report["vars"] if not name.startswith("_")}
    assert bound_public <= set(report["all"]) | public_modules


def test_dir_in_this_process() -> None:
    """Here, with whatever the test run has loaded: the same rule, and every name listed
    is an attribute (dir() promises nothing that getattr then refuses)."""
    loaded = {name.split(".")[1] for name in sys.modules
              if name.count(".") == 1 and name.startswith("portsafe.")
              and not name.split(".")[1].startswith("_")}
    listed = dir(portsafe)
    assert {name for name in listed if not _is_dunder(name)} == \
        {name for name in portsafe.__all__ if not _is_dunder(name)} | loaded
    for name in listed:
        getattr(portsafe, name)


# -- one table of names -------------------------------------------------------------------

def _type_checking_imports() -> dict[str, str]:
    """name -> module of the ``if TYPE_CHECKING:`` imports of portsafe/__init__.py."""
    tree = ast.parse(INIT.read_text())
    blocks = [node for node in tree.body if isinstance(node, ast.If)
              and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"]
    assert len(blocks) == 1
    found: dict[str, str] = {}
    for node in blocks[0].body:
        assert isinstance(node, ast.ImportFrom), ast.dump(node)
        for alias in node.names:
            assert alias.asname is None
            assert alias.name not in found, f"{alias.name} imported twice"
            found[alias.name] = str(node.module)
    return found


def test_all_lazy_table_and_type_checking_imports_agree() -> None:
    """Each public name is in __all__, in the lazy table and among the TYPE_CHECKING
    imports, from the same module in both; and it resolves to that module's object."""
    typed = _type_checking_imports()
    lazy: dict[str, str] = portsafe._LAZY
    exported = set(portsafe.__all__) - {"__version__"}
    assert len(portsafe.__all__) == len(set(portsafe.__all__))
    assert set(lazy) == exported
    assert set(typed) == exported
    assert {name: lazy[name] for name in typed} == typed
    for name, module in lazy.items():
        assert getattr(portsafe, name) is getattr(importlib.import_module(module), name)



def _public_exceptions_and_holder() -> list[str]:
    """Every class portsafe exports."""
    return [name for name in portsafe.__all__ if isinstance(getattr(portsafe, name), type)]


def test_public_exceptions_live_in_errors_under_their_public_name() -> None:
    """Every exception portsafe exports is defined in one module, ``_errors``, and every
    class it exports reads ``portsafe.<name>`` in reprs and tracebacks."""
    for name in _public_exceptions_and_holder():
        value = getattr(portsafe, name)
        assert (value.__module__, repr(value)) == ("portsafe", f"<class 'portsafe.{name}'>")
        if issubclass(value, BaseException):
            assert portsafe._LAZY[name] == "portsafe._errors", name


def test_public_classes_keep_their_doctests() -> None:
    """doctest's finder skips a class whose __module__ is another module's; each one is
    still found through its defining module's ``__test__``."""
    for name in _public_exceptions_and_holder():
        value = getattr(portsafe, name)
        if value.__doc__ and ">>>" in value.__doc__:
            defining = importlib.import_module(portsafe._LAZY[name])
            found = {test.name for test in doctest.DocTestFinder().find(defining)}
            assert f"{defining.__name__}.__test__.{name}" in found, name


# -- a bad PORTSAFE_AUTO is said once -----------------------------------------------------

BAD = "PORTSAFE_AUTO='maybe': not a boolean"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in hook_env(tmp_path, PORTSAFE_AUTO="maybe").items()
           if not key.startswith("PYTEST")}
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def a_test_file(tmp_path: Path) -> Path:
    (tmp_path / "test_it.py").write_text("def test_it():\n    pass\n")
    return tmp_path


def test_bad_value_said_once_by_a_plain_interpreter(tmp_path: Path) -> None:
    """Outside pytest the start-up hook says it, once, and auto mode stays off."""
    done = _run(tmp_path, "-c", "import portsafe; from portsafe._auto import switch as _auto;"
                "print(_auto.enabled())")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert (done.stdout + done.stderr).count(BAD) == 1, done.stderr


@pytest.mark.parametrize("how", [["-m", "pytest"], ["-X", "utf8", "-mpytest"]])
def test_bad_value_said_once_by_pytest(a_test_file: Path, how: list[str]) -> None:
    """Under pytest the plugin stops the run with the message; the hook stays quiet."""
    done = _run(a_test_file, *how, "-p", "no:cacheprovider", "test_it.py")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert (done.stdout + done.stderr).count(BAD) == 1, done.stdout + done.stderr


def test_bad_value_said_once_when_the_plugin_is_off(a_test_file: Path) -> None:
    """With portsafe's plugin disabled nobody else says it: the hook does, at exit."""
    done = _run(a_test_file, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:portsafe",
                "test_it.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (done.stdout + done.stderr).count(BAD) == 1, done.stdout + done.stderr


@pytest.mark.parametrize(("argv", "orig_argv", "expected"), [
    (["-m", "x"], ["python", "-m", "pytest", "x"], True),
    (["-m", "x"], ["python", "-mpytest", "x"], True),
    (["-m"], ["python", "-X", "importtime", "-Bm", "pytest"], True),
    (["-m"], ["python", "-W", "ignore", "-m", "py.test"], True),
    (["-m"], ["python", "-Wm", "-m", "unittest"], False),
    (["-m"], ["python", "-m", "pytest_cov"], False),
    (["/venv/bin/pytest", "-q"], ["python", "/venv/bin/pytest", "-q"], True),
    (["/usr/bin/pytest-3"], ["python3", "/usr/bin/pytest-3"], True),
    (["pytest.exe"], ["pytest.exe"], True),
    (["-c"], ["python", "-c", "import pytest"], False),
    (["pytest_helpers.py"], ["python", "pytest_helpers.py"], False),
    ([""], ["python"], False),
])
def test_started_as_pytest(monkeypatch: pytest.MonkeyPatch, argv: list[str],
                           orig_argv: list[str], expected: bool) -> None:
    """How the start-up hook tells a pytest run from the command line."""
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    assert _auto._started_as_pytest() is expected
