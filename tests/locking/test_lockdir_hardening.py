"""The guarantee survives hostile users, deletions, tmp cleaners, floods and old versions.

Each test reproduces one finding of the adversarial review (issue 10) with real
processes, real other users (uid 65534) and a private lock directory under ``tmp_path``
or a private 1777 directory; none touches the shared default directory.

Tests marked ``files`` reserve through the lock-file backend (macOS, the BSDs; on Linux
``nox -s files`` runs them in a private network namespace). The others call
``_lockdir`` itself, so they run on every POSIX system.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support import CHILDREN
from tests.support.pure import count_locks

import portsafe
from portsafe._locking import fileformat as _lockformat
from portsafe._locking import files as _locks
from portsafe._locking import lockdir as _lockdir
from portsafe._locking import systemdirs as _systemdirs

AGENT = str(CHILDREN / "agent.py")
NOBODY = 65534
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX record locks")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
needs_root = pytest.mark.skipif(sys.platform == "win32" or os.getuid() != 0,
                                reason="needs root to run a child as uid 65534")
files = pytest.mark.files

SHARD = 110  # ports 28160-28415: a shard the tests below use (no other test uses it)
LEGACY = SHARD_START = SHARD << 8
SHARD_PORTS = range(max(SHARD << 8, 1024), (SHARD + 1) << 8)


class Agent:
    """A child process running portsafe calls on command (tests/children/agent.py)."""

    def __init__(self, lock_dir: Path | str, uid: int | None = None) -> None:
        env = dict(os.environ, PORTSAFE_LOCK_DIR=str(lock_dir))
        args = [sys.executable, AGENT] + ([] if uid is None else [str(uid)])
        self.proc = subprocess.Popen(args, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd="/")
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, **command: object) -> dict:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "agent died"
        return json.loads(line)

    def reserve(self, **kwargs: object) -> dict:
        return self.ask(op="reserve", kwargs=kwargs)

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.proc.wait(timeout=30)


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    """Agents made by a test, closed after it."""
    made: list[Agent] = []
    yield made
    for agent in made:
        agent.close()


@pytest.fixture
def shared_parent() -> Iterator[Path]:
    """A 1777 directory (like /tmp) in which uid 65534 may make the lock directory."""
    parent = Path(tempfile.mkdtemp(prefix="portsafe-hardening-"))
    parent.chmod(0o1777)
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


def as_nobody(code: str, *, check: bool = True, imports: str = "",
              **env: str) -> subprocess.CompletedProcess[str]:
    """Run *code* as uid 65534 (file operations only: no interpreter files are needed
    after the switch, so what it uses is imported before: *imports*)."""
    script = f"import os\n{imports}\nos.setgid({NOBODY})\nos.setuid({NOBODY})\n{code}"
    return subprocess.run([sys.executable, "-c", script], env=dict(os.environ, **env),
                          capture_output=True, text=True, check=check, cwd="/")


def nobody_completes(locks: Path) -> None:
    """uid 65534 makes the lock directory *locks* complete (it then owns its marker and
    lock files, and the directory too if it made it)."""
    as_nobody(f"_lockdir.open_lockdir({str(locks)!r}, explicit=True).close()",
              imports=("import fcntl, socket\nfrom portsafe import _settings; "
                       "from portsafe._locking import lockdir as _lockdir"))


def tamper(locks: Path, port: int, *, shard: bool, marker: str = "replaced",
           mtime_back: bool = False) -> None:
    """As uid 65534 (the directory's owner, or its files'): replace the lock file of
    *port* (if *shard*), then rewrite the format marker with the same bytes, so the same
    generation (*marker*: "replaced" by a new file, or rewritten "in place"), and with
    *mtime_back* set the directory's mtime back to what it was."""
    as_nobody(f"""
locks = {str(locks)!r}
before = os.stat(locks)
if {shard!r}:
    name = os.path.join(locks, {_locks.shard_name(port >> 8)!r})
    os.unlink(name)
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    os.fchmod(fd, 0o666)
    os.close(fd)
marker = os.path.join(locks, {_lockformat.MARKER!r})
with open(marker, "rb") as old:
    data = old.read()
if {marker == "replaced"!r}:
    os.unlink(marker)
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
else:
    fd = os.open(marker, os.O_WRONLY | os.O_TRUNC)
os.write(fd, data)
os.close(fd)
if {mtime_back!r}:
    os.utime(locks, ns=(before.st_atime_ns, before.st_mtime_ns))
""")


def path_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths this process's lock table checks by ``stat`` from now on, as they come."""
    dirs = _locks.table()._dirs
    calls: list[str] = []
    real = dirs._last_look

    def look(path: str) -> os.stat_result:
        calls.append(path)
        return real(path)  # type: ignore[operator, no-any-return]

    monkeypatch.setattr(dirs, "_last_look", look)
    return calls


