"""Helpers shared by the port-server tests: addresses, private networks, who holds what.

A port server given a fixed range must not share it with the rest of the machine: on
Linux every process of a network namespace sees every held name, so servers whose
ranges a test fixes run in a private network namespace (:class:`PrivateNet`), with a
private lock directory too where ports are held by lock files (:func:`private_env`).
Whether a process holds a port is asked of the kernel, not of portsafe (:func:`held_by`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.support import netns as _netns

from portsafe import _platform as backend
from portsafe._locking import files as _locks
from portsafe._locking import names
from portsafe._services import portserver as _server

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator


def server_name() -> str:
    """A fresh address: abstract where there are abstract names, else a short path."""
    if backend.ABSTRACT:
        return f"@portsafe-test-{uuid.uuid4().hex[:12]}"
    return path_name()


def path_name() -> str:
    """A fresh socket path, short enough for AF_UNIX (107 bytes), seen from every network
    namespace. Nothing is made there; remove what you bind (:func:`unlink_quietly`)."""
    return os.path.join(tempfile.gettempdir() if len(tempfile.gettempdir()) < 40 else "/tmp",
                        f"portsafe-test-{uuid.uuid4().hex[:12]}.sock")


def unlink_quietly(address: str) -> None:
    """Remove a path socket (nothing for an abstract name)."""
    if not address.startswith("@"):
        with contextlib.suppress(OSError):
            os.unlink(address)


def wait_listening(address: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts connections on *address* (without sending a pid)."""
    target = _server.unix_address(address)
    for _ in range(400):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(target)
            except OSError:
                time.sleep(0.025)
                continue
        return
    raise AssertionError(f"nothing listens on {address!r}")


