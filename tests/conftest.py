"""Shared test set-up."""

from __future__ import annotations

import importlib.util

import pytest

# Auto mode's modules, imported before any pytester snapshot of sys.modules: pytester
# drops the modules an inner run imports first, and a later run would then count nothing.
import portsafe._auto.harvest
import portsafe._auto.pickers
import portsafe._auto.sockets
import portsafe._auto.switch
import portsafe._pytest.auto  # noqa: F401
from portsafe._platform import NAMES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run each backend's own tests where that backend is in use: on Linux the names
    backend; the file backend on other platforms, and on Linux in ``nox -s files``
    (a private network namespace, through the test-only channel)."""
    skip_files = pytest.mark.skip(reason="lock-file backend: on Linux, `nox -s files` runs "
                                  "it in a private network namespace")
    skip_names = pytest.mark.skip(reason="abstract-name backend: Linux only")
    for item in items:
        if NAMES and item.get_closest_marker("files") is not None:
            item.add_marker(skip_files)
        elif not NAMES and item.get_closest_marker("names") is not None:
            item.add_marker(skip_names)


@pytest.fixture(autouse=True)
def quiet_pytest_asyncio(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytester runs have no ini of ours: silence pytest-asyncio's loop-scope warning."""
    if "pytester" not in request.fixturenames:
        return
    request.getfixturevalue("pytester")  # it clears PYTEST_ADDOPTS: set ours after
    if importlib.util.find_spec("pytest_asyncio") is not None:
        monkeypatch.setenv("PYTEST_ADDOPTS", "-o asyncio_default_fixture_loop_scope=function")


@pytest.fixture
def private_lock_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A lock directory of this test's own (``PORTSAFE_LOCK_DIR``), for tests that check
    a release by reserving the port again: in the shared one another run on the machine
    may take it first. Modules use it with ``pytest.mark.usefixtures``. Names (Linux)
    have no directory: there it does nothing (a private network namespace isolates)."""
    if NAMES:
        return
    monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(tmp_path_factory.mktemp("locks")))


@pytest.fixture
def no_reservations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reservations impossible in this process: every claim is refused, as a sandbox
    refuses names on Linux (``tests/children/seccomp.py`` does that for real to a
    subprocess) or as an unusable lock directory does elsewhere."""
    import errno

    from portsafe import LockDirError, LockUnavailableError
    from portsafe._locking import files as _locks

    error = LockUnavailableError if NAMES else LockDirError

    def refuse(*_: object) -> int:
        raise error(errno.EPERM, "nothing can be reserved here (simulated)")

    monkeypatch.setattr(type(_locks.table()), "try_claim", refuse)