def fill(held: list[portsafe.Reservation], ports: list[int], most: int) -> None:
    """Reserve from *ports* into *held*, at most *most* times (NoFreePortError ends it)."""
    for _ in range(most):
        held.append(portsafe.reserve_port(ports=ports))  # noqa: PERF401 - until it raises


def shard_file(directory: Path, port: int) -> Path:
    return directory / _locks.shard_name(port >> 8)


@files
@posix_only
class TestNoWriteOutsideTheDirectory:
    """Item 1: a root process never creates or opens files where another user points it."""

    @needs_root
    def test_symlink_swap_after_first_use(self, shared_parent, monkeypatch, agents):
        """uid 65534 owns the directory and swaps it for a symlink after root used it:
        root's next reservation raises and makes nothing in the link's target."""
        locks, target = shared_parent / "locks", shared_parent / "target"
        agents.append(nobody := Agent(locks, uid=NOBODY))  # 65534 makes the directory
        assert "port" in nobody.reserve()
        assert locks.stat().st_uid == NOBODY
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(locks))
        portsafe.reserve_port(ports=range(SHARD_START, SHARD_START + 10)).release()  # first use
        as_nobody(f"os.rename({str(locks)!r}, {str(locks) + '.old'!r})\n"
                  f"os.mkdir({str(target)!r}, 0o777)\nos.chmod({str(target)!r}, 0o777)\n"
                  f"os.symlink({str(target)!r}, {str(locks)!r})")
        with pytest.raises(portsafe.LockDirError, match="symbolic link owned by uid 65534"):
            portsafe.reserve_port(ports=range(SHARD_START + 768, SHARD_START + 778))  # not opened
        with pytest.raises(portsafe.LockDirError):
            _locks.holders()
        fresh = subprocess.run([sys.executable, "-c", "import portsafe; portsafe.reserve_port()"],
                               env=dict(os.environ, PORTSAFE_LOCK_DIR=str(locks)),
                               capture_output=True, text=True, check=False)
        assert fresh.returncode != 0
        assert "LockDirError" in fresh.stderr
        assert os.listdir(target) == []

    @needs_root
    def test_swap_under_held_ports_is_reported(self, shared_parent, monkeypatch, agents):
        """A process holding ports in a directory that is swapped learns of it at its
        next call: LockDirError naming the ports it can no longer vouch for."""
        locks = shared_parent / "locks"
        agents.append(nobody := Agent(locks, uid=NOBODY))
        assert "port" in nobody.reserve()
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(locks))
        held = portsafe.reserve_port()
        try:
            as_nobody(f"os.rename({str(locks)!r}, {str(locks) + '.old'!r})\n"
                      f"os.mkdir({str(locks)!r})")
            with pytest.raises(portsafe.LockDirError, match=f"ports {held.port}"):
                portsafe.reserve_port()
        finally:
            held.release()
        with pytest.raises(portsafe.LockDirError, match="not sticky"):
            portsafe.reserve_port()  # the new one is 65534's and not sticky: refused

    @needs_root
    def test_world_writable_directory_without_sticky_bit(self, shared_parent, monkeypatch):
        """A root-owned directory that every user may write, without the sticky bit: uid
        65534 can replace root's files in it (shown first), so portsafe refuses it, says
        what to do and makes nothing there; made sticky, it is used, and 65534 can no
        longer replace the lock files."""
        locks = shared_parent / "locks"
        locks.mkdir()
        locks.chmod(0o777)
        victim = locks / "roots-file"
        victim.write_text("root's")
        as_nobody(f"os.rename({str(victim)!r}, {str(victim) + '.gone'!r})\n"
                  f"with open({str(victim)!r}, 'w') as file:\n    file.write('not root')")
        assert victim.stat().st_uid == NOBODY, "the premise: any user replaces files here"
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(locks))
        with pytest.raises(portsafe.LockDirError, match=r"mode 777.*not sticky.*chmod 1777"):
            portsafe.reserve_port()
        assert sorted(os.listdir(locks)) == ["roots-file", "roots-file.gone"]
        locks.chmod(0o1777)
        with portsafe.reserve_port(ports=SHARD_PORTS) as held:
            name = str(shard_file(locks, held.port))
            refused = as_nobody(f"os.rename({name!r}, {name + '.gone'!r})", check=False)
            assert refused.returncode != 0
            assert "PermissionError" in refused.stderr

    def test_proc_is_refused_with_a_clear_error(self, monkeypatch):
        """PORTSAFE_LOCK_DIR=/proc gives LockDirError, not a raw OSError."""
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", "/proc")
        with pytest.raises(portsafe.LockDirError, match="PORTSAFE_LOCK_DIR"):
            portsafe.reserve_port()

    @needs_root
    def test_foreign_private_directory_is_refused(self, tmp_path, monkeypatch):
        """Another user's 0755 directory gives LockDirError saying why and what to do."""
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o755)
        os.chown(foreign, NOBODY, NOBODY)
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(foreign))
        with pytest.raises(portsafe.LockDirError, match="uid 65534 with mode 755"):
            portsafe.reserve_port()
        assert os.listdir(foreign) == []

    def test_regular_file_as_directory(self, tmp_path, monkeypatch):
        """A plain file where the directory should be gives LockDirError."""
        (tmp_path / "file").write_text("")
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(tmp_path / "file"))
        with pytest.raises(portsafe.LockDirError, match="not a directory"):
            portsafe.reserve_port()


