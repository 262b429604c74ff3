"""_locking.holders: who holds which port's name, read from the kernel, checked against it.

Names are bound here with raw sockets, by this process, by child processes and by a
child of uid 65534, and every answer is checked against ``/proc`` read by the test itself
(``/proc/net/unix`` for the name and inode, ``/proc/<pid>/fd`` for the process,
``/proc/<pid>/status`` for the uid). The ports are below 1024: portsafe never hands them
out, so holding their names here takes no port another test on this machine may need.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from portsafe._locking import holders, names
from portsafe._locking.holders import Holder

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [
    pytest.mark.names,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names are Linux's"),
    pytest.mark.timeout(120),
]
NOBODY = 65534
needs_other_user = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run a process as another user")
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

# Binds argv[1] names of ports below 1024 that nobody holds, prints [[port, inode], ...]
# as JSON, then holds them until stdin closes.
BINDER = """
import json, os, random, socket, sys
from portsafe._locking import names
held, keep = [], []
for port in random.sample(range(1, 1024), 1023):
    if len(held) == int(sys.argv[1]):
        break
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(names.name(port))
    except OSError:
        sock.close()
        continue
    keep.append(sock)
    held.append([port, os.fstat(sock.fileno()).st_ino])
print(json.dumps(held), flush=True)
sys.stdin.read()
"""

# Prints holders(argv[1]) as JSON, and the holder of a name it binds itself.
READER = """
import dataclasses, json, os, socket, sys
from portsafe._locking import holders, names
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as own:
    own.bind(names.name(int(sys.argv[2])))
    print(json.dumps({"theirs": [dataclasses.asdict(h) for h in holders.holders(int(sys.argv[1]))],
                      "own": [dataclasses.asdict(h) for h in holders.holders(int(sys.argv[2]))],
                      "pid": os.getpid()}))
"""


# -- what the test reads itself --------------------------------------------------------


def proc_unix() -> dict[int, tuple[str, str]]:
    """inode -> (type, path) of every bound unix socket, from /proc/net/unix."""
    found = {}
    with open("/proc/net/unix", "rb") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8:
                found[int(fields[6])] = (fields[4].decode(), fields[7].decode("latin-1"))
    return found


def fd_inodes(pid: int) -> set[int]:
    """The socket inodes process *pid* has open, from /proc/<pid>/fd."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def uid_of(pid: int) -> int:
    """The real uid of process *pid*, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Uid:"))


def shown(port: int) -> str:
    """The name of *port* as /proc/net/unix shows it, spelled out here, not by portsafe."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "@portsafe1:" + "".join(alphabet[(port >> shift) & 63] for shift in (12, 6, 0))


def assert_in_proc(port: int, inode: int, pid: int) -> None:
    """The kernel lists *inode* as a DGRAM socket bound to *port*'s name, open in *pid*."""
    assert proc_unix()[inode] == ("0002", shown(port))
    assert inode in fd_inodes(pid)


# -- holders of names ------------------------------------------------------------------


@contextlib.contextmanager
def bound_here(kind: int = socket.SOCK_DGRAM) -> Iterator[tuple[int, socket.socket]]:
    """(port, socket): this process binds the name of a port below 1024 nobody holds."""
    for port in random.sample(range(1, 1024), 1023):
        sock = socket.socket(socket.AF_UNIX, kind)
        try:
            sock.bind(names.name(port))
        except OSError:
            sock.close()
            continue
        with sock:
            yield port, sock
        return
    pytest.skip("every name of a port below 1024 is bound")


