"""What the kernel says of portsafe's locks, asked without portsafe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from portsafe._locking import files as _locks
from portsafe._platform import NAMES

#: Asks the kernel who holds each (shard file, port) on stdin, one F_GETLK each, from a
#: process of its own: this one must not open a lock file (closing it would drop its own
#: locks there). /proc/locks would not do: it is read in pieces, and while other
#: processes lock and unlock, a piece can skip a lock that was held all along.
HOLDER = textwrap.dedent("""
    import fcntl, json, os, struct, sys
    files, answers = {}, []
    for path, port in json.load(sys.stdin):
        if path not in files:
            files[path] = os.open(path, os.O_RDONLY)
        query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, port, 1, 0)
        found = fcntl.fcntl(files[path], fcntl.F_GETLK, query)
        kind, _, _, _, pid = struct.unpack("hhqqi4x", found)
        answers.append(0 if kind == fcntl.F_UNLCK else pid)
    print(json.dumps(answers))
""")


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def shown_name(port: int) -> str:
    """*port*'s abstract name as ``/proc/net/unix`` shows it, spelled out here from the
    documented format rather than taken from portsafe."""
    return "@portsafe1:" + "".join(_ALPHABET[port >> shift & 63] for shift in (12, 6, 0))


def name_inodes() -> dict[str, int]:
    """Every bound abstract DGRAM name of this network namespace -> its socket's inode,
    from ``/proc/net/unix`` read in one call (a read in pieces could skip a line)."""
    fd = os.open("/proc/net/unix", os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 26):
            chunks.append(chunk)
    finally:
        os.close(fd)
    found = {}
    for line in b"".join(chunks).decode().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[4] == "0002":
            found[fields[7]] = int(fields[6])
    return found


def socket_pids() -> dict[int, int]:
    """Socket inode -> the pid of a process that has it open, from ``/proc/*/fd``."""
    found: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                found.setdefault(int(link[8:-1]), int(entry))
    return found


def name_holders(ports: list[int]) -> list[int]:
    """The pid whose socket holds each of *ports*' names (0: nobody), from /proc."""
    inodes, pids = name_inodes(), socket_pids()
    return [pids.get(inodes.get(shown_name(port), -1), 0) for port in ports]


def kernel_holders(ports: list[int]) -> list[int]:
    """The pid the kernel says holds each of *ports* (0: nobody): the holder of its name
    on Linux, of its lock byte in the lock directory elsewhere."""
    if NAMES:
        return name_holders(ports)
    where = _locks.lock_dir()
    asked = [(os.path.join(where, _locks.shard_name(port >> _locks.SHARD_BITS)), port)
             for port in ports]
    answer = subprocess.run([sys.executable, "-c", HOLDER], input=json.dumps(asked),
                            capture_output=True, text=True, check=True, timeout=60)
    return json.loads(answer.stdout)