@files
@posix_only
class TestDeletion:
    """Item 2: deleting lock state never hands a held port out again silently."""

    def test_rm_of_a_shard_file(self, tmp_path, agents):
        """After `rm` of the file holding a port, nobody else gets that port, and its
        holder is told at its next call."""
        locks = tmp_path / "locks"
        agents.append(holder := Agent(locks))
        port = holder.reserve(ports=[SHARD_PORTS.start, SHARD_PORTS.stop])["port"]
        shard_file(locks, port).unlink()
        agents.append(other := Agent(locks))
        answer = other.reserve(ports=[port, port + 1])
        assert "port" not in answer, "a held port was handed out again"
        assert answer["error"] == "LockDirError"
        assert _locks.shard_name(port >> 8) in answer["message"]
        told = holder.reserve()
        assert told["error"] == "LockDirError"
        assert str(port) in told["message"]

    def test_shard_file_made_again_is_not_trusted(self, tmp_path, agents):
        """A lock file deleted and made again (as a 0.1.0 process would) under a holder
        is newer than the marker: skipped, so the held port is not handed out."""
        locks = tmp_path / "locks"
        agents.append(holder := Agent(locks))
        port = holder.reserve(ports=[SHARD_PORTS.start, SHARD_PORTS.stop])["port"]
        path = shard_file(locks, port)
        path.unlink()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        os.fchmod(fd, 0o666)
        os.close(fd)
        agents.append(other := Agent(locks))
        answer = other.reserve(ports=[port, port + 1])
        assert "port" not in answer, "a held port was handed out again"
        assert "after the directory was completed" in answer["message"]

    def test_rm_rf_of_the_directory(self, tmp_path, agents):
        """After `rm -rf` of the directory, the holder is told at its next call; it
        reserves again once it holds nothing there (docs/design.md, "Threat model": a
        new process cannot tell)."""
        locks = tmp_path / "locks"
        agents.append(holder := Agent(locks))
        port = holder.reserve(ports=[SHARD_PORTS.start, SHARD_PORTS.stop])["port"]
        shutil.rmtree(locks)
        assert holder.reserve()["error"] == "LockDirError"  # told at its next call
        holder.ask(op="release", port=port)
        assert "port" in holder.reserve()  # holding nothing: it moves to the new directory
        agents.remove(holder)
        holder.close()
        agents.append(later := Agent(locks))
        assert "port" in later.reserve(ports=[port, port + 1])

    def test_rm_rf_while_holding_nothing_is_transparent(self, tmp_path, monkeypatch):
        """A process that holds nothing in a deleted directory just uses the new one."""
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(tmp_path / "locks"))
        portsafe.reserve_port().release()
        shutil.rmtree(tmp_path / "locks")
        with portsafe.reserve_port() as again:
            assert (again.port, os.getpid()) in _locks.holders()
        assert (tmp_path / "locks" / _lockformat.MARKER).exists()


