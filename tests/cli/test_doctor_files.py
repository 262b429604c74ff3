"""``portsafe doctor``'s lock-directory checks against what portsafe refuses or cannot trust.

The record-lock check must prove that a conflicting lock is *refused* (a second process,
through its own open of the file, asks for a byte the first holds), not only that
``F_GETLK`` reports it: a file system whose lock calls are accepted but not enforced
would let two processes reserve one port. No such file system can be mounted here, so
the lock call is replaced by such stubs. The checks call ``_doctor_lockdir`` and
``_doctor_locks`` on a path, so they run whichever backend reservations use.
"""

from __future__ import annotations

import fcntl
import os
import sys
from typing import TYPE_CHECKING

import pytest

from portsafe._cli import doctor_lockdir as _doctor_lockdir
from portsafe._cli import doctor_locks as _doctor_locks
from portsafe._locking import fileformat as _lockformat
from portsafe._locking import recordlock as _recordlock

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    Lockf = Callable[..., int | None]  # _doctor_locks._lockf's shape

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX checks")
needs_root = pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0,
                                reason="needs root to own a directory others may write")


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    """A private, healthy lock directory (0700, ours)."""
    path = tmp_path / "locks"
    path.mkdir(mode=0o700)
    return path


def accepted_not_held(real: Lockf) -> Lockf:
    """Lock calls that succeed and do nothing (a FUSE file system's stubs)."""
    def lockf(fd: int, kind: int, start: int, *, query: bool = False) -> int | None:
        return real(fd, kind, start, query=True) if query else None
    return lockf


def accepted_shared(real: Lockf) -> Lockf:
    """Lock calls that take every lock as a shared one: held, reported to others with
    the holder's pid, dropped with the process, but never refusing another."""
    def lockf(fd: int, kind: int, start: int, *, query: bool = False) -> int | None:
        if query:
            return real(fd, kind, start, query=True)
        return real(fd, fcntl.F_RDLCK if kind == fcntl.F_WRLCK else kind, start)
    return lockf


class TestRecordLocks:
    def test_a_conflicting_lock_is_refused_here(self, lock_dir: Path) -> None:
        """On this machine's local file system the check passes, saying it proved that
        another process's lock call on a held byte is refused; no probe file is left."""
        before = set(os.listdir(lock_dir.parent))
        result = _doctor_locks.check_record_locks(str(lock_dir))
        assert result.ok, result.detail
        assert "refuses another process's lock" in result.detail
        assert set(os.listdir(lock_dir.parent)) == before

    @pytest.mark.parametrize("stub", [accepted_not_held, accepted_shared],
                             ids=["accepted, nothing held", "accepted, never exclusive"])
    def test_stub_locks_are_unusable(self, lock_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                     stub: Callable[[Lockf], Lockf]) -> None:
        """Lock calls that are accepted but not enforced make the lock directory's file
        system unusable, with advice, however they answer F_GETLK (the second stub's
        locks are even reported with the holder's pid and dropped with it)."""
        monkeypatch.setattr(_doctor_locks, "_lockf", stub(_doctor_locks._lockf))
        result = _doctor_locks.check_record_locks(str(lock_dir))
        assert not result.ok
        assert "not enforced" in result.detail
        assert "local file system" in result.advice

    def test_the_check_uses_two_open_files(self, lock_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
        """The child locks through its own open of the probe file, and the parent asks
        for the same byte through another: two open file descriptions, two processes,
        a set call each."""
        calls: list[tuple[int, int, int, bool]] = []
        real = _doctor_locks._lockf
        read_end, write_end = os.pipe()

        def spy(fd: int, kind: int, start: int, *, query: bool = False) -> int | None:
            info = os.fstat(fd)
            os.write(write_end, f"{os.getpid()} {info.st_ino} {kind} {int(query)}\n".encode())
            return real(fd, kind, start, query=query)

        monkeypatch.setattr(_doctor_locks, "_lockf", spy)
        try:
            assert _doctor_locks.check_record_locks(str(lock_dir)).ok
        finally:
            os.close(write_end)
            with os.fdopen(read_end) as lines:
                for line in lines:
                    pid, ino, kind, query = map(int, line.split())
                    calls.append((pid, ino, kind, bool(query)))
        setters = [(pid, kind) for pid, _, kind, query in calls
                   if not query and kind == fcntl.F_WRLCK]
        assert len({pid for pid, _ in setters}) == 2, calls  # a child's and this process's
        assert len({ino for _, ino, _, _ in calls}) == 1  # one file


class TestRefusedDirectories:
    @pytest.mark.parametrize("path", ["/", "/tmp", "/usr", "/var/tmp", "//etc"])
    def test_system_directories(self, path: str) -> None:
        """``/`` and the system's own directories fail the path check with what to use
        instead, as portsafe refuses them."""
        result = _doctor_lockdir.check_path(path)
        assert not result.ok
        assert "system's own directories" in result.detail
        assert "PORTSAFE_LOCK_DIR" in result.advice

    def test_a_directory_of_its_own_passes(self, lock_dir: Path) -> None:
        assert _doctor_lockdir.check_path(str(lock_dir)).ok

    @needs_root
    def test_world_writable_without_sticky_bit(self, lock_dir: Path) -> None:
        """A root-owned directory every user may write, not sticky: the trust check
        says that portsafe refuses it."""
        lock_dir.chmod(0o777)
        result = _doctor_lockdir.check_trust(str(lock_dir))
        assert not result.ok
        assert "portsafe refuses it" in result.detail
        assert "chmod 1777" in result.advice


@pytest.fixture
def held_marker(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A complete lock directory and the pid of a process that uses it."""
    import subprocess

    locks = tmp_path / "locks"
    script = ("import sys\nfrom portsafe._locking import lockdir as _lockdir\n"
              "lockdir = _lockdir.open_lockdir(sys.argv[1], explicit=True)\n"
              "print('open', flush=True)\nsys.stdin.read()\n")
    user = subprocess.Popen([sys.executable, "-c", script, str(locks)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert user.stdout is not None
    assert user.stdout.readline().strip() == "open"
    try:
        yield locks, user.pid
    finally:
        assert user.stdin is not None
        user.stdin.close()
        user.wait(timeout=30)
        user.stdout.close()


class TestFormat:
    def test_a_directory_in_use_is_fine(self, held_marker: tuple[Path, int]) -> None:
        """A complete directory that another process has open: its format and generation."""
        locks, _ = held_marker
        result = _doctor_lockdir.check_format(str(locks))
        assert result.ok, result
        assert f"format {_lockformat.FORMAT}, generation" in result.detail


def test_lock_calls_of_the_library_and_the_doctor_agree(lock_dir: Path) -> None:
    """The doctor's lock call refuses what the library's lock call holds (the same kind
    of lock: POSIX record locks on one byte), between two processes."""
    probe = lock_dir / "probe"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert _recordlock.try_lock(fd, 9)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            own = os.open(probe, os.O_RDWR)
            try:
                _doctor_locks._lockf(own, fcntl.F_WRLCK, 9)
            except OSError as exc:
                os._exit(0 if exc.errno in _recordlock.BUSY else 2)
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
