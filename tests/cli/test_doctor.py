"""``portsafe doctor``: each check on private directories, and the verb itself.

Nothing here touches the shared default lock directory: every check gets a directory
under ``tmp_path``. The names checks (Linux) bind only their probe, port 0's name; what
they count is counted in a private network namespace, where only the test's names are.
The verb's lock-file checks run on Linux in a private network namespace through the
test-only channel (``backend.SELFTEST``), as they run on macOS.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.support import CHILDREN
from tests.support import netns as _netns
from tests.support.nobody import as_nobody

from portsafe import _platform as backend
from portsafe._cli import doctor as _doctor
from portsafe._cli import doctor_common as _doctor_common
from portsafe._cli import doctor_lockdir as _doctor_lockdir
from portsafe._cli import doctor_locks as _doctor_locks
from portsafe._cli import doctor_names as _doctor_names
from portsafe._cli.checks import CheckResult
from portsafe._locking import holders, names
from portsafe._services import keeper_client as _keeper_client
from portsafe._services import portserver as _server

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX checks")
NOBODY = 65534
needs_root = pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0,
                                reason="needs root to make another user's directory")
needs_netns = pytest.mark.skipif(not _netns.available(),
                                 reason="needs a private network namespace (unshare --net)")


def in_files_backend(*command: str, env: dict[str, str] | None = None,
                     check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run *command* as macOS runs portsafe: the lock-file backend, in a private network
    namespace of its own (where the test-only channel is accepted)."""
    env = dict(os.environ if env is None else env, **{backend.SELFTEST: "1"})
    return subprocess.run([*_netns.PREFIX, *command], env=env, capture_output=True,
                          text=True, timeout=60, check=check)


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    """A private, healthy lock directory (0700, ours)."""
    path = tmp_path / "locks"
    path.mkdir(mode=0o700)
    return path


def _listen(address: str) -> Callable[[], None]:
    keep: list[socket.socket] = []

    def work() -> None:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(_server.unix_address(address))
        sock.listen()
        keep.append(sock)

    return work