@files
@needs_root
class TestReplacedMarker:
    """A lock file or the format marker replaced under a live holder, by the directory's
    owner (uid 65534 here), with the marker's generation kept: the holder is told at its
    next call."""

    def test_marker_replaced_under_a_holder(self, shared_parent, agents):
        """The owner replaces the marker with an identical one (same generation): root's
        holder raises at its next call, naming its port; once it releases it, it opens
        the directory afresh and reserves again."""
        locks = shared_parent / "locks"
        nobody_completes(locks)
        agents.append(holder := Agent(locks))
        port = holder.reserve(ports=[SHARD_PORTS.start, SHARD_PORTS.stop])["port"]
        tamper(locks, port, shard=False)
        told = holder.reserve()
        assert told.get("error") == "LockDirError", told
        assert "format marker" in told["message"]
        assert str(port) in told["message"]
        holder.ask(op="release", port=port)
        assert "port" in holder.reserve()

    def test_mtime_set_back_after_a_replacement(self, shared_parent, agents):
        """The owner replaces the holder's lock file and the marker (same generation),
        then sets the directory's mtime back with utime: the ctime, which nobody but
        root can set, still tells the holder at its next call."""
        locks = shared_parent / "locks"
        nobody_completes(locks)
        agents.append(holder := Agent(locks))
        port = holder.reserve(ports=[SHARD_PORTS.start, SHARD_PORTS.stop])["port"]
        mtime = locks.stat().st_mtime_ns
        tamper(locks, port, shard=True, mtime_back=True)
        assert locks.stat().st_mtime_ns == mtime, "the premise: the mtime looks unchanged"
        told = holder.reserve()
        assert told.get("error") == "LockDirError", told
        assert str(port) in told["message"]

    def test_a_lock_file_replaced_alone_is_skipped_by_new_processes(self, shared_parent,
                                                                   agents):
        """Without a new marker, a replaced lock file is newer than the marker: a new
        process skips it (the holder's port is not handed out) everywhere."""
        locks = shared_parent / "locks"
        nobody_completes(locks)
        agents.append(holder := Agent(locks))
        port = holder.reserve(ports=[SHARD_PORTS.start, SHARD_PORTS.stop])["port"]
        time.sleep(0.02)  # the new file's ctime lands a clock tick after the marker's
        as_nobody(f"os.unlink({str(shard_file(locks, port))!r})\n"
                  f"os.close(os.open({str(shard_file(locks, port))!r}, os.O_CREAT, 0o666))\n"
                  f"os.chmod({str(shard_file(locks, port))!r}, 0o666)")
        agents.append(other := Agent(locks))
        answer = other.reserve(ports=[port, port + 1])
        assert "port" not in answer, "a held port was handed out again"
        assert holder.reserve().get("error") == "LockDirError"


SCRATCH_ROOT = """
import os, subprocess, sys
root, script = sys.argv[1], sys.argv[2]
for source in sys.argv[3:]:
    target = root + source
    os.makedirs(target, exist_ok=True)
    subprocess.run(["mount", "--rbind", source, target], check=True)
    if source not in ("/dev", "/proc"):
        subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True)
os.mkdir(root + "/alias")
subprocess.run(["mount", "--bind", root, root + "/alias"], check=True)
os.chroot(root)
os.chdir("/")
os.execv(sys.executable, [sys.executable, "-c", script])
"""

IN_SCRATCH_ROOT = """
import json, os
import portsafe
from portsafe._locking import lockdir as _lockdir
from portsafe import _platform as backend

def attempt(path):
    before = set(os.listdir(path)) if os.path.isdir(path) else set()
    try:
        if backend.NAMES:  # reservations ignore PORTSAFE_LOCK_DIR: open it directly
            _lockdir.open_lockdir(path, explicit=True).close()
        else:
            os.environ["PORTSAFE_LOCK_DIR"] = path
            portsafe.reserve_port().release()
        outcome = "used"
    except portsafe.LockDirError as exc:
        outcome = str(exc)
    after = set(os.listdir(path)) if os.path.isdir(path) else set()
    return {"outcome": outcome, "made": sorted(after - before)}

print(json.dumps({path: attempt(path) for path in PATHS}))
"""