def wait_for_line(path: Path, text: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until the file *path* (a process's redirected output) contains *text*."""
    for _ in range(800):
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}: {path.read_text()[-2000:]}")
        time.sleep(0.025)
    raise AssertionError(f"{text!r} never appeared in {path}")


def portpicker_portserver() -> Path | None:
    """Google's portserver.py as installed with portpicker, if it is."""
    script = Path(sys.executable).parent / "portserver.py"
    if not script.exists():
        script = Path(shutil.which("portserver.py") or "/nonexistent")
    return script if script.exists() else None


def private_env(tmp_path: Path) -> dict[str, str]:
    """The environment for processes of a test that needs its own ports: where ports
    are held by lock files, a lock directory of its own (names need none, and warn if
    told of one)."""
    env = dict(os.environ)
    env.pop("PORTSERVER_ADDRESS", None)
    if backend.NAMES:
        env.pop("PORTSAFE_LOCK_DIR", None)
    else:
        lock_dir = tmp_path / "locks"
        lock_dir.mkdir(mode=0o700, exist_ok=True)
        env["PORTSAFE_LOCK_DIR"] = str(lock_dir)
    return env


class PrivateNet:
    """A private network namespace (``unshare --net``, loopback up: ``_netns``) that
    processes join with :attr:`prefix` (``nsenter``): their ports, and on Linux their
    held names, are nobody else's.

    Example:
        >>> with PrivateNet() as net:  # doctest: +SKIP
        ...     subprocess.run([*net.prefix, "true"], check=True)
    """

    def __init__(self) -> None:
        self.anchor: subprocess.Popen[str] | None = None
        self.prefix: list[str] = []

    @staticmethod
    def available() -> bool:
        """Whether private network namespaces can be made and joined here (Linux, root,
        unshare and nsenter)."""
        return os.geteuid() == 0 and shutil.which("nsenter") is not None and \
            _netns.available()

    def __enter__(self) -> PrivateNet:
        if not self.available():
            pytest.skip("needs root and Linux network namespaces (unshare, nsenter)")
        self.anchor = subprocess.Popen(  # the namespace lives as long as this process
            [*_netns.PREFIX, "sh", "-c", "echo up && exec sleep 1000000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.anchor.stdout is not None
        if self.anchor.stdout.readline() != "up\n":
            self.__exit__()
            pytest.skip("cannot make a private network namespace here")
        self.prefix = ["nsenter", f"--net=/proc/{self.anchor.pid}/ns/net", "--"]
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.anchor is not None:
            self.anchor.kill()
            self.anchor.communicate(timeout=30)


@contextlib.contextmanager
def private_ports(n: int, tmp_path: Path) -> Iterator[tuple[list[str], dict[str, str], range]]:
    """*n* ports for a server of the test's own: ``(prefix, env, ports)``. In a private
    network namespace where one can be made (its processes start with *prefix*); else,
    with lock files, a private lock directory, the ports held in the default one
    meanwhile so that nobody else on the machine takes them (*prefix* empty); else
    skipped."""
    env = private_env(tmp_path)
    if PrivateNet.available():
        with PrivateNet() as net:
            yield net.prefix, env, range(20000, 20000 + n)
        return
    if backend.NAMES:
        pytest.skip("needs a private network namespace for ports of its own")
    import portsafe

    with portsafe.reserve_ports(n, contiguous=True) as block:
        yield [], env, range(block.ports[0], block.ports[0] + n)


@contextlib.contextmanager
def serving(argv: list[str], env: dict[str, str], log: Path, address: str,
            prefix: list[str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``portsafe serve --verbose`` (*argv* after ``serve``), its stderr in *log*,
    started after *prefix* (``PrivateNet.prefix``); ready once it says it serves;
    SIGTERM on the way out (SIGKILL if it does not stop)."""
    prefix = prefix or []
    with open(log, "wb") as out:
        proc = subprocess.Popen([*prefix, sys.executable, "-m", "portsafe", "serve",
                                 "--address", address, "--verbose", *argv],
                                env=env, stderr=out)
    try:
        wait_for_line(log, "serving on", proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        unlink_quietly(address)


# -- who holds what, asked of the kernel ------------------------------------------------

def _socket_inodes(pid: int) -> set[int]:
    found = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    found.add(int(link[8:-1]))
    return found


def _named_inodes(pid: int) -> dict[int, int]:
    """inode -> port, for every port's name bound in *pid*'s network namespace."""
    found = {}
    with open(f"/proc/{pid}/net/unix") as table:
        next(table)
        for line in table:
            fields = line.split()
            if len(fields) >= 8:
                port = names.port_of(fields[7])
                if port is not None:
                    found[int(fields[6])] = port
    return found


_GETLK = """
import fcntl, json, os, struct, sys
files, answers = {}, []
for path, port in json.load(sys.stdin):
    if not os.path.exists(path):
        answers.append(0)
        continue
    if path not in files:
        files[path] = os.open(path, os.O_RDONLY)
    query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, port, 1, 0)
    kind, _, _, _, pid = struct.unpack("hhqqi4x", fcntl.fcntl(files[path], fcntl.F_GETLK, query))
    answers.append(0 if kind == fcntl.F_UNLCK else pid)
print(json.dumps(answers))
"""


def held_by(pid: int, ports: Iterable[int], env: dict[str, str]) -> set[int]:
    """Of *ports*, those the process *pid* holds, as the kernel says: the names bound by
    its sockets in its network namespace (``/proc``), or, with lock files, the record
    locks in *env*'s lock directory (``F_GETLK``, from a process of its own: opening a
    lock file here would drop this process's own locks on it when closed)."""
    wanted = set(ports)
    if backend.NAMES:
        mine = _socket_inodes(pid)
        return {port for inode, port in _named_inodes(pid).items()
                if inode in mine and port in wanted}
    where = env.get("PORTSAFE_LOCK_DIR") or _locks.lock_dir()
    asked = [(os.path.join(where, _locks.shard_name(port >> _locks.SHARD_BITS)), port)
             for port in sorted(wanted)]
    answer = subprocess.run([sys.executable, "-c", _GETLK], input=json.dumps(asked),
                            capture_output=True, text=True, check=True, timeout=60)
    return {port for (_path, port), holder in zip(asked, json.loads(answer.stdout), strict=False)
            if holder == pid}


def name_is_free(port: int) -> bool:
    """Whether *port*'s name can be bound in this network namespace now (bound and
    closed at once if so)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(names.name(port))
        except OSError:
            return False
    return True