class TestLockDirChecks:
    def test_setting_must_be_absolute(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A relative PORTSAFE_LOCK_DIR fails the setting check, naming the variable."""
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", "relative/locks")
        result = _doctor.check_setting()
        assert not result.ok
        assert "PORTSAFE_LOCK_DIR" in result.detail
        assert result.advice

    def test_path_kinds(self, lock_dir: Path, tmp_path: Path) -> None:
        """A directory is fine, a missing one too (created on use); a symlink or a file
        at its place is not."""
        assert _doctor.check_path(str(lock_dir)).ok
        assert _doctor.check_path(str(tmp_path / "missing")).ok
        link = tmp_path / "link"
        link.symlink_to(lock_dir)
        result = _doctor.check_path(str(link))
        assert not result.ok
        assert "symlink" in result.detail
        assert str(lock_dir) in result.advice
        plain = tmp_path / "plain"
        plain.write_text("")
        assert not _doctor.check_path(str(plain)).ok

    def test_trust_of_our_own_directory(self, lock_dir: Path) -> None:
        """A 0700 directory of ours, under root's or our own parents, is trusted."""
        result = _doctor.check_trust(str(lock_dir))
        assert result.ok, result.detail

    def test_world_writable_without_sticky_bit(self, lock_dir: Path) -> None:
        """Mode 0777 (no sticky bit) lets every user delete the lock files."""
        lock_dir.chmod(0o777)
        result = _doctor.check_trust(str(lock_dir))
        assert not result.ok
        assert "every user" in result.detail
        assert "sticky" in result.advice
        lock_dir.chmod(0o1777)
        assert _doctor.check_trust(str(lock_dir)).ok

    @needs_root
    def test_another_users_directory(self, lock_dir: Path) -> None:
        """A 0755 directory of uid 65534: its owner can remove or replace what is in it."""
        lock_dir.chmod(0o755)
        os.chown(lock_dir, NOBODY, NOBODY)
        result = _doctor.check_trust(str(lock_dir))
        assert not result.ok
        assert f"uid {NOBODY}" in result.detail

    @needs_root
    def test_another_users_parent(self, tmp_path: Path) -> None:
        """The trust check walks up: a parent owned by another user fails it too."""
        parent = tmp_path / "theirs"
        parent.mkdir(mode=0o755)
        os.chown(parent, NOBODY, NOBODY)
        (parent / "locks").mkdir(mode=0o700)
        result = _doctor.check_trust(str(parent / "locks"))
        assert not result.ok
        assert str(parent) in result.detail

    def test_lock_files(self, lock_dir: Path) -> None:
        """Plain 0666 files pass; a 0600 one (others cannot lock it) and a FIFO fail."""
        good = lock_dir / "ports-20224-20479"
        good.write_text("")
        good.chmod(0o666)
        (lock_dir / "unrelated.txt").write_text("")
        assert _doctor.check_files(str(lock_dir)).ok
        private = lock_dir / "ports-20480-20735"
        private.write_text("")
        private.chmod(0o600)
        os.mkfifo(lock_dir / "ports-20736-20991")
        result = _doctor.check_files(str(lock_dir))
        assert not result.ok
        assert "ports-20480-20735" in result.detail
        assert "ports-20736-20991" in result.detail

    def test_tmp_cleaner_rules(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An age-based systemd-tmpfiles rule covering the directory fails the check; an
        exclusion rule (x) for it passes; a rule without an age does not count."""
        rules = tmp_path / "tmpfiles.d"
        rules.mkdir()
        monkeypatch.setattr(_doctor_lockdir, "_TMPFILES_DIRS", (str(rules),))
        monkeypatch.setattr(_doctor_lockdir, "_CRON_CLEANERS", ())
        where = str(tmp_path / "scratch" / "locks")
        (rules / "tmp.conf").write_text(f"D {tmp_path}/scratch 1777 root root -\n")
        assert _doctor.check_tmp_cleaner(where).ok
        (rules / "tmp.conf").write_text(f"q {tmp_path}/scratch 1777 root root 10d\n")
        result = _doctor.check_tmp_cleaner(where)
        assert not result.ok
        assert "10d" in result.detail
        assert f"x {where}" in result.advice
        (rules / "portsafe.conf").write_text(f"x {where}\n")
        assert _doctor.check_tmp_cleaner(where).ok

    def test_cron_cleaner(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An installed tmpreaper/tmpwatch cron job is reported."""
        job = tmp_path / "tmpreaper"
        job.write_text("")
        monkeypatch.setattr(_doctor_lockdir, "_TMPFILES_DIRS", ())
        monkeypatch.setattr(_doctor_lockdir, "_CRON_CLEANERS", (str(job),))
        assert not _doctor.check_tmp_cleaner(str(tmp_path)).ok


class TestRecordLocks:
    def test_record_locks_work_here(self, lock_dir: Path) -> None:
        """On this machine's local file system the child's lock is seen, then gone; the
        probe file is removed afterwards."""
        before = set(os.listdir(lock_dir.parent))
        result = _doctor.check_record_locks(str(lock_dir))
        assert result.ok, result.detail
        assert set(os.listdir(lock_dir.parent)) == before
        assert not os.listdir(lock_dir)

    def test_locks_that_fail_are_reported(self, lock_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        """A file system refusing locks (ENOLCK, as some NFS set-ups do) fails the check
        with advice. Simulated: this machine has no such file system to mount."""
        real = _doctor_locks._lockf

        def refuse(fd: int, kind: int, start: int, *, query: bool = False) -> int | None:
            if not query:
                raise OSError(errno.ENOLCK, "No locks available")
            return real(fd, kind, start, query=query)

        monkeypatch.setattr(_doctor_locks, "_lockf", refuse)
        result = _doctor.check_record_locks(str(lock_dir))
        assert not result.ok
        assert "No locks available" in result.detail
        assert "local file system" in result.advice

    def test_locks_not_seen_by_others_are_reported(self, lock_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
        """Locks that other processes cannot see (local-only emulation) fail the check."""
        real = _doctor_locks._lockf

        def blind(fd: int, kind: int, start: int, *, query: bool = False) -> int | None:
            return None if query else real(fd, kind, start)

        monkeypatch.setattr(_doctor_locks, "_lockf", blind)
        result = _doctor.check_record_locks(str(lock_dir))
        assert not result.ok
        assert "not seen" in result.detail

    def test_a_file_system_without_record_locks(self) -> None:
        """The real thing needs a file system whose locks fail (NFS without lockd, some
        FUSE mounts): none can be mounted here."""
        pytest.skip("no file system without working record locks can be mounted here "
                    "(the failure paths are covered by the simulated tests above)")


SECCOMP = str(CHILDREN / "seccomp.py")

# Binds the names of the ports in argv, says "up", holds them until stdin closes.
BINDER = """
import socket, sys
from portsafe._locking import names
keep = []
for port in map(int, sys.argv[1:]):
    keep.append(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    keep[-1].bind(names.name(port))
print("up", flush=True)
sys.stdin.read()
"""

# In a private network namespace: children bind names (two by root, one by uid 65534
# where it can), then check_names_held() and `portsafe doctor` count them; prints what
# they say and what /proc/net/unix lists, as JSON. argv[1]: BINDER.
COUNT_IN_A_NAMESPACE = r"""
import dataclasses, json, os, shutil, subprocess, sys
binder = sys.argv[1]
nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
other = os.geteuid() == 0 and shutil.which("setpriv") is not None and subprocess.run(
    [*nobody, sys.executable, "-c", "pass"], capture_output=True).returncode == 0
commands = [[sys.executable, "-c", binder, "20001", "20002"]]
if other:
    commands.append([*nobody, sys.executable, "-c", binder, "20003"])
children = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd="/") for command in commands]
ready = [child.stdout.readline().strip() == "up" for child in children]
from portsafe._cli.doctor_names import check_names_held
result = check_names_held()
verb = subprocess.run([sys.executable, "-m", "portsafe", "doctor"], capture_output=True,
                      text=True)
with open("/proc/net/unix", "rb") as table:
    rows = [line.split() for line in table.read().splitlines()[1:]]
listed = sorted(row[7].decode() for row in rows
                if len(row) == 8 and row[4] == b"0002" and row[7].startswith(b"@portsafe1:"))
print(json.dumps({"ready": ready, "other": other, "result": dataclasses.asdict(result),
                  "verb": verb.stdout, "listed": listed}))
for child in children:
    child.stdin.close()
    child.wait()
"""


@pytest.mark.names
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names are Linux's")
class TestNames:
    """The names backend's checks: names bind and exclude here, and can be read."""

    def test_names_bind_here(self) -> None:
        """Names bind and exclude on this machine; the probe is released afterwards
        (this process can bind it again)."""
        result = _doctor_names.check_names()
        assert result.ok, result
        assert result.name == "names.bind"
        probe = _doctor_names._probe()  # retries while another doctor holds it
        assert isinstance(probe, socket.socket)
        probe.close()

    @pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"),
                        reason="the seccomp filter is written for x86_64 and aarch64")
    def test_denied_by_seccomp(self) -> None:
        """Under a real seccomp filter refusing unix sockets (EPERM), names.bind fails
        and says what to do; doctor exits 1."""
        done = subprocess.run([sys.executable, SECCOMP, sys.executable, "-m", "portsafe",
                               "doctor", "--json"], capture_output=True,
                              text=True, timeout=60, check=False)
        if done.returncode == 77:
            pytest.skip("seccomp filters cannot be installed here")
        assert done.returncode == 1, done.stderr
        checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
        denied = checks["names.bind"]
        assert not denied["ok"]
        assert "Operation not permitted" in denied["detail"]
        assert "seccomp" in denied["advice"]
        assert "does not fall back to lock files" in denied["advice"]
        assert "@portsafe1:*" in denied["advice"]

    def test_probe_held_by_another_process(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A process keeping the probe name bound through every try is named."""
        monkeypatch.setattr(_doctor_names, "_PROBE_TRIES", 2)
        monkeypatch.setattr(_doctor_names, "_PROBE_PAUSE", 0.01)
        child = subprocess.Popen([sys.executable, "-c", BINDER, "0"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "up":
                pytest.skip("another doctor holds the probe name right now")
            result = _doctor_names.check_names()
        finally:
            child.communicate(timeout=60)
        assert not result.ok
        assert f"stays bound by pid {child.pid}" in result.detail
        assert result.advice

    def test_names_that_do_not_exclude(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A second bind of a bound name that succeeds (a sandbox emulating sockets) fails
        the check. Simulated: the second bind gets another name, as no real kernel lets
        two sockets of one type share one."""
        given = iter([names.name(0), b"\0portsafe-doctor-test-" + str(os.getpid()).encode()])
        monkeypatch.setattr(_doctor_names.names, "name", lambda port: next(given))
        result = _doctor_names.check_names()
        assert not result.ok
        assert "do not exclude" in result.detail

    @needs_netns
    def test_counts_in_a_private_namespace(self) -> None:
        """In a namespace of its own, with 2 names held by a root child and 1 by a child
        of uid 65534: names.held counts 3 ports and 2 processes, names both users, and
        agrees with /proc/net/unix; `portsafe doctor` prints it."""
        done = subprocess.run([*_netns.PREFIX, sys.executable, "-c", COUNT_IN_A_NAMESPACE,
                               BINDER], capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout)
        assert all(info["ready"])
        count = 3 if info["other"] else 2
        ports = (20001, 20002, 20003)[:count]
        assert info["listed"] == sorted(  # what the kernel lists, read by the test
            names.SHOWN_PREFIX + names.name(port)[-3:].decode() for port in ports)
        result = info["result"]
        assert result["ok"], result
        assert result["detail"].startswith(
            f"{count} ports held by names in this network namespace, by {count - 1} "
            f"process{'es' * (count > 2)} portsafe can see")
        assert "uid 0 (root)" in result["detail"]
        if info["other"]:
            assert "uid 65534" in result["detail"]
        assert f"ok    names.held: {count} ports held" in info["verb"]

    def test_without_netlink(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Where netlink is refused, names.held says owners are unknown. (Simulated: a
        protocol the kernel does not have.)"""
        monkeypatch.setattr(holders, "_NETLINK_SOCK_DIAG", 99)
        result = _doctor_names.check_names_held()
        assert result.ok, result
        assert "netlink sock_diag is refused" in result.detail

    def test_holders_cannot_be_read(self, monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Path) -> None:
        """Without /proc and netlink, the probe does not show up: names.held fails, and
        says what list and who need. (Simulated: an empty directory as /proc.)"""
        monkeypatch.setattr(holders, "_NETLINK_SOCK_DIAG", 99)
        monkeypatch.setattr(holders, "_PROC", str(tmp_path))
        result = _doctor_names.check_names_held()
        assert not result.ok
        assert "/proc" in result.advice

    def test_the_verb_checks_names_not_a_lock_directory(self) -> None:
        """`portsafe doctor` on Linux: the names checks first, no lock-directory check."""
        env = dict(os.environ)
        env.pop("PORTSERVER_ADDRESS", None)
        done = subprocess.run([sys.executable, "-m", "portsafe", "doctor", "--json"],
                              env=env, capture_output=True, text=True, timeout=60,
                              check=False)
        info = json.loads(done.stdout)
        names_run = [check["name"] for check in info["checks"]]
        assert names_run[:2] == ["names.bind", "names.held"]
        assert not [name for name in names_run if name.startswith("lock_dir.")]
        assert info["checks"][0]["ok"], info["checks"][0]
        assert info["checks"][1]["ok"], info["checks"][1]
        assert info["ok"] is (done.returncode == 0)


class TestOtherChecks:
    def test_ranges_checks(self) -> None:
        """The ephemeral range, reserved ports and candidates are described."""
        for check in (_doctor_common.check_ephemeral, _doctor_common.check_reserved,
                      _doctor_common.check_candidates):
            result = check(None)
            assert isinstance(result, CheckResult)
            assert result.detail
        if sys.platform.startswith("linux"):
            detail = _doctor_common.check_ephemeral().detail
            assert "/proc/sys/net/ipv4/ip_local_port_range" in detail

    def test_too_few_candidates(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A PORTSAFE_RANGE of 10 ports is reported as too few."""
        monkeypatch.setenv("PORTSAFE_RANGE", "20000-20009")
        result = _doctor_common.check_candidates()
        assert not result.ok
        assert "PORTSAFE_RANGE" in result.advice

    def test_keeper_idle_setting(self, monkeypatch: pytest.MonkeyPatch, lock_dir) -> None:
        """A bad PORTSAFE_KEEPER_IDLE fails the keeper check, naming it."""
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(lock_dir))
        monkeypatch.setenv("PORTSAFE_KEEPER_IDLE", "garbage")
        result = _doctor_common.check_keeper()
        assert not result.ok
        assert "PORTSAFE_KEEPER_IDLE" in result.detail

    @needs_root
    @pytest.mark.skipif(not backend.ABSTRACT, reason="abstract names")
    def test_keeper_squatter(self, monkeypatch: pytest.MonkeyPatch, lock_dir) -> None:
        """Another user listening on one of our keeper names is reported."""
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(lock_dir))
        address = _keeper_client.keeper_addresses()[3]
        with as_nobody(_listen(address)):
            result = _doctor_common.check_keeper()
        assert not result.ok
        assert f"uid {NOBODY}" in result.detail
        assert address in result.detail

    @pytest.mark.skipif(not backend.ABSTRACT, reason="abstract names")
    def test_port_server(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """PORTSERVER_ADDRESS: unset is fine, nobody answering is not, ours is."""
        monkeypatch.delenv("PORTSERVER_ADDRESS", raising=False)
        assert _doctor_common.check_port_server().ok
        address = f"@portsafe-doctor-test-{os.getpid()}"
        monkeypatch.setenv("PORTSERVER_ADDRESS", address)
        assert not _doctor_common.check_port_server().ok
        with _server.bind_unix(address):
            assert _doctor_common.check_port_server().ok

    @needs_root
    @pytest.mark.skipif(not backend.ABSTRACT, reason="abstract names")
    def test_port_server_of_another_user(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A port server run by uid 65534 could hand out ports others hold: reported."""
        address = f"@portsafe-doctor-test-nobody-{os.getpid()}"
        monkeypatch.setenv("PORTSERVER_ADDRESS", address)
        with as_nobody(_listen(address)):
            result = _doctor_common.check_port_server()
        assert not result.ok
        assert f"uid {NOBODY}" in result.detail

    def test_a_crashing_check_is_reported(self, monkeypatch: pytest.MonkeyPatch,
                                          lock_dir: Path) -> None:
        """One broken check is a failed result; the others still run."""
        def broken(path: str | None = None) -> CheckResult:
            raise RuntimeError("boom")

        monkeypatch.setattr(_doctor, "CHECKS", (broken, _doctor.check_path))
        results = _doctor.run_checks(str(lock_dir))
        assert [r.ok for r in results] == [False, True]
        assert "boom" in results[0].detail


@needs_netns
class TestVerb:
    """The verb where reservations are lock files (macOS; here in a private namespace)."""

    def _doctor(self, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        return in_files_backend(sys.executable, "-m", "portsafe", "doctor", *args, env=env)

    def test_healthy_private_directory(self, lock_dir: Path) -> None:
        """A healthy private set-up: exit 0 ("all is well"), --json with every check."""
        env = dict(os.environ, PORTSAFE_LOCK_DIR=str(lock_dir))
        env.pop("PORTSERVER_ADDRESS", None)
        done = self._doctor(env)
        if done.returncode != 0:  # the machine itself may have a real problem
            assert "FAIL" in done.stdout
            assert "lock_dir." not in "".join(
                line for line in done.stdout.splitlines() if line.startswith("FAIL"))
        else:
            assert "all is well" in done.stdout
        info = json.loads(self._doctor(env, "--json").stdout)
        checks = [check["name"] for check in info["checks"]]
        assert checks[:7] == ["lock_dir.setting", "lock_dir.path", "lock_dir.trust",
                             "lock_dir.format", "lock_dir.files", "lock_dir.tmp_cleaner",
                             "lock_dir.record_locks"]
        assert info["ok"] is (done.returncode == 0)

    def test_a_problem_exits_1_with_advice(self, lock_dir: Path) -> None:
        """A world-writable, non-sticky lock directory: exit 1, FAIL and what to do."""
        lock_dir.chmod(0o777)
        env = dict(os.environ, PORTSAFE_LOCK_DIR=str(lock_dir))
        done = self._doctor(env)
        assert done.returncode == 1
        assert "FAIL  lock_dir.trust" in done.stdout
        assert "->" in done.stdout
        info = json.loads(self._doctor(env, "--json").stdout)
        assert info["ok"] is False
        trust = next(c for c in info["checks"] if c["name"] == "lock_dir.trust")
        assert trust["advice"]


def _made_by_a_child(lock_dir: Path) -> None:
    """Complete *lock_dir* in format 1 the way every user of the lock-file backend does:
    by reserving in it."""
    if not _netns.available():
        pytest.skip("needs a private network namespace (unshare --net) to use lock files")
    code = ("import portsafe\nwith portsafe.reserve_port():\n    pass\n")
    env = dict(os.environ, PORTSAFE_LOCK_DIR=str(lock_dir))
    in_files_backend(sys.executable, "-c", code, env=env, check=True)


class TestFormat:
    def test_not_made_yet_is_fine(self, tmp_path: Path) -> None:
        """A directory that does not exist yet is made complete by the first reservation."""
        result = _doctor_lockdir.check_format(str(tmp_path / "absent"))
        assert result.ok, result

    def test_a_used_directory_has_format_and_generation(self, lock_dir: Path) -> None:
        """After a reservation, the marker is there: format 1, a generation."""
        _made_by_a_child(lock_dir)
        result = _doctor_lockdir.check_format(str(lock_dir))
        assert result.ok, result
        assert "format 1, generation" in result.detail

    def test_a_newer_format_is_a_problem(self, lock_dir: Path) -> None:
        """A marker of a format this version cannot read: not ok, with what to do."""
        (lock_dir / "portsafe-format").write_text(
            "portsafe lock directory\nformat 99\ngeneration 0011223344556677\n")
        result = _doctor_lockdir.check_format(str(lock_dir))
        assert not result.ok
        assert "format 99" in result.detail
        assert result.advice

    def test_doctor_runs_the_format_check(self, lock_dir: Path) -> None:
        """The lock-file checks include lock_dir.format; they are the ones run where
        reservations are lock files."""
        assert _doctor.check_format in _doctor.FILE_CHECKS
        assert _doctor.check_format not in _doctor.NAME_CHECKS
        if not backend.NAMES:
            run = [r.name for r in _doctor.run_checks(str(lock_dir))]
            assert "lock_dir.format" in run