class TestSystemDirectories:
    """``/`` and the file-system hierarchy's own directories are never a lock directory."""

    @pytest.mark.parametrize(("platform", "path", "found"), [
        ("linux", "/", "/"), ("linux", "//", "/"), ("linux", "/tmp", "/tmp"),
        ("linux", "/tmp/", "/tmp"), ("linux", "//usr", "/usr"), ("linux", "/lib64", "/lib64"),
        ("linux", "/libx32", "/libx32"), ("linux", "/var/tmp", "/var/tmp"),
        ("linux", "/usr/local", "/usr/local"), ("linux", "/dev/shm", "/dev/shm"),
        ("linux", "/run/user", "/run/user"), ("linux", "/home", "/home"),
        ("linux", "/tmp/portsafe-locks", None), ("linux", "/home/ci/locks", None),
        ("linux", "/srv/ci", None), ("linux", "/var/tmp/portsafe", None),
        ("darwin", "/private/tmp", "/private/tmp"), ("darwin", "/Users", "/Users"),
        ("darwin", "/tmp/portsafe-locks", None),
        ("win32", "C:\\", "C:\\"), ("win32", "c:", "c:"), ("win32", "D:/", "D:\\"),
        ("win32", "C:\\ProgramData", "C:\\ProgramData"),
        ("win32", "c:\\programdata\\", "c:\\programdata"),
        ("win32", "C:\\Windows", "C:\\Windows"),
        ("win32", "C:\\ProgramData\\portsafe-locks", None),
    ])
    def test_which_are_refused(self, platform, path, found):
        environ = {"ProgramData": "C:\\ProgramData", "SystemRoot": "C:\\Windows"}
        assert _systemdirs.system_directory(path, platform=platform, realpath=str,
                                            environ=environ) == found

    def test_as_it_resolves(self):
        """A path that resolves to one (through a link) is refused too."""
        real = {"/data/link": "/", "/data/tmp": "/tmp"}
        for path, found in real.items():
            assert _systemdirs.system_directory(path, platform="linux",
                                                realpath=real.__getitem__) == found

    def test_the_default_is_not_one(self):
        from portsafe import _settings

        assert _systemdirs.system_directory(_settings.default_lock_dir()) is None

    @needs_root
    @linux_only
    def test_refused_as_root_in_a_scratch_root(self, tmp_path):
        """As root, in a private mount namespace whose ``/`` is a scratch directory (the
        system's own binaries bound read-only into it): ``/``, ``/tmp``, ``/srv`` and
        the rest are refused, however spelled (``//srv``, ``/opt/``, a symbolic link to
        ``/``, a bind mount of ``/``), and nothing is made in them; a directory of its
        own in ``/tmp`` is used."""
        if shutil.which("unshare") is None or shutil.which("mount") is None:
            pytest.skip("needs unshare and mount")
        root = tmp_path / "root"
        root.mkdir()
        root.chmod(0o755)
        for name in ("srv", "opt", "var", "mnt", "home"):
            (root / name).mkdir()
        (root / "tmp").mkdir()
        (root / "tmp").chmod(0o1777)
        (root / "rootlink").symlink_to("/")
        refused = ["/", "/tmp", "//srv", "/opt/", "/var", "/mnt", "/home", "/rootlink",
                   "/alias"]
        mine = "/tmp/portsafe-locks"
        src = str(Path(portsafe.__file__).resolve().parent.parent)
        binds = [path for path in ("/usr", "/lib", "/lib64", "/bin", "/etc", sys.base_prefix,
                                   sys.prefix, src, "/dev", "/proc") if os.path.exists(path)]
        script = f"PATHS = {[*refused, mine]!r}\n{IN_SCRATCH_ROOT}"
        done = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable,
                               "-c", SCRATCH_ROOT, str(root), script, *binds],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0 and ("unshare failed" in done.stderr or
                                     ("CalledProcessError" in done.stderr and
                                      "'mount'" in done.stderr)):
            pytest.skip(f"no private mount namespace here: {done.stderr.strip()[-300:]}")
        assert done.returncode == 0, done.stderr
        outcomes = json.loads(done.stdout.splitlines()[-1])
        for path in refused:
            assert "system's own directories" in outcomes[path]["outcome"], (path, outcomes)
            assert "PORTSAFE_LOCK_DIR" in outcomes[path]["outcome"]
            assert outcomes[path]["made"] == [], path
        assert outcomes[mine]["outcome"] == "used", outcomes[mine]
        assert _lockformat.MARKER in os.listdir(root / "tmp" / "portsafe-locks")



def _tmpfiles() -> str:
    found = shutil.which("systemd-tmpfiles")
    if found is None or not sys.platform.startswith("linux"):
        pytest.skip("systemd-tmpfiles is not installed")
    return found


@files
@posix_only
class TestTmpCleaner:
    """Item 2: an age-based tmp cleaner (systemd-tmpfiles) cannot break a live hold.

    The cleaner is pointed at a private parent directory standing for /tmp (never at
    /tmp itself), with a 1-second age rule; lock files are never written, so they are
    all old enough after a short wait.
    """

    def _clean(self, tmp_path: Path, parent: Path) -> None:
        config = tmp_path / "clean.conf"
        config.write_text(f"e {parent} - - - 1s\n")
        time.sleep(2.2)  # every file must be older than the age
        subprocess.run([_tmpfiles(), "--clean", str(config)], check=True,
                       capture_output=True)

    def test_cleaner_skips_a_directory_in_use(self, tmp_path, agents):
        """While a port is held, systemd-tmpfiles --clean deletes nothing in the lock
        directory and nobody else gets the port; a directory nobody uses is cleaned."""
        _tmpfiles()
        parent = tmp_path / "tmp"
        parent.mkdir()
        locks, idle = parent / "locks", parent / "idle"
        agents.append(holder := Agent(locks))
        port = holder.reserve(ports=[SHARD_PORTS.start, SHARD_PORTS.stop])["port"]
        _lockdir.open_lockdir(str(idle), explicit=True).close()
        self._clean(tmp_path, parent)
        assert not idle.exists() or os.listdir(idle) == [], \
            "control: the rule cleans a lock directory nobody uses"
        assert shard_file(locks, port).exists()
        assert len(os.listdir(locks)) == _lockformat.SHARD_COUNT + 1
        agents.append(other := Agent(locks))
        assert "port" not in other.reserve(ports=[port, port + 1])

    def test_cleaned_directory_is_repaired(self, tmp_path, monkeypatch):
        """A directory cleaned while nobody used it is completed again at next use."""
        _tmpfiles()
        parent = tmp_path / "tmp"
        parent.mkdir()
        locks = parent / "locks"
        _lockdir.open_lockdir(str(locks), explicit=True).close()
        self._clean(tmp_path, parent)
        assert not locks.exists() or os.listdir(locks) == []
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(locks))
        with portsafe.reserve_port():
            assert len(os.listdir(locks)) == _lockformat.SHARD_COUNT + 1