@contextlib.contextmanager
def binder(count: int, *, prefix: tuple[str, ...] = ()) -> Iterator[
        tuple[subprocess.Popen[str], list[tuple[int, int]]]]:
    """A child (run through *prefix*, e.g. setpriv) holding *count* names: (child,
    [(port, inode), ...])."""
    proc = subprocess.Popen([*prefix, sys.executable, "-c", BINDER, str(count)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd="/")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        if not line:
            proc.kill()
            _, err = proc.communicate(timeout=60)
            pytest.skip(f"the binder could not run: {err.strip()}")
        yield proc, [(port, inode) for port, inode in json.loads(line)]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


def inode_of(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


class TestHolders:
    def test_this_process(self) -> None:
        """A name this process binds: its port, this pid, this uid, the socket's inode;
        in the full list too; gone once the socket is closed."""
        with bound_here() as (port, sock):
            inode = inode_of(sock)
            assert_in_proc(port, inode, os.getpid())
            expected = Holder(port, os.getpid(), os.geteuid(), inode)
            assert holders.holders(port) == [expected]
            assert holders.holder_of(port) == expected
            assert expected in holders.holders()
        assert holders.holders(port) == []
        assert holders.holder_of(port) is None
        assert inode not in proc_unix()

    def test_a_child_process(self) -> None:
        """A child's three names are found under its pid and uid, as /proc says; after
        kill -9 they are gone."""
        with binder(3) as (child, held):
            everything = {h.port: h for h in holders.holders()}
            for port, inode in held:
                assert_in_proc(port, inode, child.pid)
                found = Holder(port, child.pid, uid_of(child.pid), inode)
                assert holders.holders(port) == [found]
                assert everything[port] == found
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
            assert [holders.holders(port) for port, _ in held] == [[], [], []]
            assert not {inode for _, inode in held} & set(proc_unix())

    @needs_other_user
    def test_another_users_process_as_root(self) -> None:
        """Root reads a name held by uid 65534: its pid and its uid."""
        with binder(1, prefix=tuple(AS_NOBODY)) as (child, [(port, inode)]):
            assert uid_of(child.pid) == NOBODY
            assert_in_proc(port, inode, child.pid)
            assert holders.holders(port) == [Holder(port, child.pid, NOBODY, inode)]
            assert holders.holder_of(port).describe() == f"pid {child.pid}"  # type: ignore[union-attr]

    @needs_other_user
    def test_read_by_another_user(self) -> None:
        """Read as uid 65534, root's name has no pid (root's processes cannot be read)
        but its uid, 0: "another user (uid 0)"; the reader's own name has its pid."""
        with bound_here() as (port, sock), bound_here() as (own_port, spare):
            spare.close()  # the reader binds this one itself
            done = subprocess.run([*AS_NOBODY, sys.executable, "-c", READER, str(port),
                                   str(own_port)],
                                  capture_output=True, text=True, timeout=60, check=False,
                                  cwd="/")
            if done.returncode != 0:
                pytest.skip(f"cannot run a reader as uid {NOBODY}: {done.stderr.strip()}")
            answer = json.loads(done.stdout)
            theirs = [Holder(**h) for h in answer["theirs"]]
            assert theirs == [Holder(port, None, 0, inode_of(sock))]
            assert theirs[0].describe(me=NOBODY) == "another user (uid 0)"
            assert [(h["pid"], h["uid"]) for h in answer["own"]] == [(answer["pid"], NOBODY)]

    def test_other_socket_types_on_the_name_are_not_holders(self) -> None:
        """A STREAM socket bound to a port's name holds nothing (a name excludes within
        its type only): not listed, though /proc/net/unix shows it."""
        with bound_here(socket.SOCK_STREAM) as (port, sock):
            assert proc_unix()[inode_of(sock)] == ("0001", shown(port))
            assert holders.holders(port) == []
            assert port not in {h.port for h in holders.holders()}

    def test_unbound_and_foreign_names_are_skipped(self) -> None:
        """Unbound sockets (no path field) and names not of a port are not holders."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound, \
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
            other.bind(b"\0portsafe1:toolong-" + str(os.getpid()).encode())
            inodes = {inode_of(unbound), inode_of(other)}
            listed = {h.inode for h in holders.holders()}
            assert not inodes & listed
            assert not inodes & {h.inode for h in holders.holders(0)}


class TestSources:
    def test_without_netlink(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Where netlink is refused, /proc/net/unix still names the holders, without uid.
        (Simulated: a protocol the kernel does not have; no seccomp tool here.)"""
        monkeypatch.setattr(holders, "_NETLINK_SOCK_DIAG", 99)
        assert holders._diag() is None
        with bound_here() as (port, sock):
            expected = Holder(port, os.getpid(), None, inode_of(sock))
            assert holders.holders(port) == [expected]
            assert expected in holders.holders()
        assert expected.describe() == f"pid {os.getpid()}"

    def test_without_proc(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Without /proc (an empty directory in its place), netlink alone: the holder
        with its uid, and no pid."""
        monkeypatch.setattr(holders, "_PROC", str(tmp_path))
        with bound_here() as (port, sock):
            expected = Holder(port, None, os.geteuid(), inode_of(sock))
            assert holders.holders(port) == [expected]
            assert expected in holders.holders()
            assert holders.processes_of({expected.inode}) == {}

    def test_a_forged_line_is_not_believed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A name may hold a newline, and so add a line of its own making to
        /proc/net/unix: here one claiming that a TCP socket of this process holds a
        port's name. netlink has the last word, and the forgery is not believed; without
        netlink it would be (which shows that the forgery works)."""
        with socket.socket() as victim, bound_here() as (port, spare):
            spare.close()  # the port's name itself stays free
            forged = (f"\n0000000000000000: 00000002 00000000 00000000 0002 01 "
                      f"{inode_of(victim)} {shown(port)}").encode()
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as forger:
                forger.bind(b"\0x" + forged)
                assert proc_unix()[inode_of(victim)] == ("0002", shown(port))  # it shows
                assert holders.holders(port) == []
                assert inode_of(victim) not in {h.inode for h in holders.holders()}
                monkeypatch.setattr(holders, "_NETLINK_SOCK_DIAG", 99)
                assert holders.holders(port) == [
                    Holder(port, os.getpid(), None, inode_of(victim))]

    def test_exact_query(self) -> None:
        """netlink asked about one socket: a name's gives its port and uid; another
        socket's (a TCP socket: no such unix socket) gives nothing."""
        with bound_here() as (port, sock), socket.socket() as tcp:
            assert holders._diag(inode_of(sock)) == {inode_of(sock): (port, os.geteuid())}
            assert holders._diag(inode_of(tcp)) == {}


class TestProcesses:
    def test_every_process_or_the_first(self) -> None:
        """A socket open in this process and a child: every=True names both; by default
        the scan stops at the first, this process (read first)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            inode = inode_of(sock)
            child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                     stdin=subprocess.PIPE, pass_fds=[sock.fileno()])
            try:
                assert inode in fd_inodes(child.pid)
                both = holders.processes_of({inode}, every=True)
                first = holders.processes_of({inode})
            finally:
                child.communicate(timeout=60)
        assert sorted(both[inode]) == sorted([os.getpid(), child.pid])
        assert first == {inode: [os.getpid()]}

    def test_sockets_nobody_has_open(self) -> None:
        """Inodes no process has open (a closed socket's) give no entry."""
        with socket.socket() as sock:
            inode = inode_of(sock)
        assert holders.processes_of({inode}) == {}


class TestDescribe:
    def test_words(self) -> None:
        """pid when known; else the uid: another user's, or one of yours unseen."""
        assert Holder(1, 42, 0, 7).describe() == "pid 42"
        assert Holder(1, None, 0, 7).describe(me=NOBODY) == "another user (uid 0)"
        assert Holder(1, None, 5, 7).describe(me=5) == (
            "a process of yours portsafe cannot see (uid 5)")
        assert Holder(1, None, None, 7).describe() == "a process portsafe cannot see"


def portsafe_cli(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "portsafe", *args],
                          capture_output=True, text=True, timeout=60, check=False, cwd="/")


class TestCommandLine:
    def test_list_and_who(self) -> None:
        """`portsafe list` and `who` name a child's names by pid, uid and command line;
        once it is killed, `who` finds nobody (exit 1)."""
        with binder(2) as (child, held):
            rows = {row["port"]: row for row in json.loads(portsafe_cli("list", "--json").stdout)}
            text = portsafe_cli("list").stdout
            infos = json.loads(portsafe_cli("who", *(str(p) for p, _ in held), "--json").stdout)
            one = portsafe_cli("who", str(held[0][0]))
            for (port, inode), info in zip(held, infos, strict=True):
                assert_in_proc(port, inode, child.pid)
                assert rows[port]["pid"] == child.pid
                assert rows[port]["uid"] == uid_of(child.pid)
                assert "BINDER" not in rows[port]["command"]
                assert "portsafe._locking import names" in rows[port]["command"]
                assert f"{port:>5}  {child.pid:>7}" in text
                assert info["reserved_by"] == [{"pid": child.pid, "uid": uid_of(child.pid),
                                                "command": rows[port]["command"]}]
            assert one.returncode == 0
            assert f"port {held[0][0]}: reserved by pid {child.pid} (" in one.stdout
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
            gone = portsafe_cli("who", str(held[0][0]))
        assert gone.returncode == 1
        assert "nobody holds it" in gone.stdout

    @needs_other_user
    def test_list_and_who_as_another_user(self) -> None:
        """Run as uid 65534, `list` and `who` show root's name as "another user (uid 0)",
        with no pid."""
        with bound_here() as (port, _):
            listed = portsafe_cli("list", "--json", prefix=tuple(AS_NOBODY))
            if listed.returncode != 0:
                pytest.skip(f"cannot run portsafe as uid {NOBODY}: {listed.stderr.strip()}")
            text = portsafe_cli("list", prefix=tuple(AS_NOBODY)).stdout
            who = portsafe_cli("who", str(port), prefix=tuple(AS_NOBODY))
            who_json = json.loads(portsafe_cli("who", str(port), "--json",
                                               prefix=tuple(AS_NOBODY)).stdout)
        rows = {row["port"]: row for row in json.loads(listed.stdout)}
        assert rows[port] == {"port": port, "pid": None, "uid": 0, "command": None,
                              "lease_expires_in": None}
        assert any(line.split()[:4] == [str(port), "?", "-", "another"]
                   and line.endswith("another user (uid 0)") for line in text.splitlines())
        assert who.returncode == 0
        assert f"port {port}: reserved by another user (uid 0)" in who.stdout
        assert who_json["reserved_by"] == [{"pid": None, "uid": 0, "command": None}]