@files
class TestOneDirectory:
    """Item 3: one directory however it is spelled; aliases never drop locks."""

    def test_relative_path_refused_in_library_and_child(self, monkeypatch):
        """A relative PORTSAFE_LOCK_DIR is refused the same way here and in a child
        running in / (the keeper's working directory)."""
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", "relative/locks")
        with pytest.raises(portsafe.InvalidSettingError, match="absolute"):
            portsafe.reserve_port()
        child = subprocess.run([sys.executable, "-c", "import portsafe; portsafe.reserve_port()"],
                               env=dict(os.environ), capture_output=True, text=True, cwd="/",
                               check=False)
        assert child.returncode != 0
        assert "InvalidSettingError" in child.stderr
        assert not os.path.exists("/relative/locks")

    @posix_only
    @pytest.mark.parametrize("alias", ["slash", "double", "symlink", "bind"])
    def test_alias_does_not_drop_own_locks(self, tmp_path, monkeypatch, agents, alias):
        """Reserving and releasing through an alias of the directory (trailing slash,
        //, a symlink) keeps this process's other locks in the same file."""
        locks = tmp_path / "locks"
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(locks))
        held = portsafe.reserve_port(ports=SHARD_PORTS)
        try:
            if alias == "bind":
                self._bind_alias(tmp_path, locks)
                return
            spelled = {"slash": f"{locks}/", "double": str(locks).replace("/", "//"),
                       "symlink": str(tmp_path / "link")}[alias]
            if alias == "symlink":
                (tmp_path / "link").symlink_to(locks)
            monkeypatch.setenv("PORTSAFE_LOCK_DIR", spelled)
            portsafe.reserve_port(ports=SHARD_PORTS, exclude=[held.port]).release()
            far = range((SHARD + 2) << 8, (SHARD + 3) << 8)
            portsafe.reserve_port(ports=far).release()  # moves on: idle files get closed
            _locks.holders()  # opens and closes shard files: must not close ours
            agents.append(other := Agent(locks))
            assert "port" not in other.reserve(ports=[held.port, held.port + 1]), \
                "the alias dropped this process's lock"
        finally:
            held.release()


    def _bind_alias(self, tmp_path: Path, locks: Path) -> None:
        """The same through a bind mount, in a private mount namespace (unshare -m)."""
        if shutil.which("unshare") is None or shutil.which("mount") is None:
            pytest.skip("needs unshare and mount")
        bind = tmp_path / "bind"
        bind.mkdir()
        script = f"""
import os, subprocess, sys, portsafe
from portsafe._locking import files as _locks
os.environ["PORTSAFE_LOCK_DIR"] = {str(locks)!r}
held = portsafe.reserve_port(ports=range({SHARD_PORTS.start}, {SHARD_PORTS.stop}))
subprocess.run(["mount", "--bind", {str(locks)!r}, {str(bind)!r}], check=True)
os.environ["PORTSAFE_LOCK_DIR"] = {str(bind)!r}
portsafe.reserve_port(ports=range({SHARD_PORTS.start}, {SHARD_PORTS.stop}),
                      exclude=[held.port]).release()
_locks.holders()
assert len(_locks.table()._dirs) == 1, "the bind mount is a second directory"
other = subprocess.run([sys.executable, "-c", "import portsafe; "
                        f"portsafe.reserve_port(ports=[{{held.port}}])"], capture_output=True)
print("refused" if other.returncode else "GOT IT")
"""
        result = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable,
                                 "-c", script], capture_output=True, text=True, check=False)
        if "unshare failed" in result.stderr or "Operation not permitted" in result.stderr:
            pytest.skip(f"no private mount namespace here: {result.stderr.strip()}")
        assert result.stdout.strip() == "refused", result.stderr


@files
@posix_only
class TestPoisonedShard:
    """Item 4: an unusable file at a shard's name is skipped with one warning."""

    @pytest.mark.parametrize("poison", ["fifo", "directory", "foreign file", "symlink"])
    def test_skipped_with_one_warning(self, tmp_path, monkeypatch, poison):
        """Reservations over the poisoned shard and another come from the other one,
        with one RuntimeWarning naming the file; only the poisoned one raises."""
        locks = tmp_path / "locks"
        _lockdir.open_lockdir(str(locks), explicit=True).close()
        bad = locks / _locks.shard_name(SHARD)
        bad.unlink()
        if poison == "fifo":
            os.mkfifo(bad)
        elif poison == "directory":
            bad.mkdir()
        elif poison == "foreign file":
            bad.write_text("")  # made after the directory was completed
            os.chmod(bad, 0o600)
            if os.getuid() == 0:
                os.chown(bad, NOBODY, NOBODY)
        else:
            (tmp_path / "victim").write_text("")
            bad.symlink_to(tmp_path / "victim")
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(locks))
        others = range(SHARD_PORTS.stop, SHARD_PORTS.stop + 20)  # 20 ports of the next shard
        both = [*SHARD_PORTS, *others]
        held: list[portsafe.Reservation] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                # Until the next shard's 20 are all held (a few may be bound by other
                # programs right now), then the walk must reach the poisoned shard.
                with pytest.raises(portsafe.NoFreePortError):
                    fill(held, both, len(others) + 1)
            finally:
                ports = sorted(r.port for r in held)
                for r in held:
                    r.release()
        named = [w for w in caught if _locks.shard_name(SHARD) in str(w.message)]
        assert len(named) == 1, [str(w.message) for w in caught]
        assert issubclass(named[0].category, RuntimeWarning)
        assert set(ports) <= set(others)
        assert len(ports) >= len(others) // 2
        with pytest.raises(portsafe.LockDirError, match=_locks.shard_name(SHARD)):
            portsafe.reserve_port(ports=SHARD_PORTS)

    @linux_only
    def test_flooded_shard_costs_bounded_lock_calls(self, tmp_path, monkeypatch, agents):
        """A shard whose file holds 29,000 foreign locks (by another process) costs at
        most MISS_LIMIT lock calls, then is skipped, instead of one call per port."""
        locks = tmp_path / "locks"
        _lockdir.open_lockdir(str(locks), explicit=True).close()
        agents.append(flooder := Agent(locks))
        assert flooder.ask(op="flood", path=str(locks / _locks.shard_name(SHARD)),
                           start=1 << 20, count=29000, hold=list(SHARD_PORTS)) == {
            "warnings": []}
        calls = count_locks(monkeypatch)  # the Python claim, whose lock calls are counted
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(locks))
        with pytest.raises(portsafe.LockDirError, match=_locks.shard_name(SHARD)), \
                pytest.warns(RuntimeWarning, match="flood"):
            portsafe.reserve_port(ports=SHARD_PORTS)
        assert 0 < len(calls) <= _locks.MISS_LIMIT
        calls.clear()
        with portsafe.reserve_port(ports=range(SHARD_PORTS.start, SHARD_PORTS.stop + 256)) as r:
            assert r.port >> 8 == SHARD + 1
        assert all(port >> 8 == SHARD + 1 for port in calls)  # no lock call in the flood


@files
@needs_root
class TestUsers:
    """Item 1: root and uid 65534 share one directory whoever made it first."""

    @pytest.mark.parametrize("first", ["root", "nobody"])
    def test_share_and_exclude(self, shared_parent, agents, first):
        """Whoever creates the directory, root and 65534 keep each other out."""
        locks = shared_parent / "locks"
        agents.append(Agent(locks, uid=None if first == "root" else NOBODY))
        assert "port" in agents[0].reserve()
        agents.append(root := Agent(locks))
        agents.append(nobody := Agent(locks, uid=NOBODY))
        mine = root.reserve(ports=[SHARD_PORTS.start, SHARD_PORTS.stop])["port"]
        theirs = nobody.reserve(ports=[SHARD_PORTS.start, SHARD_PORTS.stop])
        assert theirs.get("port") not in (None, mine), theirs
        assert "port" not in nobody.reserve(ports=[mine, mine + 1])
        assert "port" not in root.reserve(ports=[theirs["port"], theirs["port"] + 1])
        assert stat.S_IMODE(locks.stat().st_mode) == 0o1777


@files
@posix_only
class TestVersions:
    """Item 9: the directory carries a format version; versions interoperate or refuse."""

    def test_legacy_directory_upgraded_in_place_and_shared(self, tmp_path, monkeypatch):
        """A 0.1.0-format directory (no marker, files made as needed) in use by a 0.1.0
        process is completed in place, and both keep excluding each other."""
        locks = tmp_path / "locks"
        locks.mkdir()
        legacy = os.open(shard_file(locks, SHARD_PORTS.start), os.O_RDWR | os.O_CREAT, 0o666)
        os.fchmod(legacy, 0o666)  # as 0.1.0 made them
        script = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
                  "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]))\n"
                  "print('held', flush=True)\nsys.stdin.read()\n")
        old = subprocess.Popen([sys.executable, "-c", script, str(shard_file(locks, LEGACY + 60)),
                                str(LEGACY + 60)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
        try:
            assert old.stdout is not None
            assert old.stdout.readline().strip() == "held"
            monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(locks))
            with pytest.raises(portsafe.NoFreePortError):
                portsafe.reserve_port(ports=[LEGACY + 60])
            assert (locks / _lockformat.MARKER).exists()
            assert len(os.listdir(locks)) == _lockformat.SHARD_COUNT + 1
            with portsafe.reserve_port(ports=[LEGACY + 61]):  # what a 0.1.0 process does:
                probe = subprocess.run([sys.executable, "-c", script.replace(
                    "print('held', flush=True)\nsys.stdin.read()\n", ""),
                    str(shard_file(locks, LEGACY + 61)), str(LEGACY + 61)],
                    capture_output=True, text=True, check=False)
                assert probe.returncode != 0
                assert "Resource temporarily unavailable" in probe.stderr
        finally:
            assert old.stdin is not None
            old.stdin.close()
            old.wait(timeout=30)
            old.stdout.close()
            os.close(legacy)

    def test_future_format_refused(self, tmp_path, monkeypatch):
        """A directory in a newer format is refused, saying which and what to do."""
        locks = tmp_path / "locks"
        locks.mkdir()
        (locks / _lockformat.MARKER).write_bytes(
            b"portsafe lock directory\nformat 2\ngeneration 0011223344556677\n")
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(locks))
        with pytest.raises(portsafe.LockDirError, match=r"format 2.*format 1 only"):
            portsafe.reserve_port()

    @pytest.mark.parametrize("content", [b"", b"hello\n", b"portsafe lock directory\nformat x\n",
                                         b"portsafe lock directory\nformat 1\n"])
    def test_bad_marker_refused(self, content):
        """Anything but a valid marker raises LockDirError."""
        with pytest.raises(portsafe.LockDirError):
            _lockformat.parse_marker(content, "m")


class TestPlatforms:
    """What each OS gets (selection logic, tested here for all)."""

    @pytest.mark.parametrize(("platform", "dir_fd", "expected"), [
        ("linux", True, {"openat", "flock"}),
        ("darwin", True, {"openat", "flock"}),
        ("freebsd14", True, {"openat", "flock"}),
        ("darwin", False, {"flock"}),
        ("win32", False, set()),
    ])
    def test_features(self, platform, dir_fd, expected):
        """POSIX systems have both mechanisms (openat where os.open takes dir_fd);
        Windows none."""
        assert _lockformat.features(platform, dir_fd=dir_fd) == expected


@files
@posix_only
class TestLockTableUse:
    """How a process uses the directory once open: one stat a call, fork, half-written markers."""

    def test_one_stat_per_reservation(self, tmp_path, monkeypatch):
        """The per-call check is a single stat of the path (the hot path's only addition)."""
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(tmp_path / "locks"))
        portsafe.reserve_port().release()
        calls = path_checks(monkeypatch)
        for _ in range(10):
            portsafe.reserve_port().release()
        assert calls == [str(tmp_path / "locks")] * 10

    @linux_only
    def test_fork_child_keeps_the_parents_flock(self, tmp_path, monkeypatch):
        """A fork child closes its copies of the directory's descriptors; the parent's
        shared flock (which keeps tmp cleaners away) stays."""
        import fcntl

        locks = tmp_path / "locks"
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(locks))
        held = portsafe.reserve_port()
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 0
                try:
                    portsafe.reserve_port().release()
                except BaseException:
                    code = 1
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            fd = os.open(locks, os.O_RDONLY | os.O_DIRECTORY)
            try:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
        finally:
            held.release()

    def test_half_written_marker_is_waited_for_or_completed(self, tmp_path):
        """A marker without its final newline is being written (or was cut short): it
        is not parsed; completing the directory rewrites it."""
        locks = tmp_path / "locks"
        locks.mkdir()
        (locks / _lockformat.MARKER).write_bytes(b"portsafe lock directory\nformat 1\ngener")
        fd = os.open(locks, os.O_RDONLY)
        try:
            assert _lockformat.read_marker(fd, str(locks)) is None
        finally:
            os.close(fd)
        lockdir = _lockdir.open_lockdir(str(locks), explicit=True)
        try:
            assert len(lockdir.generation) == 16
            assert (locks / _lockformat.MARKER).read_bytes().endswith(b"\n")
        finally:
            lockdir.close()
